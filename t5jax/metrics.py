"""Metric sinks: JSON lines, TensorBoard events (optional), a console progress line.

Only process 0 writes. tensorboardX is imported lazily and its absence is
tolerated (GPU images may lack it); the JSON lines file is the record of truth.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time


class MetricsWriter:
  def __init__(self, run_dir: str, total_steps: int, tensorboard: bool = True,
               console: bool = True, active: bool = True):
    self.total_steps, self.console, self.active = total_steps, console, active
    self._tb = None
    self._file = None
    if not active:
      return
    os.makedirs(run_dir, exist_ok=True)
    self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
      except ImportError:
        print("tensorboardX not installed: metrics go to metrics.jsonl only.", flush=True)
    self._started = time.time()
    self._first_step = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.active:
      return
    clean = {k: float(v) for k, v in metrics.items()}
    self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if math.isfinite(v):
          self._tb.add_scalar(k, v, int(step))
    if self.console:
      self._progress(step, clean)

  def _progress(self, step: int, m: dict) -> None:
    if self._first_step is None:
      self._first_step, self._started = step, time.time()
    eta = ""
    step_time = m.get("step_time")
    if step_time:
      eta = f" eta {_duration((self.total_steps - step) * step_time)}"
    keys = [k for k in ("loss", "accuracy", "learning_rate", "grad_norm", "tokens_per_s", "mfu",
                        "eval/loss", "eval/accuracy") if k in m]
    fields = " ".join(f"{k}={m[k]:.4g}" for k in keys)
    pct = 100.0 * step / max(self.total_steps, 1)
    print(f"[{step}/{self.total_steps} {pct:5.1f}%]{eta} {fields}", file=sys.stdout, flush=True)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def _duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  return f"{h}:{rem // 60:02d}:{rem % 60:02d}"
