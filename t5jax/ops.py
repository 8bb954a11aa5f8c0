"""The backend room: the model's primitives, and the one place that picks a path for them.

    y = ops.matmul(x, kernel, dtype)          # layers call these, never a backend
    logits = ops.attend(x, embedding, dtype)
    tx = ops.adafactor(schedule, ...)          # optim asks here which Adafactor

Each function is written first as the standard path: plain jnp/lax, what GPUs and
TPUs run, what a T5X reader expects. Two things can take a call elsewhere:

- int8 decoding weights (`t5jax.quantize.Int8Weight`, `t5jax infer --quantize`):
  int8 x int8 matmuls;
- the XLA-CPU switch (`T5JAX_CPU_KERNELS`, `t5jax.xla_cpu`): the same function
  written the way XLA-CPU runs fastest. On a GPU or TPU backend it is off, so the
  accelerator program is the standard path's, op for op.

`layers.py`, `model.py`, `decoding.py` and `optim.py` import this module and
neither `xla_cpu` nor the switch: a new backend trick lands here and in its own
module, and what the accelerator computes can be read in this file alone.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from t5jax import quantize, xla_cpu
from t5jax.quantize import Int8Weight

Array = jax.Array
# T5Config.dot_precision -> the precision every dot_general of the model is asked for.
PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "high": jax.lax.Precision.HIGH,
              "default": jax.lax.Precision.DEFAULT}
# The environment variable of the CPU path (for messages).
CPU_SWITCH = xla_cpu.ENV


def cpu_path() -> bool:
  """Whether this trace takes the XLA-CPU path (read while tracing)."""
  return xla_cpu.enabled()


def describe() -> str:
  """One line for logs: which path the primitives take."""
  return xla_cpu.describe()


# ----------------------------------------------------------------------------
# Matmuls. Every dot takes a T5Config.dot_precision ('default', 'high', 'highest').

def einsum(spec: str, a: Array, b: Array, dtype, out_dtype=None,
           precision: str = "default") -> Array:
  """jnp.einsum of `a` and `b` cast to `dtype`, the result in `out_dtype` (default `dtype`).

  A float32 result (attention scores, logits) is asked of the dot itself with
  `preferred_element_type`; a bfloat16 one is the plain bfloat16 dot, which
  GPUs and TPUs accumulate in float32. Autodiff then gives the backward dots
  bfloat16 cotangents, and `save_dots` remat sees every dot. `precision` is the
  dot's own, so its backward dots inherit it: 'highest' keeps a float32 model
  float32 where XLA:GPU would run TF32.
  """
  if isinstance(b, Int8Weight):
    return quantize.einsum(spec, a, b, dtype if out_dtype is None else out_dtype)
  if cpu_path():
    return xla_cpu.einsum(spec, a, b, dtype, out_dtype, PRECISIONS[precision])
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  preferred = jnp.float32 if out_dtype == jnp.float32 else dtype
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=preferred,
                    precision=PRECISIONS[precision]).astype(out_dtype)


def matmul(x: Array, kernel: Array, dtype, out_dtype=None, precision: str = "default") -> Array:
  """x [..., K] @ kernel [K, N] in `dtype` (see `einsum`)."""
  if isinstance(kernel, Int8Weight):
    rows = quantize.einsum("mk,kn->mn", x.reshape(-1, x.shape[-1]), kernel,
                           dtype if out_dtype is None else out_dtype)
    return rows.reshape(*x.shape[:-1], kernel.shape[-1])
  if cpu_path():
    return xla_cpu.matmul(x, kernel, dtype, out_dtype, PRECISIONS[precision])
  return einsum("...k,kn->...n", x, kernel, dtype, out_dtype, precision)


def project_to_heads(x: Array, kernel: Array, dtype, precision: str = "default") -> Array:
  """[B, L, E] x [E, H, D] -> [B, L, H, D]."""
  if cpu_path() and not isinstance(kernel, Int8Weight):
    return xla_cpu.project_to_heads(x, kernel, dtype, PRECISIONS[precision])
  return einsum("ble,ehd->blhd", x, kernel, dtype, precision=precision)


def project_from_heads(x: Array, kernel: Array, dtype, precision: str = "default") -> Array:
  """[B, L, H, D] x [H, D, E] -> [B, L, E]."""
  if cpu_path() and not isinstance(kernel, Int8Weight):
    return xla_cpu.project_from_heads(x, kernel, dtype, PRECISIONS[precision])
  return einsum("blhd,hde->ble", x, kernel, dtype, precision=precision)


def cast_weight(w: Array, dtype) -> Array:
  """A weight in `dtype` (an int8 weight stays int8: its matmuls take it as it is)."""
  return w if isinstance(w, Int8Weight) else w.astype(dtype)


def take(embedding: Array, ids: Array, dtype) -> Array:
  """embedding[ids] in `dtype` (an embedding lookup)."""
  if isinstance(embedding, Int8Weight):
    return quantize.take(embedding, ids, dtype)
  return jnp.take(embedding, ids, axis=0).astype(dtype)


def attend(x: Array, embedding: Array, dtype, precision: str = "default") -> Array:
  """Tied logits: x [B, L, D] against embedding [V, D] -> [B, L, V] in float32."""
  if cpu_path() and not isinstance(embedding, Int8Weight):
    return xla_cpu.attend(x, embedding, dtype, PRECISIONS[precision])
  return einsum("bld,vd->blv", x, embedding, dtype, jnp.float32, precision)


# ----------------------------------------------------------------------------
# Attention.

def position_bias(table: Array, one_hot: Array, precision: str = "default") -> Array:
  """table [H, buckets] looked up by one_hot [Q, K, buckets] -> [H, Q, K].

  A one-hot matmul (as T5X): cheaper than a gather on accelerators, and it shards
  along heads."""
  if cpu_path():
    return xla_cpu.position_bias(table, one_hot, PRECISIONS[precision])
  return jnp.einsum("hb,qkb->hqk", table, one_hot, precision=PRECISIONS[precision])


def add_shared_bias(scores: Array, bias: Array) -> Array:
  """scores [B, H, Q, K] + bias [1, H, Q, K]: the position bias shared by the batch."""
  if cpu_path():
    return xla_cpu.add_shared_bias(scores, bias)
  return scores + bias


def fused_attention_applies(dtype, dropout_active: bool) -> bool:
  """Whether attention goes through `jax.nn.dot_product_attention` (cuDNN's fused
  kernel on GPUs that have it): 16-bit activations, no attention dropout, and not
  the CPU path (where XLA's einsum-softmax-einsum with the CPU matmuls is faster)."""
  return not cpu_path() and jnp.dtype(dtype).itemsize == 2 and not dropout_active


@functools.lru_cache(maxsize=None)
def remat_policy(name: str):
  """`full`: save nothing inside a layer. `save_dots`: save every matmul output, the
  dots jax sees plus the CPU path's bfloat16 matmuls (a custom VJP, which a
  policy cannot look into, so they are saved by name)."""
  policies = jax.checkpoint_policies
  return {"full": None,
          "save_dots": policies.save_from_both_policies(
              policies.checkpoint_dots, policies.save_only_these_names(xla_cpu.DOT_NAME))}[name]


# ----------------------------------------------------------------------------
# Decoding.

def argmax(x: Array) -> Array:
  """jnp.argmax(x, -1): the first index of the largest value."""
  return xla_cpu.first_argmax(x) if cpu_path() else jnp.argmax(x, axis=-1)


def decode_layout(dtype, scanned: bool) -> bool:
  """Whether decoding stores matmul weights [out, in] (`to_decode_layout`): on the CPU
  path's bfloat16 kernels, for an unscanned 16-bit model. Elsewhere the params as they are."""
  return xla_cpu.bf16_kernels() and jnp.dtype(dtype) != jnp.float32 and not scanned


def to_decode_layout(params, dtype):
  """The matmul weights cast to `dtype` once and stored [out, in] (see `decode_layout`)."""
  return xla_cpu.store_out_in(params, dtype)


def check_decode_layout(out_in: bool) -> None:
  """Raises if params prepared in the [out, in] layout meet a trace off the CPU path."""
  if out_in and not cpu_path():
    raise ValueError("these DecodeParams hold the XLA-CPU [out, in] weight layout, but the "
                     f"CPU kernels are off ({CPU_SWITCH}): prepare them again.")


@contextlib.contextmanager
def decode_layout_scope(tree, shapes):
  """Within the block the CPU matmuls read [out, in] weights; yields the tree with the
  logical shapes that the model's modules expect (`shapes`: the params' shapes)."""
  with xla_cpu.kernels_stored_out_in():
    yield xla_cpu.restore_out_in(tree, shapes)


# ----------------------------------------------------------------------------
# The optimizer.

def adafactor(learning_rate: float | Callable, *, decay_rate: float,
              min_dim_size_to_factor: int, epsilon1: float, clipping_threshold: float | None,
              multiply_by_parameter_scale: bool,
              momentum: float | None = None) -> optax.GradientTransformation:
  """optax.adafactor (factored); on the CPU path without momentum the same update fused
  per tensor (`xla_cpu.adafactor`, the same state tree)."""
  if momentum is None and cpu_path():
    return xla_cpu.adafactor(
        learning_rate, decay_rate=decay_rate, min_dim_size_to_factor=min_dim_size_to_factor,
        epsilon1=epsilon1, clipping_threshold=clipping_threshold,
        multiply_by_parameter_scale=multiply_by_parameter_scale)
  return optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=momentum, eps=epsilon1, factored=True)
