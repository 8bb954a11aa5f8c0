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
                   for p in glob.glob(os.path.join(EXPERIMENTS, "ablations", "*.gin")))
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


def test_every_gin_file_is_an_ablation_or_the_finetuning_recipe():
  every = {os.path.relpath(p, EXPERIMENTS)
           for p in glob.glob(os.path.join(EXPERIMENTS, "**", "*.gin"), recursive=True)}
  assert every == set(GIN_FILES) | {"finetune/docstring_package.gin"}


def test_finetuning_recipe_parses_and_binds():
  text = open(os.path.join(EXPERIMENTS, "finetune/docstring_package.gin")).read()
  assert text.startswith("#") and "t5jax train" in text.split("\n\n")[0]
  gin.clear_config()
  try:
    gin_setup.parse(["finetune/docstring_package.gin"],
                    ["RUN_DIR = '/tmp/x'", "DataConfig.pairs_train = 'a.tsv'"],
                    search_paths=[EXPERIMENTS])
    model, data, trainer = (_build(c) for c in ("model_config", "DataConfig", "TrainConfig"))
    assert model.vocab_size == 8192 and model.dropout_rate == 0.1
    assert data.task == "local_pairs" and data.pairs_metric == "exact_match"
    assert trainer.num_steps > 0 and trainer.eval_every == 0
  finally:
    gin.clear_config()


