"""How large a T5 and batch fit one H100 with Adafactor? Exact state bytes plus
an activation estimate calibrated against XLA's own buffer assignment.

    .venv/bin/python benchmarks/memory_estimate.py             # calibrate on CPU (5-10 min), table
    .venv/bin/python benchmarks/memory_estimate.py --no_calibrate   # exact state bytes only

What is exact and what is estimated:
- Parameters, Adafactor state and gradients: exact, from jax.eval_shape of
  the model's abstract parameters and of t5jax.optim's optimizer init (no
  memory is allocated). Parameters and gradients are float32 whatever the
  activation dtype.
- Activations (the tensors the backward pass needs, bf16 training): a
  linear model in shape features per sequence (residual stream, attention
  projections, FFN hidden, attention scores, logits; for remat "full" the
  saved layer inputs plus one layer recomputed at a time) whose bytes-per-
  element coefficients are fitted to XLA's memory_analysis() of the real
  jitted train step (t5jax.train_step, the trainer's donated step),
  compiled on CPU for narrow 2-4 layer models at two batch sizes each (the
  difference is the per-sequence cost). One held-out point (T5.1.1-small
  widths and vocabulary, 2 layers, 256/64) checks the fit.
- The fixed part of the step: XLA's peak at batch -> 0 minus parameters and
  optimizer state, fitted as bytes per parameter (gradients, the bf16 copies
  of the weights, Adafactor's update temporaries).

Limits (also in benchmarks/RESULTS.md): XLA:CPU is not XLA:GPU. Its buffer
assignment is the same algorithm, but the CPU backend rewrites bf16 ops to
float32 (extra converts and buffers), so the CPU-calibrated activation bytes
are an upper bound for a GPU; the GPU's allocator also fragments, hence a
margin (--margin, 10%) on the 78 GiB. Check on a GPU with bench_train.py's
peak memory column (device peak_bytes_in_use).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5jax import losses, optim, partitioning, train_step as ts
from t5jax.config import PRESETS, get_config
from t5jax.model import param_shapes

GIB = 2 ** 30
H100_USABLE_GIB = 78.0
# Presets of the table (tiny is for tests).
TABLE_PRESETS = [n for n in PRESETS if n != "tiny"]
# XLA flags that only lower LLVM effort: buffer assignment (what memory_analysis
# reports) is unchanged and compiles are ~3x faster on CPU.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


# ----------------------------------------------------------------------------- exact state

def _tree_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def state_bytes(config, optimizer: optim.OptimizerConfig = optim.OptimizerConfig()) -> dict:
  """Exact bytes of float32 params, optimizer state and gradients (nothing allocated)."""
  params = param_shapes(config)
  opt_state = jax.eval_shape(optim.make_optimizer(optimizer).init, params)
  p = _tree_bytes(params)
  num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
  return {"num_params": num_params, "params": p, "opt_state": _tree_bytes(opt_state),
          "grads": p, "total": 2 * p + _tree_bytes(opt_state)}


# ----------------------------------------------------------------------------- XLA's numbers

def compiled_memory(config, batch_size: int, input_len: int, target_len: int) -> dict:
  """memory_analysis() of the trainer's jitted, donated train step (compiled, not run).

  peak = arguments + outputs - aliased (donated state) + temporaries.
  """
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  rule_set = partitioning.rules("1d")
  tx = optim.make_optimizer(optim.OptimizerConfig())
  abstract, shardings = ts.state_shardings(mesh, config, rule_set, tx)
  step = ts.make_train_step(config, tx, losses.LossConfig())
  jitted = ts.jit_steps(mesh, rule_set, shardings, step, compiler_options=FAST_COMPILE)
  ids = lambda n: jax.ShapeDtypeStruct((batch_size, n), jnp.int32)  # noqa: E731
  batch = {"encoder_input_tokens": ids(input_len), "decoder_input_tokens": ids(target_len),
           "decoder_target_tokens": ids(target_len),
           "decoder_loss_weights": jax.ShapeDtypeStruct((batch_size, target_len), jnp.float32)}
  with partitioning.activate(mesh, rule_set):
    m = jitted.train.lower(abstract, batch, jax.random.PRNGKey(0)).compile().memory_analysis()
  out = {"temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes,
         "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


# ----------------------------------------------------------------------------- activation model

NONE_FEATURES = ("residual", "projections", "ffn", "scores", "logits")
FULL_FEATURES = ("layer_inputs", "one_residual", "one_projections", "one_ffn", "one_scores",
                 "logits")


def _layer_elements(config, input_len: int, target_len: int) -> tuple[dict, dict]:
  """Elements per sequence of each kind of tensor in one encoder / decoder layer."""
  le, ld, d = input_len, target_len, config.d_model
  i, h = config.num_heads * config.d_kv, config.num_heads
  g = 2 if config.is_gated else 1
  enc = {"residual": 2 * le * d, "projections": 4 * le * i,
         "ffn": le * config.d_ff * (g + 1), "scores": h * le * le}
  dec = {"residual": 3 * ld * d, "projections": (6 * ld + 2 * le) * i,
         "ffn": ld * config.d_ff * (g + 1), "scores": h * (ld * ld + ld * le)}
  return enc, dec


def features(config, input_len: int, target_len: int, remat: str) -> np.ndarray:
  """Shape features (elements per sequence) whose weighted sum is the activation bytes."""
  enc, dec = _layer_elements(config, input_len, target_len)
  ne, nd = config.num_layers, config.decoder_layers
  logits = target_len * config.vocab_size
  if remat == "none":  # every layer's tensors live until its backward
    return np.array([ne * enc[k] + nd * dec[k] for k in NONE_FEATURES[:-1]] + [logits], float)
  # full: each layer keeps its input (and the decoder the encoder output);
  # the backward pass recomputes one layer at a time.
  inputs = (ne * input_len + nd * target_len + input_len) * config.d_model
  return np.array([inputs] + [max(enc[k], dec[k]) for k in NONE_FEATURES[:-1]] + [logits],
                  float)


# Calibration: narrow models, each varying one shape from a base, so every
# feature is pinned down; bf16 as in GPU training. (name, overrides, Le, Ld)
CALIBRATION = [
    ("base", {}, 128, 32),
    ("Le 256", {}, 256, 32),
    ("Ld 96", {}, 128, 96),
    ("d_model 128", {"d_model": 128}, 128, 32),
    ("d_ff 512", {"d_ff": 512}, 128, 32),
    ("heads 8", {"num_heads": 8}, 128, 32),
    ("vocab 8192", {"vocab_size": 8192}, 128, 32),
    ("4 layers", {"num_layers": 4}, 128, 32),
]
CALIBRATION_BASE = dict(vocab_size=2048, dtype="bfloat16", dropout_rate=0.0)
# Held out of the fit: T5.1.1-small's widths and vocabulary, 2 layers, 256/64.
HELD_OUT = ("t5.1.1-small, 2 layers", "t5.1.1-small", {"num_layers": 2}, 256, 64)
BATCHES = (2, 4)


def measure_point(config, input_len: int, target_len: int) -> dict:
  """Per-sequence and fixed peak bytes from two batch sizes (XLA, compiled on CPU)."""
  b0, b1 = BATCHES
  m0 = compiled_memory(config, b0, input_len, target_len)
  m1 = compiled_memory(config, b1, input_len, target_len)
  per_seq = (m1["peak"] - m0["peak"]) / (b1 - b0)
  return {"per_seq": per_seq, "fixed": m0["peak"] - b0 * per_seq, "peaks": (m0["peak"], m1["peak"])}


def fit(rows: list[tuple[np.ndarray, float]]) -> np.ndarray:
  """Non-negative least squares, relative error (every point weighs the same)."""
  from scipy.optimize import nnls
  a = np.array([f / y for f, y in rows])
  return nnls(a, np.ones(len(rows)))[0]


def calibrate(log=print, cache_file: str | None = None) -> dict:
  """Fits the activation coefficients; cache_file (JSON) keeps measured points across runs."""
  start = time.perf_counter()
  cache = {}
  if cache_file and os.path.exists(cache_file):
    with open(cache_file) as f:
      cache = json.load(f)

  def cached(key, measure):
    if key not in cache:
      cache[key] = measure()
      if cache_file:
        with open(cache_file, "w") as f:
          json.dump(cache, f)
    return cache[key]

  result = {"points": [], "coef": {}, "fixed_per_param": None}
  fixed_rows = []
  for remat in ("none", "full"):
    rows = []
    for name, over, le, ld in CALIBRATION:
      cfg = get_config("tiny", **{**CALIBRATION_BASE, **over}, remat_policy=remat)
      m = cached(f"{remat} {name}", lambda: measure_point(cfg, le, ld))
      rows.append((features(cfg, le, ld, remat), m["per_seq"]))
      state = state_bytes(cfg)
      # Fixed part beyond params + optimizer state (both arguments), per parameter.
      fixed_rows.append((m["fixed"] - state["params"] - state["opt_state"]) / state["num_params"])
      result["points"].append(dict(name=name, remat=remat, le=le, ld=ld, **m))
      log(f"  calibrate {remat:4s} {name:12s} {le}/{ld}: {m['per_seq'] / 2**20:7.3f} MiB/seq, "
          f"fixed {m['fixed'] / 2**20:7.1f} MiB  ({time.perf_counter() - start:.0f} s)")
    coef = fit(rows)
    result["coef"][remat] = coef
    pred = [float(f @ coef) for f, _ in rows]
    result[f"fit_error_{remat}"] = max(abs(p / y - 1) for p, (_, y) in zip(pred, rows))
  result["fixed_per_param"] = float(np.median(fixed_rows))
  name, preset, over, le, ld = HELD_OUT
  result["held_out"] = []
  for remat in ("none", "full"):
    cfg = get_config(preset, **over, dtype="bfloat16", dropout_rate=0.0, remat_policy=remat)
    m = cached(f"{remat} {name}", lambda: measure_point(cfg, le, ld))
    pred = float(features(cfg, le, ld, remat) @ result["coef"][remat])
    result["held_out"].append(dict(name=name, remat=remat, le=le, ld=ld, measured=m["per_seq"],
                                   predicted=pred))
    log(f"  held out  {remat:4s} {name} {le}/{ld}: XLA {m['per_seq'] / 2**20:.2f} MiB/seq, "
        f"fit {pred / 2**20:.2f} MiB/seq ({100 * (pred / m['per_seq'] - 1):+.1f}%)")
  result["seconds"] = time.perf_counter() - start
  return result


# ----------------------------------------------------------------------------- the table

def activation_bytes(config, input_len: int, target_len: int, remat: str, coef) -> float:
  return float(features(config, input_len, target_len, remat) @ coef[remat])


def largest_batch(fixed: float, per_seq: float, budget: float) -> int:
  return max(0, int((budget - fixed) // per_seq))


def table(calibration: dict | None, input_len: int, target_len: int, budget_gib: float,
          margin: float, presets=TABLE_PRESETS) -> str:
  budget = budget_gib * (1 - margin) * GIB
  head = "| preset | params | param+opt+grad GiB |"
  sep = "|---|---:|---:|"
  if calibration:
    head += (" step fixed GiB | act GiB/seq (remat none) | act GiB/seq (remat full) "
             "| max batch (none) | max batch (full) |")
    sep += "---:|---:|---:|---:|---:|"
  lines = [head, sep]
  for name in presets:
    cfg = get_config(name, dtype="bfloat16")
    s = state_bytes(cfg)
    cells = [name, f"{s['num_params'] / 1e6:,.0f}M", f"{s['total'] / GIB:.2f}"]
    if calibration:
      fixed = s["params"] + s["opt_state"] + calibration["fixed_per_param"] * s["num_params"]
      acts = [activation_bytes(cfg, input_len, target_len, r, calibration["coef"])
              for r in ("none", "full")]
      cells += [f"{fixed / GIB:.2f}"] + [f"{a / GIB:.3f}" for a in acts]
      for a in acts:
        b = largest_batch(fixed, a, budget)
        cells.append(str(b) if b else
                     f"does not fit (FSDP over >= {math.ceil(fixed / (budget - a))} devices)")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--no_calibrate", action="store_true", help="exact state bytes only")
  p.add_argument("--inputs", type=int, default=512)
  p.add_argument("--targets", type=int, default=114)
  p.add_argument("--budget_gib", type=float, default=H100_USABLE_GIB)
  p.add_argument("--margin", type=float, default=0.10,
                 help="fraction of the budget kept free for allocator fragmentation")
  p.add_argument("--cache", help="JSON file keeping XLA's measured points (reused if present)")
  p.add_argument("--presets", default=",".join(TABLE_PRESETS),
                 help="comma-separated presets of the table (default: all but tiny)")
  args = p.parse_args(argv)
  presets = args.presets.split(",")
  unknown = [n for n in presets if n not in PRESETS]
  if unknown:
    p.error(f"--presets: unknown {', '.join(unknown)}; known: {', '.join(TABLE_PRESETS)}")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}; Adafactor "
        f"(t5jax.optim defaults), bf16 activations, float32 params; "
        f"{args.inputs}/{args.targets}; budget {args.budget_gib:g} GiB - {args.margin:.0%}")
  calibration = None
  if not args.no_calibrate:
    print("Calibrating against XLA memory_analysis of the compiled train step:")
    calibration = calibrate(cache_file=args.cache)
    names = {"none": NONE_FEATURES, "full": FULL_FEATURES}
    for remat, coef in calibration["coef"].items():
      terms = ", ".join(f"{n} {c:.2f}" for n, c in zip(names[remat], coef))
      print(f"  remat {remat}: bytes per element: {terms}; worst fit error "
            f"{100 * calibration[f'fit_error_{remat}']:.1f}%")
    print(f"  fixed part beyond params + optimizer state: "
          f"{calibration['fixed_per_param']:.2f} bytes/param; "
          f"calibration took {calibration['seconds']:.0f} s")
  print()
  print(table(calibration, args.inputs, args.targets, args.budget_gib, args.margin, presets))
  return 0


if __name__ == "__main__":
  sys.exit(main())
