"""Time to the first step: compile time and program size of the init and the train step.

    .venv/bin/python benchmarks/bench_compile.py                 # the table of RESULTS.md
    .venv/bin/python benchmarks/bench_compile.py --presets t5.1.1-base --layouts scanned
        [--batch 8] [--input_len 128] [--target_len 32] [--dtype bfloat16] [--no_xxl]
        [--no_cache_row] [--limit 600] [--results PATH | --no_write]

For each preset and layer layout (unrolled: per-layer parameters; scanned: one nn.scan
per stack, the presets' default), in a fresh process with the XLA-CPU kernels off (the
path GPUs and TPUs run) and the persistent compile cache off, on JAX_PLATFORMS (cpu
unless set; the GPU check runs it on the GPU):
  init   the jitted fresh init of a TrainState (`trainer.init_state_fn`: parameters and
         Adafactor's state), lowered and compiled
  step   the jitted train step of `jit_steps` (batch B x inputs/targets), lowered from
         abstract shapes and compiled
with seconds to lower (trace + StableHLO) and to compile (XLA), and the lines of the
optimized HLO module (`compiled.as_text()`), which is what grows with depth when layers
are unrolled. Then t5.1.1-xxl, lowered and compiled with abstract shapes only over 8
simulated devices with the FSDP rules (nothing is allocated), and one row of the
persistent cache: t5.1.1-base's init and step compiled into an empty cache directory,
then again in a new process (loaded).

Each row runs in its own process under --limit seconds, so a row that hangs or runs out
of memory loses that row only. Compile times depend on the CPU and on what else runs:
the machine, its load and the XLA flags are printed with the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _row(args) -> dict:
  """One measurement in this process (called with --row): prints a JSON line."""
  import jax
  import jax.numpy as jnp

  from t5jax import compilation, losses, optim, partitioning, train_step as steps
  from t5jax.config import get_config
  from t5jax.trainer import init_state_fn
  compilation.enable_cache()  # honours T5JAX_COMPILE_CACHE (0 for the cold rows)

  config = get_config(args.preset, dtype=args.dtype, scan_layers=args.layout == "scanned")
  mesh = partitioning.make_mesh(partitioning.MeshConfig(rules=args.rules))
  rule_set = partitioning.rules(args.rules)
  tx = optim.make_optimizer(optim.OptimizerConfig())
  abstract, state_sh = steps.state_shardings(mesh, config, rule_set, tx)
  out = {"preset": args.preset, "layout": args.layout, "devices": jax.device_count(),
         "rules": args.rules}

  def measure(name, jitted, *abstract_args):
    start = time.perf_counter()
    with partitioning.activate(mesh, rule_set):
      lowered = jitted.lower(*abstract_args)
    lowered_at = time.perf_counter()
    with compilation.watch() as w:
      compiled = lowered.compile()
    done = time.perf_counter()
    out[name] = {"lower_s": lowered_at - start, "compile_s": done - lowered_at,
                 "hlo_lines": len(compiled.as_text().splitlines()),
                 "cache_hits": w.hits, "cache_misses": w.misses}
    print(json.dumps({"partial": out}), flush=True)  # a later hang keeps this part

  if "init" in args.parts:
    measure("init", init_state_fn(config, tx, mesh, state_sh),
            jax.ShapeDtypeStruct((), jnp.uint32))
  if "step" in args.parts:
    step_fn = steps.make_train_step(config, tx, losses.LossConfig(),
                                    optim.make_schedule(optim.OptimizerConfig()))
    compiled = steps.jit_steps(mesh, rule_set, state_sh, step_fn)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         abstract, state_sh)
    lengths = {"encoder_input_tokens": args.input_len, "decoder_input_tokens": args.target_len,
               "decoder_target_tokens": args.target_len, "decoder_loss_weights": args.target_len}
    batch = {k: jax.ShapeDtypeStruct((args.batch, n), jnp.int32) for k, n in lengths.items()}
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    measure("step", compiled.train, state, batch, rng)
  return out


def _init_sizes(args) -> None:
  """Optimized HLO lines of every preset's init, in its own layout (called with
  --init_sizes): one JSON line per preset."""
  import jax
  import jax.numpy as jnp

  from t5jax import optim, partitioning, train_step as steps
  from t5jax.config import PRESETS
  from t5jax.trainer import init_state_fn
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  tx = optim.make_optimizer(optim.OptimizerConfig())
  for name, preset in PRESETS.items():
    config = preset.replace(dtype=args.dtype)
    _, state_sh = steps.state_shardings(mesh, config, partitioning.rules("1d"), tx)
    compiled = init_state_fn(config, tx, mesh, state_sh).lower(
        jax.ShapeDtypeStruct((), jnp.uint32)).compile()
    print(json.dumps({"preset": name, "scanned": config.scan_layers,
                      "hlo_lines": len(compiled.as_text().splitlines())}), flush=True)


def _run_row(preset, layout, args, *, devices=1, rules="1d", cache=None, parts="init,step"):
  """Runs one row in a child process under args.limit seconds; returns its dict (with
  'error' on a failure or a timeout, and what it measured before)."""
  env = dict(os.environ, T5JAX_CPU_KERNELS="off", T5JAX_COMPILE_CACHE=cache or "0",
             PYTHONPATH=ROOT, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS") or "cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["XLA_FLAGS"] = " ".join(
      [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
      + ([f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []))
  cmd = [sys.executable, os.path.abspath(__file__), "--row", "--preset", preset, "--layout",
         layout, "--rules", rules, "--parts", parts, "--batch", str(args.batch), "--input_len",
         str(args.input_len), "--target_len", str(args.target_len), "--dtype", args.dtype]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.limit)
    lines, error = proc.stdout.splitlines(), None if proc.returncode == 0 else (
        f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}")
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    lines, error = out.splitlines(), f"over the {args.limit} s limit"
  row = {"preset": preset, "layout": layout}
  for line in lines:
    if line.startswith("{"):
      data = json.loads(line)
      row = data.get("partial", data)
  row["wall_s"] = time.perf_counter() - start
  if error:
    row["error"] = error
  return row


def _all_init_sizes(args) -> str:
  """A paragraph: every preset's init program size (one child process for all)."""
  env = dict(os.environ, T5JAX_CPU_KERNELS="off", T5JAX_COMPILE_CACHE="0", PYTHONPATH=ROOT,
             JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS") or "cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, os.path.abspath(__file__), "--init_sizes", "--dtype", args.dtype]
  try:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=args.limit).stdout
  except subprocess.TimeoutExpired as e:
    out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
  sizes = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  if not sizes:
    return ""
  cells = ", ".join(f"{s['preset']} {s['hlo_lines']:,}{'' if s['scanned'] else ' (per layer)'}"
                    for s in sizes)
  line = f"\nOptimized HLO lines of each preset's init (params + Adafactor state): {cells}.\n"
  print(line, flush=True)
  return line


