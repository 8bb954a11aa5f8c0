"""A PNG of a run's training and eval curves, from its metrics.jsonl."""

from __future__ import annotations

import json
import os


def read_metrics(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_run(run_dir: str, filename: str = "curves.png") -> str | None:
  """Writes run_dir/curves.png (loss, eval loss, accuracy by step); None without data
  or without matplotlib (not installed on accelerator images)."""
  records = read_metrics(run_dir)
  if not records:
    return None
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    return None
  series = lambda key: [(r["step"], r[key]) for r in records if key in r]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  for key, label in (("loss", "train loss"), ("eval/loss", "eval loss")):
    points = series(key)
    if points:
      ax_loss.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
  for key, label in (("accuracy", "train token accuracy"), ("eval/accuracy", "eval token accuracy")):
    points = series(key)
    if points:
      ax_acc.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
  for ax, title in ((ax_loss, "loss"), (ax_acc, "token accuracy")):
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend()
  fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
  fig.tight_layout()
  path = os.path.join(run_dir, filename)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
