"""T5 building blocks in Flax Linen: norm, relative position bias, attention, MLP.

Plain JAX/Flax, as T5X writes them. Every matmul, the position-bias lookup, the
embedding and the choice of fused attention go through `t5jax.ops`, the one module
that knows about backends (the XLA-CPU path, int8 decoding weights); this file
imports jax/flax/numpy, `t5jax.ops` and `t5jax.rng` (dropout bits, the kernels'
truncated normal). Every dot takes the model's `precision` (T5Config.dot_precision).
Every parameter carries logical axis names (`'embed'`, `'heads'`, `'kv'`, `'mlp'`,
`'vocab'`, `'relpos_buckets'`); `t5jax.partitioning` maps them to mesh axes.
Parameter names follow T5X, so a T5X checkpoint maps onto this tree by reshaping alone.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5jax import ops
from t5jax.rng import counter_bits, truncated_normal

Array = jax.Array
# Large negative instead of -inf: a fully masked row (a padding query) then gives a
# uniform softmax rather than NaNs, and its output is ignored by the loss anyway.
NEG_INF = -1e10



def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


# Std of a standard normal truncated to [-2, 2] (what variance scaling divides by).
TRUNCATED_STD = 0.87962566103423978


def dense_init(in_axis, out_axis, scale: float = 1.0):
  """T5X's kernel init: variance scaling on fan-in, truncated normal at +-2 std.

  nn.initializers.variance_scaling(scale, 'fan_in', 'truncated_normal', in_axis,
  out_axis) to rounding, its samples drawn by `t5jax.rng.truncated_normal` (half the
  init program of jax's: see there).
  """
  in_axes = (in_axis,) if isinstance(in_axis, int) else tuple(in_axis)
  out_axes = (out_axis,) if isinstance(out_axis, int) else tuple(out_axis)

  def init(key, shape, dtype=jnp.float32):
    axes = [a % len(shape) for a in in_axes + out_axes]
    receptive = int(np.prod([n for i, n in enumerate(shape) if i not in axes]))
    fan_in = int(np.prod([shape[a % len(shape)] for a in in_axes])) * receptive
    std = np.sqrt(scale / fan_in) / TRUNCATED_STD
    return truncated_normal(key, -2.0, 2.0, shape, dtype) * jnp.asarray(std, dtype)
  return init


class Dropout(nn.Module):
  """Inverted dropout from counter-hash random bits (rng collection 'dropout').

  Same distribution as nn.Dropout (keep iff bits >= rate * 2**32, exact to
  2**-32), and the same masks on every backend. Cheaper than nn.Dropout: it skips
  turning bits into uniform floats and draws the bits with `counter_bits` rather
  than 20-round threefry (on XLA-CPU mask generation was about a third of a
  T5-small training step).
  """

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    bits = counter_bits(self.make_rng("dropout"), x.shape)
    keep = bits >= jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


# ----------------------------------------------------------------------------
# Adapters (t5jax.peft): a LoRA pair or an IA3 vector beside one kernel. Only
# created for the kernels a `T5Config.adapter` targets, so without one no module
# changes. Logical axes: the kernel's own for its in/out dims, 'lora_rank' (never
# sharded) for the rank.

def lora_a_init(fan_in: int):
  """PEFT's init of lora_A, kaiming_uniform_(a=sqrt(5)) on [rank, fan_in]:
  uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def _lora_params(module, name, in_shape, out_shape, in_axes, out_axes, rank):
  a = _param(module, f"{name}_lora_a", lora_a_init(int(np.prod(in_shape))),
             (*in_shape, rank), (*in_axes, "lora_rank"))
  b = _param(module, f"{name}_lora_b", nn.initializers.zeros, (rank, *out_shape),
             ("lora_rank", *out_axes))
  return a, b


def adapt_output(module: nn.Module, name: str, x: Array, y: Array, in_shape, out_shape,
                 in_axes, out_axes) -> Array:
  """y = x @ kernel `name` (x [..., *in_shape], y [..., *out_shape]) with the
  module's adapter on that kernel: + scaling * (dropout(x) A) B for LoRA (PEFT's
  unmerged form: no kernel-sized weight or weight gradient), y * l for IA3. The
  module has fields `adapter` (AdapterConfig), `targets`, `dtype`, `precision`,
  `deterministic`.
  IA3 on 'wo' scales its input instead: see `adapt_input`."""
  adapter = module.adapter
  if name not in module.targets:
    return y
  if adapter.method == "ia3":
    scale = _param(module, f"{name}_ia3", nn.initializers.ones, tuple(out_shape), out_axes)
    return y * scale.astype(y.dtype)
  a, b = _lora_params(module, name, in_shape, out_shape, in_axes, out_axes, adapter.rank)
  x = Dropout(adapter.dropout, name=f"{name}_lora_dropout")(x, module.deterministic)
  lead, fan_in, fan_out = x.shape[:x.ndim - len(in_shape)], a.shape[:-1], b.shape[1:]
  low = ops.matmul(x.reshape(*lead, int(np.prod(fan_in))), a.reshape(-1, adapter.rank),
               module.dtype, precision=module.precision)
  delta = ops.matmul(low, b.reshape(adapter.rank, -1), module.dtype,
                 precision=module.precision).reshape(*lead, *fan_out)
  return y + delta * jnp.asarray(adapter.scaling, delta.dtype)


def adapt_input(module: nn.Module, name: str, x: Array, shape, axes) -> Array:
  """IA3 on the input of kernel `name` (PEFT's feedforward modules: T5's `wo`)."""
  if name not in module.targets or module.adapter.method != "ia3":
    return x
  scale = _param(module, f"{name}_ia3", nn.initializers.ones, tuple(shape), axes)
  return x * scale.astype(x.dtype)


def merged_kernel(module: nn.Module, name: str, kernel: Array, in_dims: int, axes) -> Array:
  """Attention kernel `name` with its adapter folded in (for incremental decoding,
  which has no dropout): W + scaling * A B, or W scaled along its output (IA3)."""
  adapter = module.adapter
  if name not in module.targets:
    return kernel
  in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
  in_axes, out_axes = axes[:in_dims], axes[in_dims:]
  if adapter.method == "ia3":
    scale = _param(module, f"{name}_ia3", nn.initializers.ones, tuple(out_shape), out_axes)
    return kernel * scale
  a, b = _lora_params(module, name, in_shape, out_shape, in_axes, out_axes, adapter.rank)
  delta = jnp.matmul(a.reshape(-1, adapter.rank), b.reshape(adapter.rank, -1),
                     precision=jax.lax.Precision.HIGHEST)  # weights: tiny, exact
  return kernel + adapter.scaling * delta.reshape(kernel.shape)


class RMSNorm(nn.Module):
  """T5's LayerNorm: scale only, no mean subtraction, variance in float32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    scale = _param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
    return (x * jax.lax.rsqrt(var + self.epsilon) * scale).astype(self.dtype)


def relative_position_bucket(relative_position, bidirectional: bool,
                             num_buckets: int, max_distance: int):
  """Maps key_pos - query_pos to a bucket id, as T5 (and HF's _relative_position_bucket).

  Small distances get their own bucket; larger ones share log-spaced buckets
  up to max_distance. Bidirectional buckets split the table by sign.
  """
  n = -jnp.asarray(relative_position, jnp.int32)  # query_pos - key_pos
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # float32 as in the reference implementations, so bucket edges agree exactly.
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  val_if_large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBias(nn.Module):
  """One learned [heads, buckets] table per stack, shared by all its layers."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  precision: str = "default"  # T5Config.dot_precision

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array) -> Array:
    """Positions are 1-D (offset-free: only differences matter). Returns [1, H, Q, K]."""
    table = _param(self, "rel_embedding",
                   nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                   (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
    buckets = relative_position_bucket(
        key_positions[None, :] - query_positions[:, None], self.bidirectional,
        self.num_buckets, self.max_distance)
    one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=jnp.float32)
    # table[:, buckets] as a one-hot matmul (as T5X): cheaper than a gather on
    # accelerators, and it shards along heads.
    return ops.position_bias(table, one_hot, self.precision)[None]


def fused_attention(query: Array, key: Array, value: Array, mask: Array | None,
                    bias: Array | None) -> Array:
  """softmax(q k^T + bias, masked) v through `jax.nn.dot_product_attention`: cuDNN's
  fused kernel on GPUs that have it, XLA's einsum-softmax-einsum elsewhere.

  [B, Q, H, D] x [B, K, H, D] -> [B, Q, H, D], with no 1/sqrt(d_kv) scaling (T5).
  The position bias and the mask fold into one additive bias in the activation
  dtype: a float32 bias beside bfloat16 activations gave NaN gradients with cuDNN
  on H100 (jax issue 32242). Attention dropout is not supported by it, so callers
  use it only when attention dropout is off.
  """
  additive = bias
  if mask is not None:
    additive = jnp.where(mask, 0.0 if additive is None else additive, NEG_INF)
  if additive is not None:
    q_len, k_len = query.shape[1], key.shape[1]
    additive = jnp.broadcast_to(additive, additive.shape[:2] + (q_len, k_len))
    additive = additive.astype(query.dtype)
  return jax.nn.dot_product_attention(query, key, value, bias=additive, scale=1.0,
                                      implementation=None)


class MultiHeadAttention(nn.Module):
  """Attention without 1/sqrt(d_kv) score scaling (folded into the query init).

  Full sequences on the standard path in bfloat16 / float16 with attention dropout
  off (T5.1.1 pretraining, evaluation) go through `fused_attention` (cuDNN takes
  16-bit operands only); with dropout on, in float32 (whose dots carry the model's
  precision, which `jax.nn.dot_product_attention` has no argument for) and on the
  XLA-CPU path, the explicit einsum-softmax-einsum.

  Modes: full sequences; incremental self-attention decoding (`decode=True`,
  one query at `decode_position`, keys/values written into the 'cache'
  collection); cross-attention whose projected keys/values are cached on the
  first decoding call (`inputs_kv=None` afterwards reads them back). See
  `_decode_attention` for the decoding layout.
  """

  num_heads: int
  d_kv: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  deterministic: bool = True
  decode: bool = False
  cross: bool = False
  adapter: Any = None  # a t5jax.config.AdapterConfig (LoRA / IA3) for `targets`
  targets: tuple = ()  # which of query, key, value, out carry the adapter
  precision: str = "default"  # T5Config.dot_precision

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None, mask: Array | None,
               bias: Array | None = None, decode_position: Array | None = None) -> Array:
    d_model = inputs_q.shape[-1]
    h, d = self.num_heads, self.d_kv
    q_init = dense_init(0, (1, 2), scale=1.0 / d)  # stddev (d_model * d_kv)**-0.5
    kv_init = dense_init(0, (1, 2))
    wq = _param(self, "query", q_init, (d_model, h, d), ("embed", "heads", "kv"))
    wk = _param(self, "key", kv_init, (d_model, h, d), ("embed", "heads", "kv"))
    wv = _param(self, "value", kv_init, (d_model, h, d), ("embed", "heads", "kv"))
    wo = _param(self, "out", dense_init((0, 1), 2), (h, d, d_model), ("heads", "kv", "embed"))
    if self.decode:
      if self.targets:  # no dropout when decoding: fold the adapter into the kernels
        in_axes, out_axes = ("embed", "heads", "kv"), ("heads", "kv", "embed")
        wq, wk, wv = (merged_kernel(self, n, w, 1, in_axes)
                      for n, w in (("query", wq), ("key", wk), ("value", wv)))
        wo = merged_kernel(self, "out", wo, 2, out_axes)
      return self._decode_attention(inputs_q, inputs_kv, mask, bias, decode_position,
                                    (wq, wk, wv, wo))
    project = lambda x, w: ops.project_to_heads(x, w, self.dtype, self.precision)
    adapt = lambda name, x, y: adapt_output(self, name, x, y, (d_model,), (h, d), ("embed",),
                                            ("heads", "kv"))

    query = adapt("query", inputs_q, project(inputs_q, wq))
    key = adapt("key", inputs_kv, project(inputs_kv, wk))
    value = adapt("value", inputs_kv, project(inputs_kv, wv))
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
    key = nn.with_logical_constraint(key, ("batch", "length", "heads", "kv"))
    value = nn.with_logical_constraint(value, ("batch", "length", "heads", "kv"))

    if ops.fused_attention_applies(
        self.dtype, not self.deterministic and self.dropout_rate > 0.0):
      out = fused_attention(query, key, value, mask, bias)
      return self._output(out, wo)
    scores = ops.einsum("bqhd,bkhd->bhqk", query, key, self.dtype, jnp.float32, self.precision)
    if bias is not None:
      scores = ops.add_shared_bias(scores, bias)
    if mask is not None:
      scores = jnp.where(mask, scores, NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = Dropout(self.dropout_rate)(weights, self.deterministic)
    out = ops.einsum("bhqk,bkhd->bqhd", weights, value, self.dtype, precision=self.precision)
    return self._output(out, wo)

  def _output(self, out, wo):
    """The output projection [B, L, H, D] -> [B, L, E], with its adapter if targeted."""
    y = ops.project_from_heads(out, wo, self.dtype, self.precision)
    if not self.targets:
      return y
    return adapt_output(self, "out", out, y, wo.shape[:2], wo.shape[2:], ("heads", "kv"),
                        ("embed",))

  def _decode_attention(self, inputs_q, inputs_kv, mask, bias, decode_position, weights):
    """Attention for incremental decoding (inference only: no dropout).

    Cached keys/values are stored heads-major, [batch, heads, length, d_kv],
    the layout both attention matmuls read directly: stored as [batch, length,
    heads, d_kv], XLA-CPU transposed every cross-attention cache (and the
    output projection's weights) on every step, which was about half of a
    T5-small decoding step.

    Cross-attention keys/values may have fewer rows than the queries: with
    `inputs_kv` of batch B and queries of batch B * g (beams or samples, rows
    of one input adjacent, as jnp.repeat(axis=0) makes them), each input's
    g queries attend to its one cached copy, as g query positions of one
    row. That reads the encoder's keys/values once per input rather than
    once per beam. `mask` may have either batch (or 1).
    """
    wq, wk, wv, wo = (ops.cast_weight(w, self.dtype)
                      for w in weights)
    h, d = self.num_heads, self.d_kv
    heads_major = ("batch", "heads", "length", "kv")

    def project(x, w):  # heads-major after the plain matmul (an einsum straight to
      # heads-major made XLA-CPU transpose the weights on every step)
      return nn.with_logical_constraint(
          jnp.swapaxes(ops.project_to_heads(x, w, self.dtype, self.precision), 1, 2), heads_major)

    query = project(inputs_q, wq)  # [Bq, H, Q, D]
    if self.cross:
      if inputs_kv is None:  # later steps: read back what step 0 cached
        key = self.get_variable("cache", "cross_key")
        value = self.get_variable("cache", "cross_value")
      else:
        key, value = project(inputs_kv, wk), project(inputs_kv, wv)
        self.put_variable("cache", "cross_key", key)
        self.put_variable("cache", "cross_value", value)
    else:
      key, value = project(inputs_kv, wk), project(inputs_kv, wv)
      initialized = self.has_variable("cache", "cached_key")
      cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
      if initialized:  # a real step (not the shape-only init call)
        index = (0, 0, decode_position, 0)
        key = jax.lax.dynamic_update_slice(cached_key.value, key, index)
        value = jax.lax.dynamic_update_slice(cached_value.value, value, index)
        cached_key.value, cached_value.value = key, value
    rows, q_len = query.shape[0], query.shape[2]
    kv_rows = key.shape[0]
    if rows % kv_rows:
      raise ValueError(f"{rows} query rows cannot share {kv_rows} rows of keys/values.")
    groups = rows // kv_rows

    def fold(x):  # [rows, A, Q, K] -> [kv_rows, A, g * Q, K], a row's g copies as queries
      x = x.reshape(kv_rows, groups, *x.shape[1:])
      return jnp.swapaxes(x, 1, 2).reshape(kv_rows, x.shape[2], groups * x.shape[3], x.shape[4])

    def to_rows(x):  # a mask / bias of batch 1, kv_rows or rows -> [rows, A, Q, K]
      if x.shape[0] == kv_rows != 1:
        x = jnp.repeat(x, groups, axis=0)
      return jnp.broadcast_to(x, (rows, x.shape[1], q_len, x.shape[3]))

    if groups > 1:
      query = fold(query)
      bias = None if bias is None else fold(to_rows(bias))
      if mask is not None and not (mask.shape[0] in (1, kv_rows) and mask.shape[2] == 1):
        mask = fold(to_rows(mask))  # else it broadcasts over the folded queries as it is
    scores = ops.einsum("bhqd,bhkd->bhqk", query, key, self.dtype, jnp.float32, self.precision)
    if bias is not None:
      scores = scores + bias
    if mask is not None:
      scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = ops.einsum("bhqk,bhkd->bhqd", probs, value, self.dtype, precision=self.precision)
    if groups > 1:  # [kv_rows, H, g * Q, D] -> [rows, H, Q, D]
      out = jnp.swapaxes(out.reshape(kv_rows, h, groups, q_len, d), 1, 2).reshape(rows, h, q_len, d)
    return ops.project_from_heads(jnp.swapaxes(out, 1, 2), wo, self.dtype, self.precision)


# The activation of wi_0 in each gated feed-forward kind (T5Config.feed_forward_proj).
# The same functions run on both kernel paths: only the matmuls have a CPU path.
GATED_ACTIVATIONS = {
    "gated-gelu": functools.partial(jax.nn.gelu, approximate=True),  # HF "gelu_new"
    "gated-silu": jax.nn.silu,  # x * sigmoid(x), HF "silu" (torch.nn.SiLU)
}


class MlpBlock(nn.Module):
  """Feed-forward of kind `kind` (a T5Config.feed_forward_proj): ReLU (T5.1.0),
  gated GELU with the tanh approximation (T5.1.1, mT5, ByT5, FLAN-T5) or gated
  SiLU (UL2). Gated: wo(act(wi_0 x) * wi_1 x)."""

  d_ff: int
  kind: str
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  deterministic: bool = True
  adapter: Any = None  # a t5jax.config.AdapterConfig (LoRA / IA3) for `targets`
  targets: tuple = ()  # which of wi / wi_0 / wi_1 / wo carry the adapter
  precision: str = "default"  # T5Config.dot_precision

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d_model = x.shape[-1]
    x = x.astype(self.dtype)

    def up(name):
      kernel = _param(self, name, dense_init(0, 1), (d_model, self.d_ff), ("embed", "mlp"))
      y = ops.matmul(x, kernel, self.dtype, precision=self.precision)
      if self.targets:
        y = adapt_output(self, name, x, y, (d_model,), (self.d_ff,), ("embed",), ("mlp",))
      return y

    if self.kind == "relu":
      hidden = jax.nn.relu(up("wi"))
    elif self.kind in GATED_ACTIVATIONS:
      hidden = GATED_ACTIVATIONS[self.kind](up("wi_0")) * up("wi_1")
    else:
      raise ValueError(f"MlpBlock.kind={self.kind!r}: expected 'relu' or one of "
                       f"{sorted(GATED_ACTIVATIONS)}.")
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(self.dropout_rate)(hidden, self.deterministic)
    wo = _param(self, "wo", dense_init(0, 1), (self.d_ff, d_model), ("mlp", "embed"))
    if not self.targets:
      return ops.matmul(hidden, wo, self.dtype, precision=self.precision)
    hidden = adapt_input(self, "wo", hidden, (self.d_ff,), ("mlp",))
    y = ops.matmul(hidden, wo, self.dtype, precision=self.precision)
    if self.adapter.method == "ia3":
      return y
    return adapt_output(self, "wo", hidden, y, (self.d_ff,), (d_model,), ("mlp",), ("embed",))


class Embed(nn.Module):
  """The token embedding [vocab, embed]; `attend` gives tied logits in float32."""

  vocab_size: int
  features: int
  dtype: Any = jnp.float32
  precision: str = "default"  # T5Config.dot_precision (of `attend`)

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.vocab_size, self.features), ("vocab", "embed"))

  def __call__(self, ids: Array) -> Array:
    return ops.take(self.embedding, ids, self.dtype)

  def attend(self, x: Array) -> Array:
    return ops.attend(x, self.embedding, self.dtype, self.precision)
