"""The real `t5jax` entry points end to end: vocab -> train -> eval -> infer -> finetune.

A tiny model on a corpus the test writes; GLUE data comes from
tfds.testing.mock_data. Nothing is downloaded.
"""

import json
import os
import sys

import pytest
import tensorflow_datasets as tfds

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from data_test_corpus import write_corpus  # noqa: E402
from t5jax.cli import main  # noqa: E402

TINY = ["--gin.model_config.d_model=32", "--gin.model_config.num_heads=2",
        "--gin.model_config.d_kv=16", "--gin.model_config.d_ff=64",
        "--gin.model_config.num_layers=2", "--gin.model_config.vocab_size=512"]
FAST = ["--gin.TrainConfig.compiler_options={'xla_backend_optimization_level': 0, "
        "'xla_llvm_disable_expensive_passes': True}", "--gin.TrainConfig.tensorboard=False"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  corpus = write_corpus(root / "corpus.txt", 300)
  assert main(["vocab", corpus, "--output_dir", str(root / "vocab"), "--vocab_size", "300"]) == 0
  spm = [os.path.join(root / "vocab", f) for f in os.listdir(root / "vocab")
         if f.endswith(".model")][0]
  data = [f"--gin.DataConfig.corpus=('{corpus}',)", f"--gin.DataConfig.vocabulary='{spm}'",
          "--gin.DataConfig.inputs_length=32", "--gin.DataConfig.targets_length=8"]
  return root, data


def _pretrain(root, data, run_dir, *extra):
  return main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
               "--gin_file=tasks/local_corpus.gin", f"--run_dir={run_dir}",
               "--gin.TrainConfig.num_steps=4", "--gin.TrainConfig.batch_size=8",
               "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_every=2",
               "--gin.CheckpointConfig.every_steps=2", "--gin.DataConfig.eval_batches=1",
               "--gin.train.show_examples=2", *TINY, *FAST, *data, *extra])


@pytest.fixture(scope="module")
def pretrained(workspace):
  root, data = workspace
  run_dir = str(root / "pretrain")
  assert _pretrain(root, data, run_dir) == 0
  return run_dir


