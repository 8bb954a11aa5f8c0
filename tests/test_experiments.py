"""experiments/: every ablation gin file parses and binds; the runner writes its table/plot/json."""

import glob
import json
import os
import re
import sys

import gin
import pytest

from t5jax import gin_setup
from t5jax.data.objectives import OBJECTIVES, random_spans_helper, ul2_lengths

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
GIN_FILES = sorted(os.path.relpath(p, EXPERIMENTS)
                   for p in glob.glob(os.path.join(EXPERIMENTS, "**", "*.gin"), recursive=True))
sys.path.insert(0, EXPERIMENTS)
import run_ablations  # noqa: E402


def _build(configurable: str):
  return gin.get_configurable(f"t5jax.{configurable}")()


def test_every_ablation_of_the_paper_is_shipped():
  names = {os.path.basename(f)[:-4] for f in GIN_FILES}
  assert set(run_ablations.SETS["all"]) | set(run_ablations.SETS["ul2"]) | {"base"} == names
  assert len(run_ablations.SETS["all"]) == 13  # 7 objectives + 3 rates + 3 span lengths


@pytest.mark.parametrize("name", GIN_FILES)
def test_gin_file_parses_and_binds(name):
  with open(os.path.join(EXPERIMENTS, name)) as f:
    text = f.read()
  assert text.startswith("#") and "t5jax train" in text.split("\n\n")[0], \
      f"{name} must begin with a comment giving the command that runs it"
  if not name.endswith("base.gin"):
    # A small delta over base.gin: it includes it and binds only DataConfig.
    bindings = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert bindings[0] == "include 'ablations/base.gin'"
    assert all(line.startswith("DataConfig.") for line in bindings[1:]), bindings
  gin.clear_config()
  try:
    gin_setup.parse([name], ["RUN_DIR = '/tmp/x'"], search_paths=[EXPERIMENTS])
    model = _build("model_config")
    data = _build("DataConfig")
    trainer = _build("TrainConfig")
    for configurable in ("OptimizerConfig", "LossConfig", "MeshConfig", "CheckpointConfig"):
      _build(configurable)
    assert model.vocab_size == 8192 and data.task == "default_corpus_span_corruption"
    assert data.objective in OBJECTIVES and trainer.num_steps > 0
    assert isinstance(gin.query_parameter("train.trainer"), gin.config.ConfigurableReference)
  finally:
    gin.clear_config()
  if data.objective == "span_corruption":
    # targets_length is exactly what the corrupted segment needs: nothing truncated, no padding.
    _, targets = random_spans_helper(data.inputs_length, data.noise_density,
                                     data.mean_noise_span_length)
    assert data.targets_length == targets
    assert re.search(rf"random_spans_helper\(128, {data.noise_density:.2f}, "
                     rf"{data.mean_noise_span_length}\) = \(raw \d+, targets {targets}\)", text) \
        or name.endswith("base.gin")
  elif data.objective == "ul2":
    # Every denoiser's inputs and targets fit: ul2_lengths raises otherwise.
    assert len(ul2_lengths(data.inputs_length, data.targets_length)) == 7
  elif data.objective in ("prefix_lm", "bert_mlm", "mass", "deshuffling"):
    # Targets are the whole segment (or its suffix): inputs_length - 1 tokens + EOS.
    assert data.targets_length == data.inputs_length


def test_eval_every_ends_on_the_last_step():
  for steps in (1, 2, 3, 7, 100, 150):
    every = run_ablations.eval_every(steps)
    assert steps % every == 0 and every <= max(1, steps // 4)


def test_smoke_run_writes_table_plot_and_json(tmp_path):
  out = tmp_path / "out"
  # Two configs with the same shapes (128/128 targets), 1 step, the tiny preset.
  argv = ["--configs", "objective_bert_mlm,objective_deshuffling", "--smoke", "--steps", "1",
          "--out", str(out), "--run_root", str(tmp_path / "runs")]
  assert run_ablations.main(argv) == 0
  with open(out / "results.json") as f:
    results = json.load(f)
  rows = results["rows"]
  assert [r["config"] for r in rows] == ["objective_bert_mlm", "objective_deshuffling"]
  for r in rows:
    assert r["steps"] == 1 and r["batch_size"] == 8 and r["eval_loss"] > 0
    assert 0 <= r["eval_accuracy"] <= 1 and r["eval_curve"][-1][0] == 1
  assert results["meta"]["command"].startswith(".venv/bin/python experiments/run_ablations.py")
  table = (out / "results.md").read_text()
  assert "| objective_deshuffling | deshuffling |" in table and "NOT" in table.upper()
  assert (out / "results.png").stat().st_size > 10_000
  # notes.md survives re-rendering.
  (out / "notes.md").write_text("## Comparison with the paper\n\nhand-written")
  assert run_ablations.main(["--render_only", "--out", str(out)]) == 0
  assert "hand-written" in (out / "results.md").read_text()
