"""The TensorFlow-free pipeline (t5jax.data.grain_pipeline): deterministic, resumable from
a saved position on 1 -> 2 and 2 -> 1 processes with nothing skipped or repeated, and
the same rows as the seqio pipeline in law (span corruption over one corpus)."""

import os

import numpy as np
import pytest

from t5jax.data import corpus as corpus_lib
from t5jax.data import grain_pipeline as gp

LENGTHS = dict(inputs_length=64, targets_length=16)  # random_spans_helper(64): raw 70


@pytest.fixture(scope="module")
def tokens(corpus_file, vocabulary):
  files = (corpus_file,)
  key = corpus_lib.fingerprint_files(files)
  flat, splits = corpus_lib.tokenized_corpus(files, vocabulary.sentencepiece_model_file,
                                             "line", "raise", key)
  return flat, splits


def _stream(tokens, vocabulary, shards=4, **spec):
  flat, splits = tokens
  docs = np.arange(len(splits) - 1)
  return gp.CorpusStream(flat, splits, docs, gp.StreamSpec(**{**LENGTHS, **spec}),
                         vocabulary.vocab_size, vocabulary.extra_ids, num_shards=shards)


def _global(streams_batches):
  """The global batch: each process's rows in process order."""
  return {k: np.concatenate([b[k] for b in streams_batches]) for k in streams_batches[0]}


