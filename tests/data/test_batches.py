"""Trainer batches: layout, T5 pipeline end to end, determinism, resume,
process sharding."""

import itertools

import numpy as np
import pytest
import seqio

from t5jax import data

LENGTHS = {"inputs": 64, "targets": 16}
PACKED_KEYS = {"encoder_input_tokens", "decoder_input_tokens",
               "decoder_target_tokens", "decoder_loss_weights",
               "encoder_segment_ids", "decoder_segment_ids",
               "encoder_positions", "decoder_positions"}


def _batches(task, n, **kw):
  args = dict(split="train", sequence_length=LENGTHS, batch_size=4, seed=7,
              start_step=0, process_index=0, process_count=1)
  args.update(kw)
  return list(itertools.islice(data.make_batch_iterator(task, **args), n))


def test_packed_batch_layout(local_task):
  (batch,) = _batches(local_task, 1)
  assert set(batch) == PACKED_KEYS
  for key, value in batch.items():
    assert value.dtype == np.int32, key
    assert value.shape == (4, LENGTHS["targets" if "decoder" in key
                                      else "inputs"]), key
  # Decoder inputs are targets shifted right, starting from pad (0).
  tgt, dec_in = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
  assert (dec_in[:, 0] == 0).all()
  first = batch["decoder_segment_ids"] == 1
  np.testing.assert_array_equal(dec_in[:, 1:][first[:, 1:]],
                                tgt[:, :-1][first[:, 1:]])


def test_unpacked_batch_layout(local_task):
  (batch,) = _batches(local_task, 1, pack=False)
  assert set(batch) == {"encoder_input_tokens", "decoder_input_tokens",
                        "decoder_target_tokens", "decoder_loss_weights"}


def test_task_pipeline_is_t5_span_corruption(local_task, corpus_file,
                                             vocabulary):
  """Unshuffled, the examples undo to the concatenated documents, split into
  raw-length segments, each ending in EOS and filling the input length."""
  task = seqio.get_mixture_or_task(local_task)
  ds = task.get_dataset(LENGTHS, split="train", shuffle=False, seed=0)
  raw_length, targets_length = data.random_spans_helper(LENGTHS["inputs"])
  docs = [line.strip() for line in open(corpus_file)]
  # Train split drops every 100th document; the first 128 are a group.
  train_docs = [d for i, d in enumerate(docs) if i % 100 != 99][:128]
  stream = [t for d in train_docs for t in vocabulary.encode(d)]
  rebuilt = []
  for ex in itertools.islice(ds.as_numpy_iterator(),
                             -(-len(stream) // raw_length)):
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == 1 and targets[-1] == 1  # EOS
    rebuilt.extend(_undo(inputs[:-1], targets[:-1], vocabulary.vocab_size))
    if len(rebuilt) < len(stream):  # full segments fill the lengths
      assert len(inputs) == LENGTHS["inputs"]
      assert len(targets) == targets_length
  assert rebuilt == stream


def _undo(inputs, targets, vocab_size):
  spans, key = {}, None
  for t in targets:
    if t >= vocab_size - 100:
      key = t
      spans[key] = []
    else:
      spans[key].append(t)
  return [x for t in inputs for x in (spans[t] if t >= vocab_size - 100
                                      else [t])]


def test_deterministic_given_seed(local_task):
  a, b = _batches(local_task, 3), _batches(local_task, 3)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  c = _batches(local_task, 1, seed=8)[0]
  assert not np.array_equal(a[0]["encoder_input_tokens"],
                            c["encoder_input_tokens"])


def test_resume_at_step_n_matches_uninterrupted_run(local_task):
  # 40 steps of 4 rows cross an epoch boundary of this small corpus.
  full = _batches(local_task, 40)
  resumed = _batches(local_task, 5, start_step=35)
  for x, y in zip(full[35:], resumed):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_saved_position_resumes_without_pulling_skipped_batches(local_task, tmp_path,
                                                               monkeypatch):
  args = dict(split="train", sequence_length=LENGTHS, batch_size=4, seed=7,
              process_index=0, process_count=1)
  full = _batches(local_task, 40)
  source = data.make_batch_iterator(local_task, **args)
  for _ in range(35):  # across an epoch boundary, as above
    next(source)
  source.save_state(str(tmp_path))
  # A restore builds the pipeline without skip() and continues at batch 35.
  import tensorflow as tf

  def no_skip(*_):
    raise AssertionError("restore replayed batches through Dataset.skip")
  monkeypatch.setattr(tf.data.Dataset, "skip", no_skip)
  restored = data.make_batch_iterator(local_task, start_step=35, **args)
  restored.restore_state(str(tmp_path))
  for x in full[35:]:
    y = next(restored)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_process_shards_split_the_global_batch(local_task):
  shards = [_batches(local_task, 3, batch_size=8, process_index=i,
                     process_count=2) for i in range(2)]
  for step in range(3):
    rows = [tuple(r) for s in shards
            for r in s[step]["encoder_input_tokens"]]
    assert all(s[step]["encoder_input_tokens"].shape[0] == 4 for s in shards)
    assert len(set(rows)) == 8  # together a global batch, no overlap
  with pytest.raises(ValueError, match="divisible"):
    _batches(local_task, 1, batch_size=5, process_count=2)


def test_finite_pass_and_validation_split(local_task):
  batches = _batches(local_task, 1000, split="validation", repeat=False,
                     batch_size=1, shuffle=False)
  assert 0 < len(batches) < 1000


@pytest.mark.parametrize("objective", data.OBJECTIVES)
def test_every_objective_makes_batches(objective, corpus_file, vocabulary):
  name = f"test_{objective}"
  data.register_local_corpus_task(name, [corpus_file], vocabulary,
                                  objective=objective, shuffle_buffer_size=64)
  (batch,) = _batches(name, 1)
  assert batch["encoder_input_tokens"].shape == (4, 64)
  assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
