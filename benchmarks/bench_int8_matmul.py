"""What reads int8 weights on XLA:CPU? A decode step's matmul (few rows, a wide weight) as
float32, bfloat16, int8 weights dequantised to float32 in the jit, and int8 x int8 with
dynamic per-row activation scales and int32 accumulation (what CTranslate2's int8 does).

    .venv/bin/python benchmarks/bench_int8_matmul.py [--repeats 30]

Medians of interleaved calls; weights are jit arguments (on device), so each call reads them
once. The dequantised form tells whether XLA fuses the int8 -> float conversion into the dot
(it would then read 1 byte per weight) or writes a float32 copy first (slower than float32).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def int8_dot(x, w_int8, w_scale):
  """x [rows, K] float @ (w_int8 [K, N] * w_scale [N]): x quantised per row to int8."""
  x_scale = jnp.max(jnp.abs(x), axis=-1, keepdims=True) / 127
  x_int8 = jnp.round(x / jnp.where(x_scale == 0, 1, x_scale)).astype(jnp.int8)
  acc = jax.lax.dot(x_int8, w_int8, preferred_element_type=jnp.int32)
  return acc.astype(jnp.float32) * x_scale * w_scale


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--repeats", type=int, default=30)
  args = p.parse_args(argv)
  fns = {
      "float32": jax.jit(lambda x, w, s: x @ w),
      "bfloat16": jax.jit(lambda x, w, s: jnp.dot(x.astype(jnp.bfloat16), w,
                                                  preferred_element_type=jnp.float32)),
      "int8 dequantised": jax.jit(lambda x, w, s: (x @ w.astype(jnp.float32)) * s),
      "int8 x int8": jax.jit(int8_dot),
  }
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}")
  print("| rows x K x N | " + " | ".join(f"{k} ms" for k in fns) + " | int8 x int8 max rel. error |")
  print("|---|" + "---:|" * (len(fns) + 1))
  rng = np.random.default_rng(0)
  for rows, k, n in ((4, 512, 2048), (4, 512, 32128), (8, 1024, 8192), (32, 768, 3072)):
    x = jnp.asarray(rng.standard_normal((rows, k)), jnp.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    scale = np.abs(w).max(0) / 127
    w_int8 = jnp.asarray(np.round(w / scale).astype(np.int8))
    inputs = {"float32": jnp.asarray(w), "bfloat16": jnp.asarray(w, jnp.bfloat16),
              "int8 dequantised": w_int8, "int8 x int8": w_int8}
    s = jnp.asarray(scale)
    for name, fn in fns.items():
      jax.block_until_ready(fn(x, inputs[name], s))
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
      for name, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, inputs[name], s))
        times[name].append(time.perf_counter() - start)
    ref = np.asarray(x @ jnp.asarray(w))
    err = np.abs(np.asarray(fns["int8 x int8"](x, w_int8, s)) - ref).max() / np.abs(ref).max()
    cells = [f"{statistics.median(t) * 1e3:.2f}" for t in times.values()]
    print(f"| {rows} x {k} x {n} | " + " | ".join(cells) + f" | {err:.4f} |")


if __name__ == "__main__":
  main()
