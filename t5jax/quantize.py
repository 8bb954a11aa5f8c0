"""int8 weights for decoding: per-output-channel weight scales, int8 x int8 matmuls.

    prepared = decoding.prepare_params(params, config, quantize="int8")
    decode(prepared, config, tokens, cfg)

`quantize_params` replaces every matmul weight (attention query/key/value/out, the MLP
kernels, the untied logits kernel, and the token embedding) by an `Int8Weight`: int8 values
and a float32 scale per output channel (max |w| / 127 over the contracted axes). The layers'
matmuls (`ops.einsum` and the functions built on it) see an `Int8Weight` and then quantise
their activations too, per row with a dynamic scale (max |x| / 127 over the contracted
axes), run an int8 x int8 dot accumulated in int32, and rescale the result to float32 by the
two scales. Norm scales, the relative position biases, the KV cache and everything between
the matmuls stay in the compute dtype.

Why activations are quantised as well: on XLA:CPU an int8 weight converted to float inside
the jit is written out as a float copy before the dot, which reads more bytes than float32
(benchmarks/bench_int8_matmul.py: up to 3.8x slower), while the int8 x int8 dot reads the
int8 weight directly (1.6-3.4x faster than float32 at decode shapes). This is also how
CTranslate2's int8 runs. GPUs and TPUs run int8 dots natively.

The embedding is quantised per vocabulary row: a lookup gathers int8 rows and multiplies by
their scales; tied logits are the embedding's matmul with the same per-row scales.
TF-free: jax, flax and numpy only.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp

from t5jax.errors import UsageError

QUANTIZE_MODES = ("int8",)

# name of a weight -> the axes its matmul contracts (the others are output channels).
_CONTRACTED = {"query": (0,), "key": (0,), "value": (0,), "out": (0, 1), "wi": (0,),
               "wi_0": (0,), "wi_1": (0,), "wo": (0,), "logits_dense": (0,),
               "embedding": (1,)}


@flax.struct.dataclass
class Int8Weight:
  """A matmul weight as int8 `values` (the weight's shape) times float32 `scale` (the
  weight's output axes: the shape without the contracted axes, in order)."""

  values: jax.Array
  scale: jax.Array
  contracted: tuple = flax.struct.field(pytree_node=False)

  @property
  def shape(self):
    return self.values.shape


def quantize_weight(w, contracted: tuple) -> Int8Weight:
  w = jnp.asarray(w, jnp.float32)
  scale = jnp.max(jnp.abs(w), axis=contracted, keepdims=True) / 127.0
  scale = jnp.where(scale == 0, 1.0, scale)
  values = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
  return Int8Weight(values, jnp.squeeze(scale, contracted), tuple(contracted))


def dequantize(w: Int8Weight) -> jax.Array:
  """The float32 weight an Int8Weight stands for (tests, error measurements)."""
  return w.values.astype(jnp.float32) * jnp.expand_dims(w.scale, w.contracted)


def quantize_params(params, mode: str = "int8"):
  """Per-layer params with every matmul weight an `Int8Weight` (see the module doc)."""
  if mode not in QUANTIZE_MODES:
    raise UsageError(f"quantize={mode!r}: choose one of {', '.join(QUANTIZE_MODES)} (or None "
                     "for the weights as they are).")

  def convert(path, leaf):
    name = getattr(path[-1], "key", None)
    if name in _CONTRACTED and getattr(leaf, "ndim", 0) >= 2:
      return quantize_weight(leaf, _CONTRACTED[name])
    return leaf

  params = flax.core.unfreeze(flax.linen.meta.unbox(params))
  if "layers" in params.get("encoder", {}) or "layers" in params.get("decoder", {}):
    raise UsageError("quantize='int8' needs per-layer params: unscan them first "
                     "(t5jax.model.unscan_params).")
  return jax.tree_util.tree_map_with_path(convert, params)


def _quantize_rows(x, axes: tuple):
  """x as int8 with a float32 scale per row (max |x| / 127 over `axes`, kept as size 1)."""
  x = x.astype(jnp.float32)
  scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True) / 127.0
  scale = jnp.where(scale == 0, 1.0, scale)
  return jnp.clip(jnp.round(x / scale), -127, 127).astype(jnp.int8), scale


def einsum(spec: str, x, w: Int8Weight, out_dtype):
  """jnp.einsum(spec, x, w) for an Int8Weight `w`: int8 x int8 in int32, then rescaled.

  `spec` has no ellipsis; its output is x's kept axes, then w's output axes in w's order
  (true of every weight matmul in t5jax.layers), so both scales broadcast against it.
  """
  inputs, output = spec.split("->")
  x_axes, w_axes = inputs.split(",")
  contracted = tuple(i for i, a in enumerate(x_axes) if a in w_axes and a not in output)
  x_int8, x_scale = _quantize_rows(x, contracted)
  acc = jnp.einsum(spec, x_int8, w.values, preferred_element_type=jnp.int32)
  # x's kept axes lead the output in x's order (every spec here): its scale broadcasts
  # once the contracted axes are dropped and w's output axes added as size 1.
  kept = "".join(a for a in x_axes if a in output)
  assert output.startswith(kept), spec
  x_scale = jnp.squeeze(x_scale, contracted)
  x_scale = x_scale.reshape(x_scale.shape + (1,) * (len(output) - len(kept)))
  return (acc.astype(jnp.float32) * x_scale * w.scale).astype(out_dtype)


def take(w: Int8Weight, ids, dtype):
  """Embedding rows of an Int8Weight quantised per row (scale per vocabulary id)."""
  rows = jnp.take(w.values, ids, axis=0).astype(jnp.float32)
  return (rows * jnp.take(w.scale, ids, axis=0)[..., None]).astype(dtype)
