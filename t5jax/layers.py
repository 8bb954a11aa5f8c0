"""T5 building blocks in Flax Linen: norm, relative position bias, attention, MLP.

Only jax/flax/numpy are imported here. Every parameter carries logical axis
names (`'embed'`, `'heads'`, `'kv'`, `'mlp'`, `'vocab'`, `'relpos_buckets'`);
`t5jax.partitioning` maps them to mesh axes. Parameter names follow T5X, so a
T5X checkpoint maps onto this tree by reshaping alone.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5jax.reductions import tree_sum_leading

Array = jax.Array
# Large negative instead of -inf: a fully masked row (a padding query) then gives a
# uniform softmax rather than NaNs, and its output is ignored by the loss anyway.
NEG_INF = -1e10


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def dense_init(in_axis, out_axis, scale: float = 1.0):
  """T5X's kernel init: variance scaling on fan-in (truncated normal)."""
  return nn.initializers.variance_scaling(
      scale, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


def _mix32(x: Array) -> Array:
  """A bijective uint32 integer hash (Wellons' lowbias32: avalanche bias ~0.17%)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def counter_bits(key: Array, shape) -> Array:
  """Random uint32 bits: element index hashed with a 64-bit seed drawn from `key`.

  A counter-based generator like threefry or Philox, but 2 hash rounds instead
  of 20 cipher rounds, so about 9x faster on XLA-CPU (jax.random.bits for a
  T5-small training step's dropout masks took about a third of the step).
  Only the 64-bit seed goes through jax.random, so streams still follow the
  key tree (fold_in / split per layer and step). `x -> mix(x ^ s0)` is a
  bijection, so no two elements of one call share a value before the final
  mix(. + s1). It is elementwise in the index, so it shards like iota.
  For dropout masks, not for cryptography or statistics beyond that.
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  index = jax.lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)
  return _mix32(_mix32(index ^ seed[0]) + seed[1])


class Dropout(nn.Module):
  """Inverted dropout from counter-hash random bits (rng collection 'dropout').

  Same distribution as nn.Dropout (keep iff bits >= rate * 2**32, exact to
  2**-32), much cheaper on CPU: it skips turning bits into uniform floats and
  draws the bits with `counter_bits` rather than 20-round threefry; mask
  generation was about a third of a T5-small training step there.
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
    return _one_hot_lookup(table, one_hot)[None]


@jax.custom_vjp
def _one_hot_lookup(table: Array, one_hot: Array) -> Array:
  """table[:, buckets] as a one-hot matmul: cheaper than a gather on accelerators,
  shards cleanly along heads. [H, NB] x [Q, K, NB] -> [H, Q, K]."""
  return jnp.einsum("hb,qkb->hqk", table, one_hot)


def _one_hot_lookup_fwd(table, one_hot):
  return _one_hot_lookup(table, one_hot), one_hot


def _one_hot_lookup_bwd(one_hot, grad):
  # The incoming gradient sums every layer's (and the batch's) score
  # gradients. The barrier makes XLA materialise that sum first rather than
  # fusing six [B, H, Q, K] reductions into the matmul, which made this tiny
  # [H, Q*K] x [Q*K, NB] product about 5% of a T5-small training step on CPU.
  grad = jax.lax.optimization_barrier(grad)
  return jnp.einsum("hqk,qkb->hb", grad, one_hot), None


_one_hot_lookup.defvjp(_one_hot_lookup_fwd, _one_hot_lookup_bwd)


def _batch_is_sharded() -> bool:
  """Whether the 'batch' logical axis maps to a mesh axis of size > 1 here (trace time)."""
  axes = nn.logical_to_mesh_axes(("batch",))[0]
  mesh = jax.sharding.get_abstract_mesh()
  if axes is None or mesh.empty:
    return False
  return any(mesh.shape.get(name, 1) > 1 for name in (axes if isinstance(axes, tuple) else (axes,)))


def add_shared_bias(scores: Array, bias: Array) -> Array:
  """scores [B, H, Q, K] + bias [1, H, Q, K]: the position bias shared by the batch."""
  if bias.shape[0] != 1 or scores.shape[0] == 1:
    return scores + bias
  return _add_batch_shared_bias(scores, bias)


@jax.custom_vjp
def _add_batch_shared_bias(scores: Array, bias: Array) -> Array:
  return scores + bias


def _add_batch_shared_bias_fwd(scores, bias):
  return scores + bias, None


def _add_batch_shared_bias_bwd(_, grad):
  if _batch_is_sharded():  # a plain reduce: local sums plus one all-reduce over 'data'
    return grad, jnp.sum(grad, axis=0, keepdims=True)
  # XLA-CPU runs a reduction over this leading axis through a slow YNN path
  # (~100 ms for six T5-small layers); a tree of elementwise adds is ~1 ms.
  return grad, tree_sum_leading(grad)


_add_batch_shared_bias.defvjp(_add_batch_shared_bias_fwd, _add_batch_shared_bias_bwd)


def einsum(spec: str, a: Array, b: Array, dtype, out_dtype=None) -> Array:
  """jnp.einsum of `a` and `b` computed in `dtype`, the result in `out_dtype` (default
  `dtype`). In float32 this is the plain einsum. In a low precision (bfloat16) the
  products accumulate in float32, forward and backward (`_low_precision_einsum`)."""
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  if dtype == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                      preferred_element_type=jnp.float32).astype(out_dtype)
  return _low_precision_einsum(spec, dtype, out_dtype, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _low_precision_einsum(spec, dtype, out_dtype, a, b):
  """Why a custom gradient: XLA-CPU runs a bfloat16 dot with a bfloat16 result on a
  slow path (~180 GFLOP/s on this project's Xeon, like float32), but bfloat16
  inputs with a float32 result on AMX (~900+). Autodiff of such a dot would hand
  the backward dots float32 cotangents and so float32 (upcast) operands. Here all
  three dots take `dtype` operands and accumulate in float32; each gradient comes
  back in its operand's own dtype, so a float32 weight gets an unrounded float32
  gradient (T5X's bfloat16 recipe keeps float32 parameters too)."""
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=jnp.float32).astype(out_dtype)


def _low_precision_einsum_fwd(spec, dtype, out_dtype, a, b):
  out = _low_precision_einsum(spec, dtype, out_dtype, a, b)
  # The dtype tokens carry each operand's dtype (residuals must be arrays).
  return out, (a.astype(dtype), b.astype(dtype), jnp.zeros((0,), a.dtype),
               jnp.zeros((0,), b.dtype))


def _low_precision_einsum_bwd(spec, dtype, out_dtype, res, grad):
  a, b, a_token, b_token = res
  inputs, out = spec.replace(" ", "").split("->")
  a_spec, b_spec = inputs.split(",")
  grad = grad.astype(dtype)
  # Matmul-style specs only: every index of an operand appears in the other operand or
  # the output, so each gradient is one einsum of the cotangent with the other operand.
  grad_a = _contract_last_dot(f"{out},{b_spec}->{a_spec}", grad, b)
  grad_b = _contract_last_dot(f"{a_spec},{out}->{b_spec}", a, grad)
  return grad_a.astype(a_token.dtype), grad_b.astype(b_token.dtype)


def _contract_last_dot(spec: str, x: Array, y: Array) -> Array:
  """einsum(spec, x, y) accumulating in float32, on CPU with x's contracted axes moved
  last first. XLA-CPU's fast low-precision kernel takes a left operand contracted on its
  last axes only; XLA folds a plain transpose back into the dot (and then falls
  back to a kernel without bfloat16 x bfloat16 -> float32), so the moved copy is
  pinned with an optimization barrier."""
  inputs, out = spec.split("->")
  x_spec, y_spec = inputs.split(",")
  if "." not in x_spec and jax.default_backend() == "cpu":  # GPU/TPU dots take either
    contracted = [c for c in x_spec if c in y_spec and c not in out]
    moved = "".join(c for c in x_spec if c not in contracted) + "".join(contracted)
    if moved != x_spec:
      x = jax.lax.optimization_barrier(jnp.einsum(f"{x_spec}->{moved}", x))
      x_spec = moved
  return jnp.einsum(f"{x_spec},{y_spec}->{out}", x, y, preferred_element_type=jnp.float32)


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


_KERNELS_OUT_IN = contextvars.ContextVar("t5jax_kernels_out_in", default=False)


@contextlib.contextmanager
def kernels_stored_out_in():
  """While tracing under this, `matmul` contracts each kernel as `kernel.T` [N, K].

  For decoding (t5jax.decoding): its weights enter jit stored [out, in] and are
  handed to the model as `stored.T`, so the two transposes cancel and the dot
  reads the stored layout. XLA-CPU streams a [N, K] weight ~3x faster than a
  [K, N] one for few-row bf16 matmuls, but would copy any weight it may lay out
  itself back to [K, N]."""
  token = _KERNELS_OUT_IN.set(True)
  try:
    yield
  finally:
    _KERNELS_OUT_IN.reset(token)


def matmul(x: Array, kernel: Array, dtype, out_dtype=None) -> Array:
  """x [..., K] @ kernel [K, N] in `dtype` (see `einsum`)."""
  if _KERNELS_OUT_IN.get():  # a 2-D dot: XLA keeps [N, K] for those, but canonicalises
    # a [..., K] x [N, K] dot by copying the weight to [K, N]
    y = einsum("mk,nk->mn", x.reshape(-1, x.shape[-1]), kernel.T, dtype, out_dtype)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])
  if jnp.dtype(dtype) == jnp.float32:
    # One 2-D dot, so that autodiff's weight gradient is the 2-D "mk,mn->kn" too
    # (docs/design.md, "Dtypes"): from [..., K] it contracts two row axes, and
    # XLA-CPU wrote each cotangent transposed inside its producer fusion. bfloat16
    # keeps the [..., K] form, which measured faster there.
    y = einsum("mk,kn->mn", x.reshape(-1, x.shape[-1]), kernel, dtype, out_dtype)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])
  return einsum("...k,kn->...n", x, kernel, dtype, out_dtype)


