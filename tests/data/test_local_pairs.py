"""task='local_pairs': your own (input, target) files end to end, and every kind of bad input
reported with its file and line before training starts."""

import json
import os
import re

import gin
import pytest

from t5jax import data, run, scoring
from t5jax.data import pairs
from t5jax.cli import main
from t5jax.decoding import DecodeConfig
from t5jax.errors import UsageError

TINY = ["--gin.model_config.d_model=32", "--gin.model_config.num_heads=2",
        "--gin.model_config.d_kv=16", "--gin.model_config.d_ff=64",
        "--gin.model_config.num_layers=2", "--gin.model_config.vocab_size=512"]
FAST = ["--gin.TrainConfig.compiler_options={'xla_backend_optimization_level': 0, "
        "'xla_llvm_disable_expensive_passes': True}", "--gin.TrainConfig.tensorboard=False"]
PAIRS = [("the cat sat", "cat"), ("a dog ran", "dog"), ("the bird sang", "bird"),
         ("a fish swam", "fish")] * 2


def _write(path, content):
  if isinstance(content, bytes):
    path.write_bytes(content)
  else:
    path.write_text(content, encoding="utf-8")
  return str(path)


pytestmark = pytest.mark.usefixtures("no_gin_bindings")


def test_pairs_train_eval_infer_end_to_end(spm, tmp_path):
  """`t5jax train` a tiny model for a packed step on a TSV, then evaluate its checkpoint on
  the JSONL validation file (SQuAD EM/F1) and infer on the task's split: the prefix is on
  every input. (The eval hook during training is scoring.seqio_metrics, as for GLUE in
  tests/test_end_to_end.py; it is left out here to keep this test short.)"""
  train = _write(tmp_path / "train.tsv", "".join(f"{i}\t{t}\n" for i, t in PAIRS))
  valid = _write(tmp_path / "valid.jsonl", "".join(
      json.dumps({"src": i, "tgt": t}) + "\n" for i, t in PAIRS[:4]))
  flags = [f"--gin.DataConfig.vocabulary='{spm}'", f"--gin.DataConfig.pairs_train='{train}'",
           f"--gin.DataConfig.pairs_validation='{valid}'",
           "--gin.DataConfig.pairs_keys=('src', 'tgt')",
           "--gin.DataConfig.pairs_prefix='name the animal'",
           "--gin.DataConfig.inputs_length=32", "--gin.DataConfig.targets_length=8"]
  run_dir = tmp_path / "run"
  assert main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
               "--gin_file=tasks/local_pairs.gin", f"--run_dir={run_dir}",
               "--gin.TrainConfig.num_steps=1", "--gin.TrainConfig.batch_size=8",
               "--gin.TrainConfig.eval_every=0", "--gin.CheckpointConfig.every_steps=100",
               "--gin.train.show_examples=0", *TINY, *FAST, *flags]) == 0
  assert scoring.has_metrics("local_pairs")  # so training would decode and score at evals
  gin.clear_config()

  # In process, eval and infer share one decoding compile (same shapes and DecodeConfig).
  cfg = run.DataConfig(task="local_pairs", vocabulary=spm, pairs_train=train,
                       pairs_validation=valid, pairs_keys=("src", "tgt"),
                       pairs_prefix="name the animal", pairs_metric="squad",
                       inputs_length=32, targets_length=8, pack=False)
  decode = DecodeConfig(max_decode_length=4)
  metrics = run.evaluate(str(run_dir), data=cfg, batch_size=8, decode_config=decode,
                         max_examples=4)
  assert {"eval/local_pairs/em", "eval/local_pairs/f1"} <= set(metrics), metrics
  with open(run_dir / "eval.jsonl") as f:
    assert json.loads(f.readlines()[-1])["eval/local_pairs/f1"] == metrics["eval/local_pairs/f1"]

  out = tmp_path / "predictions.jsonl"
  assert run.infer(str(run_dir), str(out), data=cfg, max_examples=4, batch_size=8,
                   decode_config=decode) == 4
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["inputs"] for r in records] == [f"name the animal {i}" for i, _ in PAIRS[:4]]
  assert [r["targets"] for r in records] == [t for _, t in PAIRS[:4]]
  assert all(isinstance(r["prediction"], str) for r in records)
  # An input file gets the prefix too; with int8 weights and matmuls (`infer --quantize`).
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("".join(f"{i}\n" for i, _ in PAIRS[:2]))
  assert run.infer(str(run_dir), str(out), input_file=str(inputs), data=cfg, batch_size=8,
                   decode_config=DecodeConfig(max_decode_length=4, quantize="int8")) == 2
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["inputs"] for r in records] == [f"name the animal {i}" for i, _ in PAIRS[:2]]


def test_pairs_task_splits_prefix_and_packing(spm, tmp_path):
  """Without a validation file every 100th pair is held out; batches pack."""
  rows = [(f"input number {i}", f"target {i}") for i in range(200)]
  train = _write(tmp_path / "many.tsv", "".join(f"{a}\t{b}\n" for a, b in rows))
  vocabulary = data.get_vocabulary(spm)
  task = data.register_pairs_task("test_pairs", vocabulary, train, prefix="count:")
  ex = list(task.get_dataset({"inputs": 16, "targets": 8}, split="validation",
                             shuffle=False).as_numpy_iterator())
  assert [e["inputs_pretokenized"].decode() for e in ex] == [
      "count: input number 99", "count: input number 199"]
  assert [e["targets_pretokenized"].decode() for e in ex] == ["target 99", "target 199"]
  batch = next(data.make_batch_iterator("test_pairs", split="train",
                                        sequence_length={"inputs": 96, "targets": 32},
                                        batch_size=2, seed=0, start_step=0, pack=True,
                                        process_index=0, process_count=1))
  assert batch["encoder_segment_ids"].max() > 1  # several pairs per row