def _cell(part: dict | None, key: str, fmt: str) -> str:
  return "-" if not part or key not in part else format(part[key], fmt)


def table(rows: list[dict]) -> str:
  lines = ["| preset | layers | devices / rules | init lower s | init compile s | "
           "init HLO lines | step lower s | step compile s | step HLO lines | "
           "init + step s | process wall s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    init, step = r.get("init"), r.get("step")
    total = sum(p["lower_s"] + p["compile_s"] for p in (init, step) if p)
    note = f" ({r['error']})" if "error" in r else ""
    cache = r.get("cache_note", "")
    lines.append(
        f"| {r['preset']}{cache} | {r['layout']}{note} | {r.get('devices', 1)} / "
        f"{r.get('rules', '1d')} | {_cell(init, 'lower_s', '.1f')} | "
        f"{_cell(init, 'compile_s', '.1f')} | {_cell(init, 'hlo_lines', ',')} | "
        f"{_cell(step, 'lower_s', '.1f')} | {_cell(step, 'compile_s', '.1f')} | "
        f"{_cell(step, 'hlo_lines', ',')} | {total:.1f} | {r['wall_s']:.0f} |")
  return "\n".join(lines)


def machine() -> str:
  import jax
  if jax.default_backend() != "cpu":
    return (f"{jax.devices()[0].device_kind} ({jax.default_backend()}), host of "
            f"{os.cpu_count()} cores; jax {jax.__version__}")
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  return (f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__}; load average at start "
          f"{load:.2f}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '') or '(none)'}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--presets", default="t5.1.1-small,t5.1.1-base,t5.1.1-xl")
  parser.add_argument("--layouts", default="unrolled,scanned")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_len", type=int, default=128)
  parser.add_argument("--target_len", type=int, default=32)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--limit", type=int, default=600, help="seconds per row")
  parser.add_argument("--no_xxl", action="store_true")
  parser.add_argument("--no_cache_row", action="store_true")
  parser.add_argument("--no_init_sizes", action="store_true",
                      help="skip the init program size of every preset")
  parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
  parser.add_argument("--no_write", action="store_true")
  # one row in this process (what the parent runs in its children)
  parser.add_argument("--row", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--preset", help=argparse.SUPPRESS)
  parser.add_argument("--layout", help=argparse.SUPPRESS)
  parser.add_argument("--rules", default="1d", help=argparse.SUPPRESS)
  parser.add_argument("--parts", default="init,step", help=argparse.SUPPRESS)
  parser.add_argument("--init_sizes", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.init_sizes:
    _init_sizes(args)
    return 0
  if args.row:
    print(json.dumps(_row(args)), flush=True)
    return 0

  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  header = machine()
  print(header, flush=True)
  rows = []

  def add(row):
    rows.append(row)
    print(table(rows[-1:]).splitlines()[-1], flush=True)

  for preset in args.presets.split(","):
    for layout in args.layouts.split(","):
      add(_run_row(preset, layout, args))
  if not args.no_xxl:
    add(_run_row("t5.1.1-xxl", "scanned", args, devices=8, rules="fsdp"))
  if not args.no_cache_row:
    with tempfile.TemporaryDirectory(prefix="t5jax_bench_cache_") as cache:
      for note in (" (cache empty)", " (cache warm)"):
        row = _run_row("t5.1.1-base", "scanned", args, cache=cache)
        row["cache_note"] = note
        add(row)

  sizes = "" if args.no_init_sizes else _all_init_sizes(args)
  text = (f"## {started}: time to the first step (`python benchmarks/bench_compile.py`)\n\n"
          f"Machine: {header}.\n\nInit and train step of each preset ({args.dtype}, batch "
          f"{args.batch}, {args.input_len}/{args.target_len}), lowered and compiled from "
          "abstract shapes in a fresh process each, XLA-CPU kernels off (the GPU/TPU path), "
          "compile cache off except in the two cache rows.\n\n" + table(rows) + "\n" + sizes)
  print("\n" + text)
  if not args.no_write:
    with open(args.results, "a") as f:
      f.write("\n" + text)
  return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