def _project_to_heads(x: Array, kernel: Array, dtype) -> Array:
  """[B, L, E] x [E, H, D] -> [B, L, H, D] as one plain [B*L, E] x [E, H*D] matmul on
  the reshaped (not transposed) kernel. 3-D einsums made XLA-CPU copy weights and
  activations: ~8% of a T5-small training step, and every decoding step."""
  e, h, d = kernel.shape
  y = matmul(x, kernel.reshape(e, h * d), dtype)
  return y.reshape(*y.shape[:-1], h, d)


def _project_from_heads(x: Array, kernel: Array, dtype) -> Array:
  """[B, L, H, D] x [H, D, E] -> [B, L, E], likewise one 2-D matmul."""
  h, d, e = kernel.shape
  return matmul(x.reshape(*x.shape[:2], h * d), kernel.reshape(h * d, e), dtype)


class MultiHeadAttention(nn.Module):
  """Attention without 1/sqrt(d_kv) score scaling (folded into the query init).

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
      return self._decode_attention(inputs_q, inputs_kv, mask, bias, decode_position,
                                    (wq, wk, wv, wo))
    project = lambda x, w: _project_to_heads(x, w, self.dtype)

    query = project(inputs_q, wq)
    key, value = project(inputs_kv, wk), project(inputs_kv, wv)
    query = nn.with_logical_constraint(query, ("batch", "length", "heads", "kv"))
    key = nn.with_logical_constraint(key, ("batch", "length", "heads", "kv"))
    value = nn.with_logical_constraint(value, ("batch", "length", "heads", "kv"))

    scores = einsum("bqhd,bkhd->bhqk", query, key, self.dtype, jnp.float32)
    if bias is not None:
      scores = add_shared_bias(scores, bias)
    if mask is not None:
      scores = jnp.where(mask, scores, NEG_INF)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = Dropout(self.dropout_rate)(weights, self.deterministic)
    out = einsum("bhqk,bkhd->bqhd", weights, value, self.dtype)
    return _project_from_heads(out, wo, self.dtype)

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
    wq, wk, wv, wo = (w.astype(self.dtype) for w in weights)
    h, d = self.num_heads, self.d_kv
    heads_major = ("batch", "heads", "length", "kv")

    def project(x, w):  # heads-major after the plain matmul (an einsum straight to
      # heads-major made XLA-CPU transpose the weights on every step)
      return nn.with_logical_constraint(
          jnp.swapaxes(_project_to_heads(x, w, self.dtype), 1, 2), heads_major)

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
    scores = einsum("bhqd,bhkd->bhqk", query, key, self.dtype, jnp.float32)
    if bias is not None:
      scores = scores + bias
    if mask is not None:
      scores = jnp.where(mask, scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1)
    out = einsum("bhqk,bhkd->bhqd", probs, value, self.dtype)
    if groups > 1:  # [kv_rows, H, g * Q, D] -> [rows, H, Q, D]
      out = jnp.swapaxes(out.reshape(kv_rows, h, groups, q_len, d), 1, 2).reshape(rows, h, q_len, d)
    return _project_from_heads(jnp.swapaxes(out, 1, 2), wo, self.dtype)


class MlpBlock(nn.Module):
  """ReLU (T5.1.0) or gated-GELU, tanh approximation (T5.1.1) feed-forward."""

  d_ff: int
  gated: bool
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d_model = x.shape[-1]
    x = x.astype(self.dtype)
    up = lambda name: matmul(x, _param(self, name, dense_init(0, 1), (d_model, self.d_ff),
                                       ("embed", "mlp")), self.dtype)
    if self.gated:
      hidden = jax.nn.gelu(up("wi_0"), approximate=True) * up("wi_1")
    else:
      hidden = jax.nn.relu(up("wi"))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    hidden = Dropout(self.dropout_rate)(hidden, self.deterministic)
    wo = _param(self, "wo", dense_init(0, 1), (self.d_ff, d_model), ("mlp", "embed"))
    return matmul(hidden, wo, self.dtype)


class Embed(nn.Module):
  """The token embedding [vocab, embed]; `attend` gives tied logits in float32."""

  vocab_size: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = _param(self, "embedding", nn.initializers.normal(stddev=1.0),
                            (self.vocab_size, self.features), ("vocab", "embed"))

  def __call__(self, ids: Array) -> Array:
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    if _KERNELS_OUT_IN.get():  # decoding: the [vocab, embed] table is [out, in] already
      return matmul(x, self.embedding.T, self.dtype, jnp.float32)
    return einsum("bld,vd->blv", x, self.embedding, self.dtype, jnp.float32)


@functools.lru_cache(maxsize=None)
def remat_policy(name: str):
  return {"full": None, "save_dots": jax.checkpoint_policies.checkpoint_dots}[name]