def _take(batches, n):
  return [next(batches) for _ in range(n)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_are_deterministic_and_well_formed(tokens, vocabulary):
  stream = _stream(tokens, vocabulary)
  first = _take(gp.GrainBatches(stream, 8), 6)
  _assert_same(first, _take(gp.GrainBatches(_stream(tokens, vocabulary), 8), 6))
  batch = first[0]
  assert batch["encoder_input_tokens"].shape == (8, 64) and batch["encoder_input_tokens"].dtype == np.int32
  assert set(batch) == {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                        "decoder_loss_weights", "encoder_segment_ids", "decoder_segment_ids",
                        "encoder_positions", "decoder_positions"}
  # Full-length span corruption: each row one example ending in EOS, sentinels in order.
  assert (batch["encoder_input_tokens"][:, -1] == 1).mean() > 0.5
  targets = batch["decoder_target_tokens"][0]
  assert targets[0] == vocabulary.vocab_size - 1
  # Another seed, another stream; every batch differs from the one before.
  other = next(gp.GrainBatches(_stream(tokens, vocabulary, seed=1), 8))
  assert not np.array_equal(other["encoder_input_tokens"], batch["encoder_input_tokens"])
  assert not np.array_equal(first[1]["encoder_input_tokens"], batch["encoder_input_tokens"])


def test_one_process_equals_two_and_resumes_elastically(tokens, vocabulary, tmp_path):
  """P=1's global batches equal P=2's, and a position saved at step 3 continues exactly on
  1 -> 2 and 2 -> 1 processes (and with the same count): nothing skipped, nothing twice."""
  stream = _stream(tokens, vocabulary)
  one = _take(gp.GrainBatches(stream, 8), 6)
  two = [gp.GrainBatches(stream, 8, process_index=p, process_count=2) for p in (0, 1)]
  _assert_same(one, [_global([next(b) for b in two]) for _ in range(6)])

  saved_one = gp.GrainBatches(stream, 8)
  _take(saved_one, 3)
  saved_one.save_state(str(tmp_path / "one"))
  saved_two = [gp.GrainBatches(stream, 8, process_index=p, process_count=2) for p in (0, 1)]
  for b in saved_two:
    _take(b, 3)
    b.save_state(str(tmp_path / "two"))
  assert sorted(os.listdir(tmp_path / "two")) == ["grain_state_0.json", "grain_state_1.json"]

  for source, count in (("one", 2), ("two", 1), ("one", 1), ("two", 2)):
    resumed = [gp.GrainBatches(stream, 8, process_index=p, process_count=count)
               for p in range(count)]
    assert all(b.restore_state(str(tmp_path / source)) for b in resumed)
    _assert_same(one[3:], [_global([next(b) for b in resumed]) for _ in range(3)])
  # Replaying to step 3 (no saved position) gives the same batches.
  _assert_same(one[3:], _take(gp.GrainBatches(stream, 8, start_step=3), 3))
  assert not gp.GrainBatches(stream, 8).restore_state(str(tmp_path / "none"))


def test_bad_shapes_and_mismatched_states_are_named(tokens, vocabulary, tmp_path):
  stream = _stream(tokens, vocabulary, shards=4)
  with pytest.raises(ValueError, match="multiple of 4"):
    gp.GrainBatches(stream, 6)
  with pytest.raises(ValueError, match="divide among 3"):
    gp.GrainBatches(stream, 8, process_count=3)
  b = gp.GrainBatches(stream, 8)
  next(b)
  b.save_state(str(tmp_path))
  with pytest.raises(ValueError, match="saved with 4 virtual shards, this run has 8"):
    gp.GrainBatches(_stream(tokens, vocabulary, shards=8), 8).restore_state(str(tmp_path))


def test_same_law_as_the_seqio_pipeline(tokens, vocabulary, local_task):
  """Span corruption over one corpus through both pipelines: per row, the same input
  fill, the same numbers of sentinels, target and noise tokens, in mean and spread, and
  the same laws of noise tokens per row, sentinels per row and span lengths (chi-square)."""
  from t5jax.data import make_batch_iterator
  seqio_batches = make_batch_iterator(
      local_task, split="train", sequence_length={"inputs": 64, "targets": 16},
      batch_size=32, seed=0, process_index=0, process_count=1)
  flat, splits = tokens
  train_docs = np.flatnonzero(np.arange(len(splits) - 1) % 100 != 99)
  stream = gp.CorpusStream(flat, splits, train_docs, gp.StreamSpec(**LENGTHS),
                           vocabulary.vocab_size, vocabulary.extra_ids, num_shards=4)
  grain_batches = gp.GrainBatches(stream, 32)

  def stats(batches):
    taken = [next(batches) for _ in range(40)]  # ~3 concatenation groups per shard
    rows = {k: np.concatenate([t[k] for t in taken]) for k in (
        "encoder_input_tokens", "decoder_target_tokens")}
    sentinel = lambda x: x >= vocabulary.vocab_size - vocabulary.extra_ids  # noqa: E731
    targets = rows["decoder_target_tokens"]
    return {"input fill": (rows["encoder_input_tokens"] > 0).sum(1),
            "sentinels": sentinel(targets).sum(1),
            "target tokens": (targets > 0).sum(1),
            "noise tokens": ((targets > 1) & ~sentinel(targets)).sum(1),
            "span lengths": np.array(_span_lengths(targets, sentinel))}

  ours, theirs = stats(grain_batches), stats(seqio_batches)
  for name in ours:
    a, b = ours[name], theirs[name]
    se = np.sqrt(a.var() / len(a) + b.var() / len(b)) + 1e-9
    assert abs(a.mean() - b.mean()) < 4 * se + 0.02 * b.mean(), (name, a.mean(), b.mean())
    assert abs(a.std() - b.std()) < 0.25 * b.std() + 0.5, (name, a.std(), b.std())
  # The whole laws of noise per row and of span lengths: chi-square two-sample tests
  # (values past the 99th percentile pooled), over ~1,300 rows and ~4,000 spans each.
  from scipy import stats as st
  for name in ("noise tokens", "span lengths", "sentinels"):
    a, b = ours[name], theirs[name]
    top = int(np.percentile(np.r_[a, b], 99))
    values = np.arange(min(a.min(), b.min()), top + 1)
    table = np.array([[np.sum(np.minimum(x, top) == v) for v in values] for x in (a, b)])
    table = table[:, table.sum(0) > 0]
    p = st.chi2_contingency(table)[1] if table.shape[1] > 1 else 1.0
    assert p > 1e-3, (name, p, table)


def _span_lengths(targets, sentinel):
  """Lengths of the noise spans of span-corruption targets (packed rows included): the
  tokens after each sentinel up to the next sentinel or EOS."""
  out = []
  for row in targets:
    length = None
    for t in row:
      if t == 0:
        break
      if sentinel(t) or t == 1:
        if length:
          out.append(length)
        length = 0 if sentinel(t) else None
      elif length is not None:
        length += 1
  return out


NO_TF = """
import importlib.util, sys
BLOCKED = ('tensorflow', 'seqio', 'tensorflow_datasets', 'tensorflow_text')
class Block:  # as if these packages were not installed
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: (
    None if name.split('.')[0] in BLOCKED else _find_spec(name, *a))
from t5jax.cli import main
rc = main(sys.argv[1:])
assert not [k for k in sys.modules if k.split('.')[0] in BLOCKED], 'TensorFlow was imported'
sys.exit(rc)
"""


def test_t5jax_train_runs_and_resumes_without_tensorflow(corpus_file, vocab_dir, tmp_path):
  """`t5jax train` with `make pretrain`'s config (the grain path) and tensorflow, seqio and
  tfds unimportable: it
  trains, evaluates, prints examples, and a rerun continues from the position saved with
  the checkpoint (no replay)."""
  import subprocess
  import sys
  from t5jax.data import vocab
  spm = vocab.train_vocab([corpus_file], vocab_dir, vocab_size=300)
  # `make pretrain`'s own gin file, on a small corpus and vocabulary, fewer steps.
  flags = ["train", "--gin_file=demo/pretrain_cpu.gin",
           f"--run_dir={tmp_path / 'run'}",
           "--gin.DataConfig.task='local_corpus'", f"--gin.DataConfig.corpus=('{corpus_file}',)",
           f"--gin.DataConfig.vocabulary='{spm}'", "--gin.model_config.vocab_size=512",
           "--gin.DataConfig.inputs_length=64", "--gin.DataConfig.targets_length=16",
           "--gin.TrainConfig.batch_size=8", "--gin.TrainConfig.log_every=5",
           "--gin.TrainConfig.eval_every=5", "--gin.DataConfig.eval_batches=1",
           "--gin.CheckpointConfig.every_steps=5", "--gin.train.show_examples=1",
           "--gin.TrainConfig.tensorboard=False"]
  env = {**os.environ, "PYTHONPATH": REPO, "T5JAX_COMPILE_CACHE": "0"}

  def run(steps):
    proc = subprocess.run([sys.executable, "-c", NO_TF, *flags,
                           f"--gin.TrainConfig.num_steps={steps}"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout

  first = run(10)
  assert "[10/10" in first and "eval/loss=" in first and "--- example 0 ---" in first
  resumed = run(15)
  assert "Resumed from" in resumed and "continues from its position saved at step 10" in resumed
  assert "[15/15" in resumed


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_rewound_save_is_the_position_of_an_earlier_step(tokens, vocabulary, tmp_path):
  """What the trainer's prefetcher saves: the position `n` batches back (the step being
  checkpointed while it reads ahead), equal to saving at that step."""
  stream = _stream(tokens, vocabulary)
  at_3 = gp.GrainBatches(stream, 8)
  _take(at_3, 3)
  at_3.save_state(str(tmp_path / "at_3"))
  ahead = gp.GrainBatches(stream, 8)
  _take(ahead, 5)
  assert ahead.save_state_rewound(str(tmp_path / "rewound"), 2)
  read = lambda d: open(tmp_path / d / "grain_state_0.json").read()  # noqa: E731
  assert read("at_3") == read("rewound")
  assert not ahead.save_state_rewound(str(tmp_path / "too_far"), 100)  # past the history


def test_worker_processes_give_the_same_batches_and_positions(tokens, vocabulary, tmp_path):
  """read_workers=2 (DataConfig.grain_workers): the groups come from grain worker
  processes, the batches and saved positions are those of the synchronous reader, and a
  restore continues exactly."""
  stream = _stream(tokens, vocabulary)
  plain = gp.GrainBatches(stream, 8)
  expected = _take(plain, 8)
  workers = gp.GrainBatches(stream, 8, read_workers=2)
  _assert_same(expected[:5], _take(workers, 5))
  workers.save_state(str(tmp_path / "w"))
  resumed = gp.GrainBatches(stream, 8, process_index=1, process_count=2, read_workers=2)
  assert resumed.restore_state(str(tmp_path / "w"))
  other = gp.GrainBatches(stream, 8, process_index=0, process_count=2)
  assert other.restore_state(str(tmp_path / "w"))
  _assert_same(expected[5:], [_global([next(other), next(resumed)]) for _ in range(3)])
