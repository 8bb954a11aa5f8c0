"""Reading run directories: --step latest|best|N, falling back past a damaged step.

One small run (tiny model, synthetic batches, checkpoints at steps 2, 4, 6)
whose latest step is then damaged, as a disk fault would; best.json is
written here, as the trainer writes it when CheckpointConfig.best_metric is set.
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from synthetic_batches import FAST_COMPILE, data_fn
from t5jax import trainer
from t5jax.checkpoints import CheckpointConfig
from t5jax.cli import main
from t5jax.config import get_config
from t5jax.conversion import load_checkpoint, load_run_dir, load_run_step, save_checkpoint
from t5jax.errors import UsageError
from t5jax.optim import OptimizerConfig
from t5jax.partitioning import MeshConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
from data_test_corpus import write_corpus  # noqa: E402

# TensorStore reports a damaged read from its threads too; the load has already failed over.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
# vocab_size 512 fits the 300-piece test vocabulary (+100 sentinels) of the CLI checks.
MODEL = get_config("tiny", vocab_size=512)
CORRUPT, BEFORE = 6, 4


def _damage(step_dir):
  """Overwrites the array data of a step with garbage (its metadata stays readable)."""
  damaged = 0
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) == "d":
      for name in files:
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
        damaged += 1
  assert damaged


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  config = trainer.TrainConfig(
      run_dir=path, num_steps=6, batch_size=8, mesh=MeshConfig(-1, 1),
      optimizer=OptimizerConfig(schedule="constant", learning_rate=0.01),
      checkpoint=CheckpointConfig(every_steps=2, keep=3, asynchronous=False), log_every=2,
      tensorboard=False, compiler_options=FAST_COMPILE, peak_flops=1e12,
      handle_signals=False)
  result = trainer.train(MODEL, config, data_fn(8, input_len=8, target_len=4), verbose=False)
  assert result.step == 6
  assert sorted(int(d) for d in os.listdir(os.path.join(path, "checkpoints"))) == [2, 4, 6]
  _damage(os.path.join(path, "checkpoints", str(CORRUPT)))
  return path


def _set_best(run_dir, step, ranked=None):
  path = os.path.join(run_dir, "best.json")
  if step is None:
    if os.path.exists(path):
      os.remove(path)
    return
  best = {"step": step, "metric": "eval/glue_sst2/accuracy", "value": 91.25, "mode": "max"}
  if ranked:
    best["ranked"] = [{"step": s, "value": v} for s, v in ranked]
  with open(path, "w") as f:
    json.dump(best, f)


def _warnings(out):
  return [line for line in out.splitlines() if "WARNING" in line]


def test_latest_falls_back_past_the_damaged_step(run_dir, capsys):
  _set_best(run_dir, None)
  for step in ("latest", None):  # no best.json: the default is latest
    config, params, info = load_run_step(run_dir, step)
    assert info.step == BEFORE and info.skipped == (CORRUPT,)
    out = capsys.readouterr().out
    [warning] = _warnings(out)
    assert f"step {CORRUPT}" in warning and f"trying step {BEFORE}" in warning
    assert f"Loaded step {BEFORE} (latest readable; step {CORRUPT} unreadable)" in out
  assert config == MODEL
  # The same params as reading step 4 itself.
  _, given = load_run_dir(run_dir, BEFORE)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(given), strict=True):
    np.testing.assert_array_equal(a, b)


def test_best_loads_the_step_of_best_json(run_dir, capsys):
  _set_best(run_dir, 2)
  try:
    for step in ("best", None):  # with best.json, the default is best
      _, _, info = load_run_step(run_dir, step)
      assert info.step == 2 and info.choice == "best"
      out = capsys.readouterr().out
      assert "Loaded step 2 (best by eval/glue_sst2/accuracy=91.25)" in out
      assert not _warnings(out)
    # A damaged best step falls back to the newest readable one, saying so.
    _set_best(run_dir, CORRUPT)
    _, _, info = load_run_step(run_dir, "best")
    assert info.step == BEFORE
    out = capsys.readouterr().out
    assert len(_warnings(out)) == 1 and f"best step {CORRUPT}" in out
  finally:
    _set_best(run_dir, None)


def test_damaged_best_falls_back_to_the_next_best(run_dir, capsys):
  """best.json ranks every evaluated step: a damaged best gives way to the next best still
  on disk (not to the latest), saying which and why; with none left, to the latest."""
  _set_best(run_dir, CORRUPT, ranked=[(CORRUPT, 91.25), (3, 90.5), (2, 90.0), (BEFORE, 89.0)])
  try:
    _, _, info = load_run_step(run_dir, "best")
    assert info.step == 2 and info.choice == "best" and info.skipped == (CORRUPT,)
    out = capsys.readouterr().out
    [warning] = _warnings(out)  # step 3 was never kept on disk: skipped silently
    assert f"step {CORRUPT}" in warning and "trying the next best, step 2" in warning
    assert ("Loaded step 2 (next best (#3) by eval/glue_sst2/accuracy=90; best step "
            f"{CORRUPT} (eval/glue_sst2/accuracy=91.25) unreadable)") in out
    _set_best(run_dir, CORRUPT, ranked=[(CORRUPT, 91.25)])
    _, _, info = load_run_step(run_dir, "best")
    assert info.step == BEFORE
    assert f"trying step {BEFORE} (latest)" in capsys.readouterr().out
  finally:
    _set_best(run_dir, None)


def test_explicit_damaged_step_is_a_one_line_error(run_dir):
  with pytest.raises(UsageError) as e:
    load_run_dir(run_dir, str(CORRUPT))
  message = str(e.value)
  assert "\n" not in message and len(message) < 800
  assert f"step {CORRUPT}" in message
  assert os.path.join("checkpoints", str(CORRUPT), "state") in message
  with pytest.raises(UsageError, match="no checkpoint step 7; its steps are 2, 4, 6"):
    load_run_dir(run_dir, 7)
  with pytest.raises(UsageError, match="no best.json"):
    load_run_dir(run_dir, "best")
  with pytest.raises(UsageError, match="'latest', 'best' or a step number"):
    load_run_dir(run_dir, "newest")


def test_convert_takes_step_only_from_run_directories(run_dir, tmp_path, capsys):
  _set_best(run_dir, 2)
  try:
    assert main(["convert", run_dir, str(tmp_path / "best"), "--to", "t5jax",
                 "--step", "best"]) == 0
    assert "Loaded step 2 (best by eval/glue_sst2/accuracy=91.25)" in capsys.readouterr().out
  finally:
    _set_best(run_dir, None)
  assert main(["convert", run_dir, str(tmp_path / "latest"), "--to", "t5jax"]) == 0
  out = capsys.readouterr().out
  assert len(_warnings(out)) == 1 and f"Loaded step {BEFORE} (latest readable" in out
  # An explicit damaged step: exit 2 and one line naming the step and its files.
  assert main(["convert", run_dir, str(tmp_path / "bad"), "--step", str(CORRUPT)]) == 2
  err = capsys.readouterr().err.strip()
  assert "\n" not in err and f"step {CORRUPT}" in err and "checkpoints" in err
  # Other formats hold one set of parameters: --step is refused.
  assert main(["convert", str(tmp_path / "latest"), str(tmp_path / "x"), "--step", "2"]) == 2
  assert "only to t5jax run directories" in capsys.readouterr().err
  with pytest.raises(UsageError, match="only to t5jax run directories"):
    load_checkpoint(str(tmp_path / "latest"), step="latest")
  config, params = load_checkpoint(str(tmp_path / "latest"))
  save_checkpoint(str(tmp_path / "hf"), config, params)  # and on to HF, as before
  assert os.path.isfile(tmp_path / "hf" / "config.json")


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
  """gin flags for the local-corpus task with a 300-piece vocabulary (both made here)."""
  root = tmp_path_factory.mktemp("text")
  corpus = write_corpus(root / "corpus.txt", 300)
  from t5jax.data import train_vocab
  spm = train_vocab([corpus], str(root / "vocab"), vocab_size=300)
  return [f"--gin.DataConfig.corpus=('{corpus}',)", f"--gin.DataConfig.vocabulary='{spm}'",
          "--gin.DataConfig.inputs_length=16", "--gin.DataConfig.targets_length=8"]


def test_eval_and_infer_load_best_or_fall_back(run_dir, text_data, tmp_path, capsys):
  _set_best(run_dir, 2)
  try:
    assert main(["eval", "--gin_file=runs/eval.gin", "--gin_file=tasks/local_corpus.gin",
                 f"--checkpoint={run_dir}", "--gin.DataConfig.eval_batches=1",
                 "--gin.evaluate.batch_size=8", *text_data]) == 0
    out = capsys.readouterr().out
    assert "Loaded step 2 (best by eval/glue_sst2/accuracy=91.25)" in out
    with open(os.path.join(run_dir, "eval.jsonl")) as f:
      record = json.loads(f.readlines()[-1])
    assert record["step"] == 2 and record["eval/loss"] > 0
  finally:
    _set_best(run_dir, None)
  inputs = tmp_path / "inputs.txt"
  inputs.write_text("The model of the data <extra_id_0> span.\n")
  out_file = tmp_path / "predictions.jsonl"
  assert main(["infer", "--gin_file=runs/infer.gin", "--gin_file=tasks/local_corpus.gin",
               f"--checkpoint={run_dir}", "--step=latest", f"--input_file={inputs}",
               f"--output={out_file}", "--gin.DecodeConfig.method='greedy'",
               "--gin.DecodeConfig.num_beams=1", "--gin.DecodeConfig.max_decode_length=4",
               *text_data]) == 0
  out = capsys.readouterr().out
  assert len(_warnings(out)) == 1 and f"Loaded step {BEFORE} (latest readable" in out
  assert len(out_file.read_text().splitlines()) == 1
