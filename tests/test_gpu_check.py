"""benchmarks/gpu_check.sh works before the first GPU minute is spent: its CPU dry run, with
every step under the time limit it has on the GPU."""

import json
import os
import subprocess
import sys


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _dry_run(script, out, timeout):
  """bash benchmarks/SCRIPT --cpu-dry-run --out OUT with this Python, no test XLA_FLAGS."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHON"] = sys.executable
  return subprocess.run(["bash", f"benchmarks/{script}", "--cpu-dry-run", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_gpu_check_cpu_dry_run_passes(tmp_path):
  proc = _dry_run("gpu_check.sh", tmp_path, 900)
  summary = (tmp_path / "summary.txt").read_text()
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  steps = [line.split()[0] for line in summary.splitlines()]
  # The figures first, the tests last; each step within the limit it has on the GPU.
  assert steps == ["devices", "train", "train_hf", "decode", "compile", "memory", "tests"], summary
  assert all(" rc=0 " in line for line in summary.splitlines()), summary
  train = (tmp_path / "train.log").read_text()
  assert "| t5jax |" in train and "init + compile" in train
  assert "| HF PyTorch |" in (tmp_path / "train_hf.log").read_text()
  assert "tokens/s" in (tmp_path / "decode.log").read_text()
  assert "init HLO lines" in (tmp_path / "compile.log").read_text()


def test_gpu_check_needs_an_out_dir():
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 2 and "--out DIR is required" in proc.stderr


def test_gpu_pretrain_cpu_dry_run_trains_without_tensorflow(tmp_path):
  """benchmarks/gpu_pretrain.sh (the GPU demo, demo/pretrain_gpu.gin) shrunk to a tiny
  model on CPU: it trains on the grain pipeline, evaluates and prints examples."""
  proc = _dry_run("gpu_pretrain.sh", tmp_path, 600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  log = (tmp_path / "pretrain.log").read_text()
  assert "[6/6" in log and "eval/loss=" in log and "--- example 0 ---" in log
  assert "tensorflow" not in log.lower()
  assert (tmp_path / "metrics.jsonl").exists() and "pretrain rc=0" in (
      tmp_path / "summary.txt").read_text()


def test_gpu_ablations_cpu_dry_run_pretrains_without_tensorflow(tmp_path):
  """benchmarks/gpu_ablations.sh (run_ablations.py --profile gpu) with --smoke on CPU, in a
  Python where importing tensorflow or seqio fails, as on the GPU image. Pretraining only
  (-- --no_downstream): building the context_cloze task walks the installed sources (minutes);
  tests/test_experiments.py dry-runs the profile's finetuning and scoring in-process."""
  blockers = tmp_path / "blockers"
  blockers.mkdir()
  for name in ("tensorflow", "seqio"):
    (blockers / f"{name}.py").write_text(f"raise ImportError('no {name} on the GPU image')\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(PYTHON=sys.executable, PYTHONPATH=str(blockers))
  out = tmp_path / "out"
  proc = subprocess.run(
      ["bash", "benchmarks/gpu_ablations.sh", "--cpu-dry-run", "--out", str(out), "--",
       "--configs", "objective_span_corruption", "--seeds", "1", "--no_downstream"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
  assert "ablations rc=0" in (out / "summary.txt").read_text()
  with open(out / "results" / "results.json") as f:
    results = json.load(f)
  row, = results["rows"]
  assert row["steps"] == 2 and row["eval_loss"] > 0
  assert "--profile gpu" in results["meta"]["command"]
  config = (out / "runs" / "objective_span_corruption" / "config.gin").read_text()
  assert "DataConfig.pipeline = 'grain'" in config and "model_config.scan_layers = True" in config