def test_scores_predictions_that_end_at_different_lengths(spm, tmp_path, monkeypatch):
  """A trained model stops at EOS after a varying number of tokens; seqio stacks the
  predictions into one array, so scoring.seqio_metrics passes whole rows (regression: rows
  cut at EOS had different lengths and scoring failed)."""
  from t5jax import run
  from t5jax.config import get_config
  from t5jax.decoding import DecodeConfig, DecodeOutput
  import jax.numpy as jnp
  import numpy as np
  rows = [("say a", "cat"), ("say b", "a big dog"), ("say c", "bird"), ("say d", "fish")]
  path = _write(tmp_path / "v.tsv", "".join(f"{a}\t{b}\n" for a, b in rows))
  vocabulary = data.get_vocabulary(spm)
  data.register_pairs_task("test_pairs_lengths", vocabulary, path, path)
  # the first three targets exactly (EOS after a varying number of pieces), the last a wrong word
  answers = [vocabulary.encode(t) for _, t in rows[:3]] + [vocabulary.encode("cow")]
  length = 24
  assert len({len(a) for a in answers}) > 1 and max(map(len, answers)) < length

  def fake_decode(params, config, tokens, cfg):
    out = np.zeros((tokens.shape[0], 1, length), np.int32)
    for r, tok in enumerate(tokens):  # the row's answer, chosen by its input's last piece
      ids = answers["abcd".index(vocabulary.decode(
          [int(t) for t in tok if t > 1])[-1])] + [1]
      out[r, 0, :len(ids)] = ids
    return DecodeOutput(jnp.asarray(out), jnp.zeros((tokens.shape[0], 1)))

  from t5jax import decoding
  monkeypatch.setattr(decoding, "decode", fake_decode)  # scoring.seqio_metrics imports them
  monkeypatch.setattr(decoding, "prepare_params", lambda params, config: params)
  cfg = run.DataConfig(task="test_pairs_lengths", inputs_length=16, targets_length=length,
                       eval_split="validation")
  metrics = scoring.seqio_metrics(get_config("tiny"), {}, cfg, "test_pairs_lengths", 4,
                              DecodeConfig(max_decode_length=length), None)
  assert metrics == {"eval/test_pairs_lengths/exact_match": 75.0}


@pytest.mark.parametrize("name,content,message", [
    ("one.tsv", "input only\n", "line 1 has 1 tab-separated field(s)"),
    ("three.tsv", "a\tb\n\nx\ty\tz\n", "line 3 has 3 tab-separated"),
    ("empty.tsv", "\n  \n", "is empty"),
    ("blank_target.tsv", "a\t \n", "line 1 has an empty input or target"),
    ("latin1.tsv", b"ok\tfine\ncaf\xe9\tbar\n", "line 2 is not valid UTF-8"),
    ("list.jsonl", '["a", "b"]\n', "line 1 must be a JSON object with keys 'inputs' and"),
    ("keys.jsonl", '{"inputs": "a", "targets": "b"}\n{"input": "a", "target": "b"}\n',
     "line 2 must be a JSON object"),
    ("broken.jsonl", '{"inputs": "a",\n', "line 1 is not JSON"),
    ("number.jsonl", '{"inputs": "a", "targets": 3}\n', "must be strings"),
    ("pairs.csv", "a,b\n", "ends in .tsv"),
])
def test_bad_pairs_files_name_file_and_line(tmp_path, name, content, message):
  path = _write(tmp_path / name, content)
  with pytest.raises(data.PairsError, match=re.escape(message)) as e:
    pairs.read_pairs(path)
  assert path in str(e.value)


def test_bad_pairs_config_fails_before_training(spm, tmp_path):
  """prepare_task reads the files eagerly: the error comes before any training."""
  good = _write(tmp_path / "good.tsv", "a\tb\n")
  bad = _write(tmp_path / "bad.tsv", "a\tb\nno tab here\n")
  cfg = dict(task="local_pairs", vocabulary=spm)
  with pytest.raises(UsageError, match="needs DataConfig.pairs_train"):
    run.prepare_task(run.DataConfig(**cfg))
  with pytest.raises(UsageError, match=re.escape(f"{bad}: line 2 has 1")):
    run.prepare_task(run.DataConfig(**cfg, pairs_train=good, pairs_validation=bad))
  with pytest.raises(UsageError, match="no validation file"):
    run.prepare_task(run.DataConfig(**cfg, pairs_train=good))
  with pytest.raises(UsageError, match="pairs_metric='blue'"):
    run.prepare_task(run.DataConfig(**cfg, pairs_train=good, pairs_validation=good,
                                    pairs_metric="blue"))
  with pytest.raises(UsageError, match="does not exist"):
    run.prepare_task(run.DataConfig(**cfg, pairs_train=str(tmp_path / "missing.tsv")))
  # The command line reports it as one line, exit 2, before a step is run.
  assert main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
               "--gin_file=tasks/local_pairs.gin", f"--run_dir={tmp_path / 'r'}",
               f"--gin.DataConfig.vocabulary='{spm}'", f"--gin.DataConfig.pairs_train='{bad}'",
               f"--gin.DataConfig.pairs_validation='{good}'"]) == 2
  assert not os.path.exists(tmp_path / "r" / "checkpoints")
