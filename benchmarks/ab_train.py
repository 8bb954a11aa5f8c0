"""A/B of the training step across checkouts and settings, timed blocks interleaved.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python benchmarks/ab_train.py --side base=/tmp/base \\
        --side new=. --side new_standard=.:T5JAX_CPU_KERNELS=off [--preset t5.1.0-small]
        [--dtype float32] [--batch 4] [--input_len 256] [--target_len 64]
        [--steps 5] [--rounds 7]

Each side is a checkout (and optional VAR=VALUE settings) run in its own worker
process: it builds `t5jax.benchmark.TrainStepRunner` from that checkout's code
and warms it up (compilation excluded). Then the timed blocks go round the
sides (A, B, C, A, B, C, ...), one block at a time while the other workers
wait, so a machine whose speed drifts touches every side alike. Prints the
median and best step time per side, and each side's median against the first.
Workers re-exec with huge pages like the `t5jax` command (t5jax.hugepages) when
the checkout has it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

WORKER = r"""
import json, os, sys
sys.path.insert(0, os.environ["AB_CHECKOUT"])
import jax
from t5jax.benchmark import TrainStepRunner
from t5jax.config import get_config
args = json.loads(os.environ["AB_ARGS"])
config = get_config(args["preset"], dtype=args["dtype"], dropout_rate=0.0)
runner = TrainStepRunner(config, args["batch"], args["input_len"], args["target_len"])
print(json.dumps({"ready": True, "backend": jax.default_backend()}), flush=True)
for line in sys.stdin:
  if line.strip() != "block":
    break
  print(json.dumps({"step_time": runner.block(args["steps"]), "loss": runner.loss}), flush=True)
"""


def _side(spec: str):
  name, _, rest = spec.partition("=")
  checkout, *settings = rest.split(":")
  env = dict(s.split("=", 1) for s in settings)
  return name, os.path.abspath(checkout), env


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--side", action="append", required=True,
                      help="NAME=CHECKOUT[:VAR=VALUE...]; the first is the reference")
  parser.add_argument("--preset", default="t5.1.0-small")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--input_len", type=int, default=256)
  parser.add_argument("--target_len", type=int, default=64)
  parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
  parser.add_argument("--rounds", type=int, default=7, help="timed blocks per side")
  args = parser.parse_args()
  work = {k: getattr(args, k) for k in ("preset", "dtype", "batch", "input_len", "target_len",
                                        "steps")}
  workers = {}
  for spec in args.side:
    name, checkout, env = _side(spec)
    env = {**os.environ, **env, "AB_CHECKOUT": checkout, "AB_ARGS": json.dumps(work),
           "PYTHONPATH": checkout}
    if os.path.exists(os.path.join(checkout, "t5jax", "hugepages.py")):
      env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=checkout)
    ready = json.loads(proc.stdout.readline())  # warm-up finishes before the next starts
    print(f"{name}: {checkout} {' '.join(f'{k}={v}' for k, v in _side(spec)[2].items())} "
          f"ready ({ready['backend']})", flush=True)
    workers[name] = proc
  times = {name: [] for name in workers}
  for r in range(args.rounds):
    for name, proc in workers.items():
      proc.stdin.write("block\n")
      proc.stdin.flush()
      out = json.loads(proc.stdout.readline())
      times[name].append(out["step_time"])
    print(f"round {r + 1}: " + "  ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items()),
          flush=True)
  for proc in workers.values():
    proc.stdin.write("stop\n")
    proc.stdin.close()
    proc.wait()
  first = statistics.median(next(iter(times.values())))
  tokens = args.batch * (args.input_len + args.target_len)
  print(f"\n{args.preset} {args.dtype}, batch {args.batch} x {args.input_len}/{args.target_len}, "
        f"{args.rounds} interleaved blocks of {args.steps} steps per side")
  print("| side | median ms/step | best | tokens/s (median) | speed vs first |")
  print("|---|---:|---:|---:|---:|")
  for name, t in times.items():
    med = statistics.median(t)
    print(f"| {name} | {med * 1e3:.0f} | {min(t) * 1e3:.0f} | {tokens / med:.0f} | "
          f"{first / med:.3f}x |")


if __name__ == "__main__":
  main()