def test_train_writes_a_complete_run_directory(pretrained, capsys):
  files = set(os.listdir(pretrained))
  assert {"config.gin", "metrics.jsonl", "model_config.json", "checkpoints",
          "curves.png"} <= files
  with open(os.path.join(pretrained, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert records[-1]["step"] == 4 and any("eval/loss" in r for r in records)
  with open(os.path.join(pretrained, "config.gin")) as f:
    assert "TrainConfig.num_steps = 4" in f.read()


def test_eval_and_infer_on_the_checkpoint(workspace, pretrained, tmp_path):
  root, data = workspace
  eval_args = ["--gin_file=runs/eval.gin", "--gin_file=tasks/local_corpus.gin",
               "--gin.DataConfig.eval_batches=1", "--gin.evaluate.batch_size=8", *data]
  assert main(["eval", f"--checkpoint={pretrained}", *eval_args]) == 0
  with open(os.path.join(pretrained, "eval.jsonl")) as f:
    metrics = json.loads(f.readlines()[-1])
  assert metrics["eval/loss"] > 0 and 0 <= metrics["eval/accuracy"] <= 1

  inputs = tmp_path / "inputs.txt"
  inputs.write_text("The model of the data <extra_id_0> span.\nA word in a sentence.\n")
  out = tmp_path / "predictions.jsonl"
  assert main(["infer", "--gin_file=runs/infer.gin", "--gin_file=tasks/local_corpus.gin",
               f"--checkpoint={pretrained}", f"--input_file={inputs}", f"--output={out}",
               "--gin.DecodeConfig.max_decode_length=6", "--gin.DecodeConfig.num_beams=2",
               *data]) == 0
  records = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(records) == 2
  assert all({"inputs", "prediction", "score"} <= set(r) for r in records)


def test_finetune_on_glue_under_mock_data(workspace, pretrained, tmp_path):
  root, data = workspace
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    assert main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                 "--gin_file=tasks/glue_sst2.gin", f"--run_dir={tmp_path / 'sst2'}",
                 f"--gin.train.init_checkpoint='{pretrained}'",
                 f"--gin.DataConfig.data_dir='{data_dir}'",
                 "--gin.TrainConfig.num_steps=2", "--gin.TrainConfig.batch_size=8",
                 "--gin.TrainConfig.eval_every=2", "--gin.DataConfig.eval_examples=8",
                 "--gin.DataConfig.eval_batches=1", "--gin.train.show_examples=0",
                 *TINY, *FAST, *data]) == 0
    assert main(["eval", "--gin_file=runs/eval.gin", "--gin_file=tasks/glue_sst2.gin",
                 f"--checkpoint={tmp_path / 'sst2'}", f"--gin.DataConfig.data_dir='{data_dir}'",
                 "--gin.evaluate.max_examples=8", "--gin.DecodeConfig.max_decode_length=4",
                 *data]) == 0
  with open(tmp_path / "sst2" / "eval.jsonl") as f:
    metrics = json.loads(f.readlines()[-1])
  assert "eval/glue_sst2/accuracy" in metrics, metrics
  # During training too: decoded and scored at each eval step.
  with open(tmp_path / "sst2" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert any("eval/glue_sst2/accuracy" in r and "eval/loss" in r for r in records), records


def test_every_peft_gin_finetunes_on_glue_under_mock_data(workspace, pretrained, tmp_path):
  """gin_configs/peft/*.gin on the `make pretrain`-style checkpoint, through `t5jax train`:
  LoRA with the eval hook (decoded and scored as base + adapter) and `t5jax eval` of its
  run directory; IA3, prompt tuning and norm-only a step each."""
  root, data = workspace
  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  common = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
            "--gin_file=tasks/glue_sst2.gin", f"--gin.train.init_checkpoint='{pretrained}'",
            f"--gin.DataConfig.data_dir='{data_dir}'", "--gin.TrainConfig.batch_size=8",
            "--gin.DataConfig.eval_examples=8", "--gin.DataConfig.eval_batches=1",
            "--gin.train.show_examples=0", *TINY, *FAST, *data]
  with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
    lora = tmp_path / "lora"
    assert main(["train", "--gin_file=peft/lora.gin", f"--run_dir={lora}", *common,
                 "--gin.TrainConfig.num_steps=2", "--gin.TrainConfig.eval_every=2"]) == 0
    assert main(["eval", "--gin_file=runs/eval.gin", "--gin_file=tasks/glue_sst2.gin",
                 f"--checkpoint={lora}", f"--gin.DataConfig.data_dir='{data_dir}'",
                 "--gin.evaluate.max_examples=8", "--gin.DecodeConfig.max_decode_length=4",
                 *data]) == 0
    for method in ("ia3", "prompt_tuning", "norm_only"):
      assert main(["train", f"--gin_file=peft/{method}.gin", f"--run_dir={tmp_path / method}",
                   *common, "--gin.TrainConfig.num_steps=1",
                   "--gin.TrainConfig.eval_every=0"]) == 0, method
      assert os.path.exists(tmp_path / method / "base.json"), method
  with open(lora / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert any("eval/glue_sst2/accuracy" in r for r in records), records
  with open(lora / "eval.jsonl") as f:
    assert "eval/glue_sst2/accuracy" in json.loads(f.readlines()[-1])


def test_run_dir_of_another_model_is_refused(workspace, pretrained, capsys):
  root, data = workspace
  assert _pretrain(root, data, pretrained, "--gin.model_config.d_ff=96") == 2
  err = capsys.readouterr().err
  assert "different model config" in err and "d_ff" in err


def test_unknown_task_lists_registered_ones(workspace, tmp_path, capsys):
  root, data = workspace
  assert _pretrain(root, data, str(tmp_path / "x"), "--gin.DataConfig.task='glue_sst3'") == 2
  err = capsys.readouterr().err
  assert "Did you mean 'glue_sst2'" in err and "Registered:" in err


def test_span_fills_counts_exactly_filled_spans():
  from t5jax.scoring import span_fills
  s0, s1, s2 = 99, 98, 97  # sentinels count down from the top: [97, 100)
  targets = [[s0, 5, 6, s1, 7, s2, 8, 9, 1, 0],   # three spans
             [5, 6, 7, 1, 0, 0, 0, 0, 0, 0]]      # no sentinel: not a span target
  predictions = [[s0, 5, 6, s1, 4, s2, 8, 9, 3, 1],  # span 0 right; 1 wrong; 2 too long
                 [5, 6, 7, 1, 0, 0, 0, 0, 0, 0]]
  assert span_fills(targets, predictions, 97, 100) == {
      "spans": 3, "exact": 1, "spans_multi": 2, "exact_multi": 1}
  # A right span after the wrong sentinel does not count; EOS ends the row.
  assert span_fills([[s0, 5, 1, s1, 6]], [[s1, 5, 1, s0, 5]], 97, 100)["exact"] == 0
  assert span_fills([[s0, 5, 1]], [[s0, 5, 1]], 97, 100)["exact"] == 1
