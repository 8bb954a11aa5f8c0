"""task='local_pairs' on the TensorFlow-free pipeline (DataConfig.pipeline='grain'): the same
rows as the seqio task, the same metrics as seqio's evaluator, the same text as seqio's
vocabulary, and `t5jax train / eval / infer` end to end with TensorFlow unimportable."""

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from t5jax import data, run, scoring
from t5jax.config import get_config
from t5jax.data import grain_pipeline as gp, vocab as vocab_lib
from t5jax.decoding import DecodeConfig, DecodeOutput

from test_grain_pipeline import NO_TF, REPO

WORDS = "cat dog bird fish cow horse sheep goat duck mouse".split()


pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def _pairs(n, seed=0):
  rng = np.random.default_rng(seed)
  return [(" ".join(rng.choice(WORDS, rng.integers(1, 12))) + f" number {i}",
           " ".join(rng.choice(WORDS, rng.integers(1, 5)))) for i in range(n)]


def _write_tsv(path, pairs):
  path.write_text("".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
  return str(path)


def test_spm_vocabulary_reads_and_writes_as_seqio(spm):
  """vocab.SpmVocabulary (no seqio) against seqio.SentencePieceVocabulary over one .model:
  the same ids for text, the same text for any ids (sentinels, ids past the vocabulary,
  padding, EOS)."""
  theirs = data.get_vocabulary(spm)
  ours = vocab_lib.SpmVocabulary(spm)
  assert (ours.vocab_size, ours.extra_ids) == (theirs.vocab_size, theirs.extra_ids)
  for text, _ in _pairs(20):
    assert ours.encode(text) == theirs.encode(text)
  assert ours.encode_batch(["a cat", "dog"]) == [theirs.encode("a cat"), theirs.encode("dog")]
  rng = np.random.default_rng(0)
  pool = np.r_[rng.integers(0, ours.pieces, 40), rng.integers(3, 12, 6),
               rng.integers(ours.pieces, ours.vocab_size, 12), ours.vocab_size + np.arange(3),
               [0, 0, 1, 2]]
  for _ in range(3000):
    ids = [int(i) for i in rng.choice(pool, rng.integers(0, 12))]
    assert ours.decode(ids) == theirs.decode(ids), ids


def test_rows_equal_the_seqio_pairs_task(spm, tmp_path):
  """Validation rows (unpacked, in file order, trimmed) equal the seqio task's exactly; one
  pass of
  packed training rows holds every training pair exactly once, as the seqio task's epoch
  (packing itself is compared with seqio's in test_rows.py)."""
  train = _write_tsv(tmp_path / "train.tsv", _pairs(256))
  valid = _write_tsv(tmp_path / "valid.tsv", _pairs(40, seed=1))
  seqio_vocab = data.get_vocabulary(spm)
  data.register_pairs_task("test_grain_pairs", seqio_vocab, train, valid, prefix="animals:")
  cfg = run.DataConfig(task="local_pairs", pipeline="grain", vocabulary=spm, pairs_train=train,
                       pairs_validation=valid, pairs_prefix="animals:", inputs_length=12,
                       targets_length=6, grain_shards=2)
  vocabulary, _ = run.prepare_task(cfg)
  lengths = {"inputs": 12, "targets": 6}

  grain_rows = [b for _, b in zip(range(5), run.batches(
      cfg, "local_pairs", "validation", 8, train=False, pack=False, vocabulary=vocabulary))]
  seqio_rows = [b for _, b in zip(range(5), data.make_batch_iterator(
      "test_grain_pairs", split="validation", sequence_length=lengths, batch_size=8, seed=0,
      pack=False, shuffle=False, process_index=0, process_count=1))]
  for ours, theirs in zip(grain_rows, seqio_rows):
    assert set(ours) == set(theirs)
    for key in ours:
      np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

  cfg = dataclasses.replace(cfg, inputs_length=128, targets_length=64)
  lengths = {"inputs": 128, "targets": 64}
  packed = run.batches(cfg, "local_pairs", "train", 8, vocabulary=vocabulary)
  assert isinstance(packed.stream, gp.PairsStream)
  # Group 0 of the two shards is stream positions 0..255: the first epoch's permutation.
  ours = sorted(e for shard in (0, 1)
              for e in _segments(_stack(packed.stream.group_rows(shard, 0))))
  theirs = sorted(e for b in zip(range(32), data.make_batch_iterator(
      "test_grain_pairs", split="train", sequence_length=lengths, batch_size=8, seed=0,
      pack=False, shuffle=False, process_index=0, process_count=1))
      for e in _unpacked(b[1]))
  assert len(ours) == 256 and ours == theirs
  assert _stack(packed.stream.group_rows(0, 0))["encoder_segment_ids"].max() > 1  # packed


def test_packed_prompt_rows_in_both_pipelines(spm, tmp_path):
  """Prompt tuning on packed rows (prompt_slots=P): both pipelines put the P slot ids before
  each example's inputs, trimmed with EOS to inputs_length - P, and hold the same examples
  over an epoch: exactly the unpacked seqio task's at inputs_length - P, slots first."""
  from t5jax.data.rows import prompt_slot_ids
  train = _write_tsv(tmp_path / "train.tsv", _pairs(256))
  valid = _write_tsv(tmp_path / "valid.tsv", _pairs(8, seed=1))
  data.register_pairs_task("test_prompt_pairs", data.get_vocabulary(spm), train, valid,
                           prefix="animals:")
  cfg = run.DataConfig(task="local_pairs", pipeline="grain", vocabulary=spm, pairs_train=train,
                       pairs_validation=valid, pairs_prefix="animals:", inputs_length=16,
                       targets_length=6, grain_shards=2)
  vocabulary, _ = run.prepare_task(cfg)
  slots = tuple(prompt_slot_ids(4))

  stream = run.batches(cfg, "local_pairs", "train", 8, vocabulary=vocabulary,
                       prompt_slots=4).stream
  grain = sorted(e for shard in (0, 1) for e in _segments(_stack(stream.group_rows(shard, 0))))
  seqio_packed = sorted(e for b in zip(range(32), data.make_batch_iterator(
      "test_prompt_pairs", split="train", sequence_length={"inputs": 16, "targets": 6},
      batch_size=8, seed=0, pack=True, shuffle=False, repeat=False, process_index=0,
      process_count=1, prompt_slots=4)) for e in _segments(b[1]))
  unpacked = sorted((slots + i, t) for b in zip(range(32), data.make_batch_iterator(
      "test_prompt_pairs", split="train", sequence_length={"inputs": 12, "targets": 6},
      batch_size=8, seed=0, pack=False, shuffle=False, process_index=0, process_count=1))
      for i, t in _unpacked(b[1]))
  assert len(grain) == 256 and grain == seqio_packed == unpacked
  assert max(len(i) for i, _ in grain) == 16  # some inputs were trimmed to 12 with EOS
  # Unpacked rows have no slots (the model prepends the prompt itself).
  batch = next(run.batches(cfg, "local_pairs", "train", 8, vocabulary=vocabulary, pack=False,
                           prompt_slots=4))
  assert batch["encoder_input_tokens"].min() >= 0


def _segments(batch):
  """(inputs, targets) token tuples of each packed segment of a batch."""
  out = []
  for r in range(len(batch["encoder_input_tokens"])):
    for seg in set(batch["encoder_segment_ids"][r]) - {0}:
      pick = lambda k, s: tuple(batch[f"{k}_tokens"][r][batch[f"{s}_segment_ids"][r] == seg])
      out.append((pick("encoder_input", "encoder"), pick("decoder_target", "decoder")))
  return out


def _stack(rows):
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _unpacked(batch):
  out = []
  for inputs, targets in zip(batch["encoder_input_tokens"], batch["decoder_target_tokens"]):
    out.append((tuple(inputs[inputs > 0]), tuple(targets[targets > 0])))
  return out


def test_metrics_equal_seqio_evaluator(spm, tmp_path, monkeypatch):
  """scoring.pairs_metrics (no seqio) gives what scoring.seqio_metrics gives for the same
  predictions: SQuAD EM / F1 over answers that end at different lengths, one holding a
  sentinel and one an id past the vocabulary, the last batch partial."""
  rows = _pairs(11, seed=2)
  path = _write_tsv(tmp_path / "v.tsv", rows)
  seqio_vocab = data.get_vocabulary(spm)
  data.register_pairs_task("test_grain_pairs_metrics", seqio_vocab, path, path,
                           metric="squad")
  length = 16
  answers = {}
  for i, (inputs, target) in enumerate(rows):
    ids = seqio_vocab.encode(target if i % 3 else target.split()[0] + " duck")
    if i == 4:
      ids = ids[:1] + [seqio_vocab.vocab_size - 1] + ids[1:]
    if i == 7:
      ids = ids + [seqio_vocab.vocab_size + 5]
    answers[seqio_vocab.decode(seqio_vocab.encode(inputs))] = ids[:length - 1] + [1]

  def fake_decode(params, config, tokens, cfg):
    out = np.zeros((tokens.shape[0], 1, length), np.int32)
    for r, tok in enumerate(np.asarray(tokens)):
      if tok.any():
        ids = answers[seqio_vocab.decode([int(t) for t in tok])]
        out[r, 0, :len(ids)] = ids
    return DecodeOutput(jnp.asarray(out), jnp.zeros((tokens.shape[0], 1)))

  from t5jax import decoding
  monkeypatch.setattr(decoding, "decode", fake_decode)
  monkeypatch.setattr(decoding, "prepare_params", lambda params, config: params)
  decode = DecodeConfig(max_decode_length=length)
  seqio_cfg = run.DataConfig(task="test_grain_pairs_metrics", inputs_length=128,
                             targets_length=length)
  theirs = scoring.seqio_metrics(get_config("tiny"), {}, seqio_cfg, "test_grain_pairs_metrics", 4,
                             decode, None)
  grain_cfg = run.DataConfig(task="local_pairs", pipeline="grain", vocabulary=spm,
                             pairs_train=path, pairs_validation=path, pairs_metric="squad",
                             inputs_length=128, targets_length=length)
  vocabulary, _ = run.prepare_task(grain_cfg)
  ours = scoring.pairs_metrics(get_config("tiny"), {}, grain_cfg, 4, decode, None, vocabulary)
  rename = lambda m: {k.split("/")[-1]: v for k, v in m.items()}  # noqa: E731
  assert rename(ours) == pytest.approx(rename(theirs), abs=1e-9)
  assert 0 < ours["eval/local_pairs/em"] < 100
  assert scoring.pairs_metrics(get_config("tiny"), {}, grain_cfg, 4, decode, 5, vocabulary) != ours


def test_train_eval_infer_without_tensorflow(spm, tmp_path):
  """`t5jax train` on a pairs file with the eval hook scoring exact match, then `t5jax eval`
  and `t5jax infer`, with tensorflow, seqio and tfds unimportable."""
  pairs = _pairs(200)
  train = _write_tsv(tmp_path / "train.tsv", pairs)  # pairs 99 and 199: validation
  common = ["--gin.DataConfig.pipeline='grain'", f"--gin.DataConfig.vocabulary='{spm}'",
            f"--gin.DataConfig.pairs_train='{train}'", "--gin.DataConfig.pairs_prefix='say:'",
            "--gin.DataConfig.inputs_length=24", "--gin.DataConfig.targets_length=8",
            "--gin.model_config.vocab_size=512"]
  run_dir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": REPO, "T5JAX_COMPILE_CACHE": "0"}

  def t5jax(*argv):
    proc = subprocess.run([sys.executable, "-c", NO_TF, *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout

  out = t5jax("train", "--gin_file=demo/model_cpu.gin", "--gin_file=runs/finetune.gin",
              "--gin_file=tasks/local_pairs.gin", f"--run_dir={run_dir}", *common,
              "--gin.TrainConfig.num_steps=4", "--gin.TrainConfig.batch_size=8",
              "--gin.TrainConfig.eval_every=4", "--gin.DataConfig.eval_batches=1",
              "--gin.DataConfig.eval_examples=8", "--gin.CheckpointConfig.every_steps=4",
              "--gin.TrainConfig.tensorboard=False", "--gin.train.show_examples=1")
  assert "--- example 0 ---" in out, out[-2000:]
  logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert "eval/local_pairs/exact_match" in logged[-1], logged[-1]
  t5jax("eval", f"--checkpoint={run_dir}", "--gin_file=tasks/local_pairs.gin", *common,
        "--gin.evaluate.max_examples=4", "--gin.evaluate.batch_size=4",
        "--gin.DecodeConfig.max_decode_length=4")
  with open(run_dir / "eval.jsonl") as f:
    record = json.loads(f.readlines()[-1])
  assert "eval/local_pairs/exact_match" in record, record
  t5jax("infer", f"--checkpoint={run_dir}", f"--output={tmp_path / 'p.jsonl'}", *common,
        "--gin.DataConfig.task='local_pairs'", "--gin.infer.max_examples=2",
        "--gin.DecodeConfig.max_decode_length=4")
  records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
  vocabulary = vocab_lib.SpmVocabulary(spm)  # the split as the model reads it: trimmed
  seen = lambda text, n: vocabulary.decode(vocabulary.encode(text)[:n - 1])  # noqa: E731
  assert [r["inputs"] for r in records] == [seen(f"say: {pairs[i][0]}", 24) for i in (99, 199)]
  assert [r["targets"] for r in records] == [seen(pairs[i][1], 8) for i in (99, 199)]