def test_eval_every_ends_on_the_last_step():
  for steps in (1, 2, 3, 7, 100, 150):
    every = run_ablations.eval_every(steps)
    assert steps % every == 0 and every <= max(1, steps // 4)


def test_seed_spread_and_direction():
  assert run_ablations.spread([0.5]) is None
  assert run_ablations.spread([0.4, 0.5, 0.6]) == pytest.approx(0.1)
  # at least twice the spread counts; under it does not; no spread: unknown
  assert run_ablations.distinguishable(0.2, 0.1) and not run_ablations.distinguishable(-0.19, 0.1)
  assert run_ablations.distinguishable(0.5, None) is None
  # judged by the larger of the baseline's spread and the row's own
  assert run_ablations.row_noise(0.1, None) == 0.1 and run_ablations.row_noise(0.1, 0.3) == 0.3
  assert run_ablations.row_noise(0.3, 0.1) == 0.3 and run_ablations.row_noise(None, 0.3) is None
  assert run_ablations.direction(-0.3, -1.72, 0.1) == "agrees"
  assert run_ablations.direction(0.3, -1.72, 0.1) == "disagrees"
  assert run_ablations.direction(0.15, -1.72, 0.1) == "within our noise"
  assert run_ablations.direction(0.3, None, 0.1) == "-"
  # the paper's differences: each row against its table's reference row
  assert run_ablations.paper_delta("objective_deshuffling") == pytest.approx((73.17 - 83.49,
                                                                              58.47 - 72.53))
  assert run_ablations.paper_delta("rate_50") == pytest.approx((81.27 - 83.28, 70.33 - 71.36))
  assert run_ablations.paper_delta(run_ablations.BASELINE) is None
  rows = [{"config": run_ablations.BASELINE, "seed": s, "eval_loss": 5.0,
           "package": {"accuracy": a}} for s, a in enumerate([0.40, 0.44, 0.42])]
  rows += [{"config": "rate_50", "seed": 0, "eval_loss": 5.5, "package": {"accuracy": 0.30}},
           {"config": "span_2", "seed": 0, "eval_loss": 5.1, "package": {"accuracy": 0.45}},
           # 6 points above the baseline, 3x its spread but under twice its own (4 points)
           *({"config": "span_5", "seed": s, "eval_loss": 5.1, "package": {"accuracy": a}}
             for s, a in enumerate([0.44, 0.48, 0.52])),
           {"config": run_ablations.FLOOR, "seed": 0, "package": {"accuracy": 0.2}}]
  summary = {e["config"]: e for e in run_ablations.summarise(rows)}
  base = summary[run_ablations.BASELINE]
  assert base["mean"] == pytest.approx(0.42) and base["spread"] == pytest.approx(0.02)
  assert summary["rate_50"]["distinguishable"] and summary["rate_50"]["direction"] == "agrees"
  assert summary["span_2"]["delta"] == pytest.approx(0.03)
  assert not summary["span_2"]["distinguishable"]
  assert summary["span_2"]["direction"] == "within our noise"
  assert summary["span_5"]["delta"] == pytest.approx(0.06)
  assert not summary["span_5"]["distinguishable"]
  assert summary["span_5"]["direction"] == "within our noise"
  assert summary[run_ablations.FLOOR]["direction"] == "agrees"  # pretraining helps
  lines = run_ablations.downstream_table(rows, {"task": {"chance": 0.125}})
  assert "| span_2 | Table 7 mean span 2 | 1 | 45.0 | +3.0 | no | 83.54 / 72.20 | +0.05 / -0.33 " \
         "| within our noise |" in lines
  assert "| rate_50 | Table 6 corruption rate 50% | 1 | 30.0 | -12.0 | yes | 81.27 / 70.33 " \
         "| -2.01 / -1.03 | agrees |" in lines
  assert any(line.startswith(f"| {run_ablations.BASELINE} | Table 7 mean span 3 | 3 | 42.0 ± 2.0 |")
             for line in lines)
  # The floor check needs both spreads: a floor of one seed gives none.
  assert run_ablations.floor_check(list(summary.values())) is None
  floor = [{"config": run_ablations.FLOOR, "seed": s, "package": {"accuracy": a}}
           for s, a in enumerate([0.28, 0.30, 0.32])]  # spread 2 points: 3x = 6 < 12
  cleared = run_ablations.floor_check(run_ablations.summarise(rows[:3] + floor))
  assert cleared.startswith("**Floor check: cleared.**") and "+12.0 points" in cleared
  close = [dict(r, package={"accuracy": r["package"]["accuracy"] + 0.07}) for r in floor]
  assert "not cleared" in run_ablations.floor_check(run_ablations.summarise(rows[:3] + close))


def _tiny_package_task(folder):
  """A 2-class docstring_package task of a few lines (the real one walks the installed
  sources, minutes; tests/data/test_downstream.py tests that builder)."""
  folder.mkdir()
  rows = {"train": 16, "validation": 8}
  paths = {}
  for split, n in rows.items():
    paths[split] = str(folder / f"{split}.tsv")
    with open(paths[split], "w") as f:
      for i in range(n):
        label = ("numpy", "email")[i % 2]
        f.write(f"package: text {i} about {('arrays', 'messages')[i % 2]} here\t{label}\n")
  return {**paths, "classes": ["email", "numpy"], "chance": 0.5, "counts": rows}


def _record_commands(tmp_path, monkeypatch) -> list[list[str]]:
  """The tiny package task in place of the real one; returns the list that every
  t5jax.cli.main argv of the run is appended to."""
  task = _tiny_package_task(tmp_path / "task")
  monkeypatch.setattr(run_ablations, "package_task", lambda args: task)
  calls = []
  from t5jax import cli
  real_main = cli.main
  monkeypatch.setattr(cli, "main", lambda argv: calls.append(argv) or real_main(argv))
  return calls


def test_smoke_run_writes_table_plot_and_json(tmp_path, monkeypatch):
  """Two sittings at the smallest cost (one pretraining, two finetunes): the seeds' plan is
  test_planned_runs_..., the spread and verdicts test_seed_spread_and_direction."""
  out = tmp_path / "out"
  task = _tiny_package_task(tmp_path / "task")
  monkeypatch.setattr(run_ablations, "package_task", lambda args: task)
  # Sitting 1: the baseline (1 pretraining step, the tiny preset), finetuned, no floor.
  common = ["--configs", run_ablations.BASELINE, "--seeds", "1", "--smoke", "--steps", "1",
            "--out", str(out), "--run_root", str(tmp_path / "runs")]
  assert run_ablations.main(common + ["--no_floor"]) == 0
  with open(out / "results.json") as f:
    results = json.load(f)
  rows = results["rows"]
  assert [(r["config"], r["seed"]) for r in rows] == [(run_ablations.BASELINE, 0)]
  for r in rows:
    assert 0 <= r["package"]["accuracy"] <= 1
    assert r["steps"] == 1 and r["batch_size"] == 8 and r["eval_loss"] > 0
    assert 0 <= r["eval_accuracy"] <= 1 and r["eval_curve"][-1][0] == 1
  assert results["meta"]["command"].startswith(".venv/bin/python experiments/run_ablations.py")
  # Sitting 2 (--resume): keeps the baseline's row, adds the floor's.
  assert run_ablations.main(common + ["--resume"]) == 0
  with open(out / "results.json") as f:
    merged = json.load(f)
  assert merged["rows"][:1] == rows
  assert [(r["config"], r["seed"]) for r in merged["rows"][1:]] == [(run_ablations.FLOOR, 0)]
  assert 0 <= merged["rows"][1]["package"]["accuracy"] <= 1
  assert merged["meta"]["sittings"] == 2 and len(merged["meta"]["commands"]) == 2
  # Each sitting records what it read: the same corpus and task here, both times.
  inputs = merged["meta"]["inputs"]
  assert len(inputs) == 2 and inputs[0] == inputs[1] and set(inputs[0]) == {"corpus", "cpu", "task"}
  table = (out / "results.md").read_text()
  assert "## Downstream" in table and "Chance: 50.0%" in table
  assert f"| {run_ablations.FLOOR} | Table 1 no pre-training | 1 |" in table
  assert (out / "results.png").stat().st_size > 10_000
  # A sitting at another scale is refused: its rows would not compare.
  with pytest.raises(SystemExit, match="another scale or recipe"):
    run_ablations.main(common[:-6] + ["--steps", "2", "--out", str(out), "--run_root",
                                      str(tmp_path / "runs"), "--resume"])
  # notes.md survives re-rendering.
  (out / "notes.md").write_text("## Comparison with the paper\n\nhand-written")
  assert run_ablations.main(["--render_only", "--out", str(out)]) == 0
  assert "hand-written" in (out / "results.md").read_text()


def test_planned_runs_seed_the_baseline_floor_and_seeded_configs():
  def plan(*flags):
    args = run_ablations.parse_args(["--configs", f"{run_ablations.BASELINE},span_2,rate_10",
                                     "--seeds", "2", *flags])
    run_ablations.config_names(args)
    return run_ablations.planned_runs(run_ablations.config_names(args), args)
  base, floor = run_ablations.BASELINE, run_ablations.FLOOR
  assert plan() == [(base, 0), (base, 1), ("span_2", 0), ("rate_10", 0), (floor, 0), (floor, 1)]
  assert plan("--seeded", "span_2", "--no_floor") == [(base, 0), (base, 1), ("span_2", 0),
                                                      ("span_2", 1), ("rate_10", 0)]
  assert len(plan("--seeded", "all", "--no_downstream")) == 6
  with pytest.raises(SystemExit, match="--seeded span_5: not among the configs"):
    plan("--seeded", "span_5")
  # Each seed gets its own run directory and binds the init and data-order seeds.
  args = run_ablations.parse_args(["--configs", "span_2"])
  assert run_ablations.run_dir_of("span_2", 0, args) != run_ablations.run_dir_of("span_2", 1, args)


def test_grain_pipeline_runs_pretraining_and_the_package_task(tmp_path, monkeypatch):
  """--pipeline grain: pretraining (a non-default objective) and the package task's
  finetuning and scoring read through the TensorFlow-free pipeline."""
  calls = _record_commands(tmp_path, monkeypatch)
  out = tmp_path / "out"
  assert run_ablations.main(["--configs", "objective_deshuffling", "--seeds", "1", "--smoke",
                             "--steps", "1", "--no_floor", "--pipeline", "grain",
                             "--out", str(out), "--run_root", str(tmp_path / "runs")]) == 0
  assert [argv[0] for argv in calls] == ["train", "train", "eval"]
  assert all("--gin.DataConfig.pipeline='grain'" in argv for argv in calls)
  with open(out / "results.json") as f:
    row, = json.load(f)["rows"]
  assert 0 <= row["package"]["accuracy"] <= 1 and row["eval_loss"] > 0


def test_task_flag_picks_the_task_its_sizes_and_its_folder():
  """--task next_sentence: sizes in all (128 / 2,000 by default), its own task folder and
  results wording; docstring_package keeps its per-class defaults and recipe key."""
  ns = run_ablations.parse_args(["--task", "next_sentence", "--out", "/tmp/x"])
  assert (ns.task_train, ns.task_validation) == (128, 2000)
  assert ns.task_dir.endswith(os.path.join("runs", "ablations", "next_sentence"))
  pkg = run_ablations.parse_args(["--out", "/tmp/x"])
  assert (pkg.task, pkg.task_train, pkg.task_validation) == ("docstring_package", 64, 64)
  text = run_ablations.describe_task({"task": "next_sentence", "classes": ["1", "2"],
                                      "counts": {"train": 128, "validation": 2000}})
  assert text.startswith("which of two sentences follows") and "2000 validation" in text
  cloze = run_ablations.parse_args(["--task", "cloze", "--out", "/tmp/x"])
  assert (cloze.task_train, cloze.task_validation) == (128, 2000)
  assert run_ablations.describe_task({"task": "cloze", "counts": {"train": 128, "validation": 2000}}
                                     ).startswith("the word left out")
  ctx = run_ablations.parse_args(["--task", "context_cloze", "--out", "/tmp/x"])
  assert (ctx.task_train, ctx.task_validation) == (128, 2000)
  assert "LAMBADA" in run_ablations.describe_task(
      {"task": "context_cloze", "counts": {"train": 128, "validation": 2000}})


def test_gpu_profile_fills_unset_flags_and_explicit_ones_win():
  gpu = run_ablations.parse_args(["--profile", "gpu", "--out", "/tmp/x"])
  assert (gpu.preset, gpu.steps, gpu.batch_size, gpu.pipeline, gpu.task) == (
      "t5.1.1-small", 3000, 128, "grain", "context_cloze")
  flags = run_ablations.scale_bindings(gpu)
  assert "--gin.model_config.d_model=512" in flags and "--gin.model_config.num_layers=8" in flags
  assert flags[-2:] == ["--gin.model_config.scan_layers=True",
                        "--gin.model_config.dtype='bfloat16'"]
  mine = run_ablations.parse_args(["--profile", "gpu", "--steps", "10", "--task", "next_sentence",
                                   "--gin", "model_config.dtype='float32'", "--out", "/tmp/x"])
  assert (mine.steps, mine.task, mine.batch_size) == (10, "next_sentence", 128)
  assert run_ablations.scale_bindings(mine)[-1] == "--gin.model_config.dtype='float32'"
  cpu = run_ablations.parse_args(["--out", "/tmp/x"])
  assert (cpu.preset, cpu.steps, cpu.pipeline, cpu.task) == (None, None, "seqio",
                                                             "docstring_package")
  # The floor alone: --configs no_pretraining (a GPU call each for the baseline and floor).
  floor = run_ablations.parse_args(["--configs", run_ablations.FLOOR, "--seeds", "2"])
  assert run_ablations.planned_runs(run_ablations.config_names(floor), floor) == [
      (run_ablations.FLOOR, 0), (run_ablations.FLOOR, 1)]
  with pytest.raises(SystemExit, match="drop --no_downstream"):
    run_ablations.config_names(run_ablations.parse_args(
        ["--configs", run_ablations.FLOOR, "--no_floor"]))


def test_gpu_profile_dry_run_on_cpu(tmp_path, monkeypatch):
  """--profile gpu --smoke: the GPU command end to end on this CPU with shrunk shapes
  (the tiny preset, 1 step, batch 8), keeping what the profile changes besides shapes:
  grain, scanned layers, bf16, and the finetuning and scoring through them."""
  calls = _record_commands(tmp_path, monkeypatch)
  out = tmp_path / "out"
  assert run_ablations.main(["--profile", "gpu", "--smoke", "--steps", "1", "--seeds", "1",
                             "--configs", run_ablations.BASELINE, "--no_floor",
                             "--out", str(out), "--run_root", str(tmp_path / "runs")]) == 0
  assert [argv[0] for argv in calls] == ["train", "train", "eval"]
  for argv in calls[:2]:  # pretraining and finetuning
    assert {"--gin.DataConfig.pipeline='grain'", "--gin.model_config.scan_layers=True",
            "--gin.model_config.dtype='bfloat16'", "--gin.model_config.preset='tiny'"} <= set(argv)
  with open(out / "results.json") as f:
    results = json.load(f)
  row, = results["rows"]
  assert row["steps"] == 1 and row["batch_size"] == 8 and 0 <= row["package"]["accuracy"] <= 1
  assert results["meta"]["task"]["name"] == "context_cloze"
  config = (tmp_path / "runs" / run_ablations.BASELINE / "config.gin").read_text()
  assert "model_config.scan_layers = True" in config and "'bfloat16'" in config


def test_a_run_stopped_by_a_signal_writes_no_row(tmp_path):
  """The trainer saves and returns on SIGTERM; the runner must not score that checkpoint
  as if the run were complete (it stops the sitting; --resume continues the run)."""
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.gin").write_text("TrainConfig.num_steps = 300\n")
  (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 21, "loss": 7.0}\n')
  with pytest.raises(SystemExit, match="logged up to step 21 of 300.*--resume"):
    run_ablations.check_finished(str(run))
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 300, "loss": 2.0}\n')
  run_ablations.check_finished(str(run))
