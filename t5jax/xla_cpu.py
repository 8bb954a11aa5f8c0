"""The XLA-CPU path: kernels that only pay on XLA's CPU backend, behind one switch.

    T5JAX_CPU_KERNELS=auto   # default: on exactly when jax.default_backend() == "cpu",
                             # the bfloat16 kernels where the CPU has AMX-BF16 / AVX512-BF16
    T5JAX_CPU_KERNELS=on     # force the CPU path (tests)
    T5JAX_CPU_KERNELS=off    # the standard path everywhere

`enabled()` is the one place the switch is read; it is read while tracing, so set
it before the first call of a jitted function (`forced` also clears JAX's caches,
for tests that run both paths in one process).

The standard path (`t5jax.layers`, `t5jax.decoding`, `t5jax.optim`) is plain
JAX/Flax and is what GPUs and TPUs run. Each function here replaces one piece of
it with the same mathematical function written the way XLA-CPU runs fastest on
this project's 2-core test VMs (a Xeon with AMX-BF16; AMD EPYCs with and without
AVX512-BF16: the bfloat16 kernels run only where the CPU has one of them,
`bf16_kernels`). `docs/design.md`, "Two
paths", lists each with its measured gain. Nothing here changes the parameter
tree, the optimizer state tree, checkpoints or the loss: only how XLA-CPU is told
to compute them. What the CPU path gives up:

- bfloat16 matmuls take a custom VJP (`einsum`), so `jax.jvp` through a bfloat16
  model fails (`einsum` raises a clear error; float32 supports forward mode on
  both paths);
- the remat policy `save_dots` saves those matmul outputs by name (`DOT_NAME`),
  since a remat policy cannot see a dot inside a custom VJP.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.ad_checkpoint import checkpoint_name
from t5jax.errors import UsageError

try:  # the tracer of forward-mode AD (jax.jvp); only for a clearer error, so optional
  from jax.interpreters.ad import JVPTracer as _JVPTracer
except ImportError:  # a JAX that no longer exports it: jax's own error then
  _JVPTracer = ()

Array = jax.Array
ENV = "T5JAX_CPU_KERNELS"
CHOICES = ("auto", "on", "off")
# checkpoint_name of every CPU-path bfloat16 matmul output (see ops.remat_policy).
DOT_NAME = "t5jax_dot"

_FORCED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("t5jax_cpu_kernels",
                                                                       default=None)


def setting() -> str:
  """The value of T5JAX_CPU_KERNELS (auto when unset), validated."""
  value = os.environ.get(ENV, "auto").strip().lower() or "auto"
  if value not in CHOICES:
    raise UsageError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)} "
                     "(auto: the CPU kernels on exactly when JAX's backend is the CPU).")
  return value


def enabled() -> bool:
  """Whether the XLA-CPU kernels are in use (read at trace time)."""
  forced_value = _FORCED.get()
  if forced_value is not None:
    return forced_value
  value = setting()
  return value == "on" or (value == "auto" and jax.default_backend() == "cpu")


# CPU instructions that multiply bfloat16 into float32: what the bfloat16 kernels need.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
  """This machine's CPU feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def bf16_kernels() -> bool:
  """Whether the CPU path's bfloat16 kernels run (`einsum`'s float32-accumulating custom
  VJP, decoding weights stored [out, in]): on the CPU path, where the CPU multiplies
  bfloat16 natively (AMX-BF16 or AVX512-BF16; T5JAX_CPU_KERNELS=on and `forced` run
  them anywhere). Without those instructions XLA-CPU converts to float32 either way and
  the kernels only add work: on an AVX2-only EPYC the CPU path trained bfloat16 9%
  slower than the standard path, so there its bfloat16 matmuls are the standard ones."""
  if not enabled():
    return False
  if _FORCED.get() is not None or setting() == "on":
    return True
  return bool(cpu_flags() & set(BF16_FLAGS))


def describe() -> str:
  """One line for logs: which path, and on the CPU path whether the bf16 kernels run."""
  if not enabled():
    return f"standard path ({ENV}={setting()}, backend {jax.default_backend()})"
  flags = sorted(cpu_flags() & set(BF16_FLAGS))
  bf16 = ("on" if bf16_kernels() else "off") + (f", CPU has {'/'.join(flags)}" if flags
                                                else ", CPU has no AMX-BF16/AVX512-BF16")
  return f"XLA-CPU path ({ENV}={setting()}; bfloat16 kernels {bf16})"


@contextlib.contextmanager
def forced(on: bool):
  """Within this block `enabled()` is `on`, whatever the environment says.

  JAX caches compiled functions by their arguments, not by this switch, so when
  the block changes the path the caches are cleared on entry and exit: what runs
  inside is traced afresh.
  """
  changes = enabled() != bool(on)
  token = _FORCED.set(bool(on))
  if changes:
    jax.clear_caches()
  try:
    yield
  finally:
    _FORCED.reset(token)
    if changes:
      jax.clear_caches()


# ----------------------------------------------------------------------------
# Matmuls.
#
# XLA-CPU runs a bfloat16 x bfloat16 -> bfloat16 dot on a slow path (~180 GFLOP/s
# on the test VM, the float32 rate) but bfloat16 operands with a float32 result on
# AMX (~900+ GFLOP/s). Autodiff of a dot would hand the two backward dots float32
# cotangents, i.e. float32 (upcast) operands. So in bfloat16 every dot here takes
# bfloat16 operands and accumulates to float32, forward and backward, through a
# custom VJP; each gradient comes back in its operand's own dtype, so a float32
# weight gets an unrounded float32 gradient.

def einsum(spec: str, a: Array, b: Array, dtype, out_dtype=None, precision=None) -> Array:
  """`ops.einsum` on the CPU path (same function; `precision` a jax.lax.Precision,
  which XLA-CPU ignores but keeps in the HLO: it matters if this path is forced on
  another backend, as the tests do)."""
  dtype = jnp.dtype(dtype)
  out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
  if dtype == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32,
                      precision=precision).astype(out_dtype)
  if not bf16_kernels():  # the standard path's dot (ops.einsum)
    preferred = jnp.float32 if out_dtype == jnp.float32 else dtype
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=preferred,
                      precision=precision).astype(out_dtype)
  if isinstance(a, _JVPTracer) or isinstance(b, _JVPTracer):
    raise TypeError(
        f"Forward-mode autodiff (jax.jvp, jacfwd) of a {dtype.name} model is not supported "
        f"by the XLA-CPU kernels (their {dtype.name} matmuls have a custom VJP). Set "
        f"{ENV}=off (the standard path, as on GPU/TPU) or use float32.")
  # A remat policy cannot see the dot inside the custom VJP: `save_dots` saves it by name.
  return checkpoint_name(_low_precision_einsum(spec, dtype, out_dtype, a, b), DOT_NAME)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _low_precision_einsum(spec, dtype, out_dtype, a, b):
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


_low_precision_einsum.defvjp(_low_precision_einsum_fwd, _low_precision_einsum_bwd)


def _contract_last_dot(spec: str, x: Array, y: Array) -> Array:
  """einsum(spec, x, y) accumulating in float32, with x's contracted axes moved last
  first. XLA-CPU's fast low-precision kernel takes a left operand contracted on its
  last axes only; XLA folds a plain transpose back into the dot (and then falls back
  to a kernel without bfloat16 x bfloat16 -> float32, which fails at run time), so
  the moved copy is pinned with an optimization barrier."""
  inputs, out = spec.split("->")
  x_spec, y_spec = inputs.split(",")
  if "." not in x_spec:
    contracted = [c for c in x_spec if c in y_spec and c not in out]
    moved = "".join(c for c in x_spec if c not in contracted) + "".join(contracted)
    if moved != x_spec:
      x = jax.lax.optimization_barrier(jnp.einsum(f"{x_spec}->{moved}", x))
      x_spec = moved
  return jnp.einsum(f"{x_spec},{y_spec}->{out}", x, y, preferred_element_type=jnp.float32)


_KERNELS_OUT_IN = contextvars.ContextVar("t5jax_kernels_out_in", default=False)


@contextlib.contextmanager
def kernels_stored_out_in():
  """While tracing under this, `matmul` contracts each kernel as `kernel.T` [N, K].

  For bfloat16 decoding: weights enter jit stored [out, in] (`prepare_decode_params`)
  and reach the model as `stored.T`, so the two transposes cancel and the dot reads
  the stored layout. At 4 rows XLA-CPU's bfloat16 kernel streams an [N, K] weight ~3x
  faster than a [K, N] one, but copies any weight it may lay out itself to [K, N]."""
  token = _KERNELS_OUT_IN.set(True)
  try:
    yield
  finally:
    _KERNELS_OUT_IN.reset(token)


def matmul(x: Array, kernel: Array, dtype, out_dtype=None, precision=None) -> Array:
  """`ops.matmul` on the CPU path: x [..., K] @ kernel [K, N]."""
  if _KERNELS_OUT_IN.get():  # a 2-D dot: XLA keeps [N, K] for those, but canonicalises
    # a [..., K] x [N, K] dot by copying the weight to [K, N]
    y = einsum("mk,nk->mn", x.reshape(-1, x.shape[-1]), kernel.T, dtype, out_dtype, precision)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])
  if jnp.dtype(dtype) == jnp.float32:
    # One 2-D dot, so that autodiff's weight gradient is the 2-D "mk,mn->kn" too: from
    # [..., K] it contracts two row axes, and XLA-CPU wrote each cotangent transposed
    # inside its producer fusion. bfloat16 keeps the [..., K] form, faster there.
    y = einsum("mk,kn->mn", x.reshape(-1, x.shape[-1]), kernel, dtype, out_dtype, precision)
    return y.reshape(*x.shape[:-1], kernel.shape[-1])
  return einsum("...k,kn->...n", x, kernel, dtype, out_dtype, precision)


def project_to_heads(x: Array, kernel: Array, dtype, precision=None) -> Array:
  """[B, L, E] x [E, H, D] -> [B, L, H, D] as one plain [B*L, E] x [E, H*D] matmul on
  the reshaped (not transposed) kernel: 3-D einsums made XLA-CPU copy weights and
  activations (~8% of a T5-small training step, and every decoding step)."""
  e, h, d = kernel.shape
  y = matmul(x, kernel.reshape(e, h * d), dtype, precision=precision)
  return y.reshape(*y.shape[:-1], h, d)


def project_from_heads(x: Array, kernel: Array, dtype, precision=None) -> Array:
  """[B, L, H, D] x [H, D, E] -> [B, L, E], likewise one 2-D matmul."""
  h, d, e = kernel.shape
  return matmul(x.reshape(*x.shape[:2], h * d), kernel.reshape(h * d, e), dtype,
                precision=precision)


def attend(x: Array, embedding: Array, dtype, precision=None) -> Array:
  """Tied logits x @ embedding.T in float32 (decoding: the table is [out, in] already)."""
  if _KERNELS_OUT_IN.get():
    return matmul(x, embedding.T, dtype, jnp.float32, precision)
  return einsum("bld,vd->blv", x, embedding, dtype, jnp.float32, precision)


# ----------------------------------------------------------------------------
# The relative position bias.

def position_bias(table: Array, one_hot: Array, precision=None) -> Array:
  """[H, NB] x [Q, K, NB] -> [H, Q, K] behind an optimization barrier.

  The barrier is linear, and its transpose is a barrier on the cotangent: the
  gradient that sums every layer's (and the batch's) score gradients is then
  materialised before this tiny [H, Q*K] x [Q*K, NB] product, rather than XLA-CPU
  fusing six [B, H, Q, K] reductions into it (~5% of a T5-small training step)."""
  return jax.lax.optimization_barrier(jnp.einsum("hb,qkb->hqk", table, one_hot,
                                                 precision=precision))


def add_shared_bias(scores: Array, bias: Array) -> Array:
  """scores [B, H, Q, K] + bias [1, H, Q, K], the bias's batch gradient a tree of adds.

  XLA-CPU runs the sum over the leading batch axis that autodiff makes here through
  a slow path (~100 ms for six T5-small layers); a tree of elementwise adds over
  halves takes ~1 ms. With the batch sharded over devices the plain sum (local sums
  and one all-reduce) stays: halves of a sharded axis would move data between them.
  """
  if bias.shape[0] != 1 or scores.shape[0] == 1 or _batch_is_sharded():
    return scores + bias
  return _add_tree_broadcast(scores, bias)


@jax.custom_jvp
def _add_tree_broadcast(scores, bias):
  return scores + bias


@_add_tree_broadcast.defjvp
def _add_tree_broadcast_jvp(primals, tangents):
  # The bias tangent is broadcast over the batch by repeated doubling; the transpose
  # of that (what reverse mode runs) is a tree of adds over halves, tree_sum_leading.
  scores, bias = primals
  d_scores, d_bias = tangents
  return scores + bias, d_scores + _tree_broadcast(d_bias, scores.shape[0])


def _tree_broadcast(x: Array, n: int) -> Array:
  """[1, ...] -> [n, ...] by concatenating halves (see `tree_sum_leading`)."""
  if n == 1:
    return x
  half = _tree_broadcast(x, n // 2)
  return jnp.concatenate([half, half] + ([x] if n % 2 else []), axis=0)


def _batch_is_sharded() -> bool:
  """Whether the 'batch' logical axis maps to a mesh axis of size > 1 here (trace time)."""
  axes = nn.logical_to_mesh_axes(("batch",))[0]
  mesh = jax.sharding.get_abstract_mesh()
  if axes is None or mesh.empty:
    return False
  return any(mesh.shape.get(name, 1) > 1 for name in (axes if isinstance(axes, tuple) else (axes,)))


# ----------------------------------------------------------------------------
# Reductions XLA-CPU runs slowly over a wide leading axis: a mean over the 512 rows
# of a [512, 32128] array took ~95 ms, a tree of elementwise adds over halves ~19 ms.

def tree_sum_leading(x: Array) -> Array:
  """x.sum(axis=0, keepdims=True) as a tree of adds over halves of axis 0."""
  while x.shape[0] > 1:
    half = x.shape[0] // 2
    folded = x[:half] + x[half:2 * half]
    if x.shape[0] % 2:
      folded = folded.at[:1].add(x[2 * half:])
    x = folded
  return x


def _mean(x: Array, axis: int) -> Array:
  """jnp.mean(x, axis); axis 0 of a wide matrix as a tree of adds."""
  if axis == 0 and x.ndim == 2 and x.shape[1] >= 8192:
    return tree_sum_leading(x)[0] / x.shape[0]
  return jnp.mean(x, axis=axis)


# ----------------------------------------------------------------------------
# Decoding.

def first_argmax(x: Array) -> Array:
  """jnp.argmax(x, -1) (the first maximum) as two plain reductions: XLA-CPU's
  variadic (value, index) reduce took ~5x as long over a 32k vocabulary."""
  best = jnp.max(x, axis=-1, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == best, index, x.shape[-1]), axis=-1)


def _weight_split(path, x) -> int | None:
  """How many leading axes a weight contracts over (None: left as it is)."""
  name = getattr(path[-1], "key", None)
  if x.ndim < 2 or name in ("rel_embedding", "embedding"):  # the embedding is [out, in]
    return None  # (vocab x embed) for the tied logits already
  return 2 if name == "out" else 1  # attention output [heads, d_kv, embed]


@functools.partial(jax.jit, static_argnums=1)
def store_out_in(params, dtype):
  """Per-layer params -> matmul weights cast to `dtype` and stored 2-D [out, in].

  Done outside the decoding loop's jit: XLA picks the layout of any weight cast
  inside it itself (and picks [in, out])."""
  def prepare(path, x):
    split = _weight_split(path, x)
    if split is not None:
      return x.astype(dtype).reshape(int(np.prod(x.shape[:split])), -1).T
    return x.astype(dtype) if getattr(path[-1], "key", None) == "embedding" else x
  return jax.tree_util.tree_map_with_path(prepare, params)


def restore_out_in(params, shapes):
  """Inverse of `store_out_in` inside jit: the logical shapes, by transposes that
  cancel with the ones `matmul` makes under `kernels_stored_out_in`."""
  def restore(path, x, shape):
    return x if _weight_split(path, shape) is None else x.T.reshape(shape.shape)
  return jax.tree_util.tree_map_with_path(restore, params, shapes)


# ----------------------------------------------------------------------------
# Adafactor as one fused update per tensor, state-compatible with optax.adafactor.
#
# optax.adafactor chains five transformations (factored RMS, block-RMS clipping,
# learning rate, parameter scale, sign flip). Under XLA-CPU that chain becomes a
# dozen full passes over every tensor per step (the parameter-scale RMS alone is two
# reductions plus a select of the whole tensor), about a fifth of a T5-small step.
# Here each tensor's update is written once, in optax's arithmetic and order:
#
#     g2      = g**2 + eps1
#     v_row   = beta2_t * v_row + (1 - beta2_t) * mean(g2, largest axis)   (factored)
#     v_col   = beta2_t * v_col + (1 - beta2_t) * mean(g2, 2nd largest)
#     u       = g * rsqrt(v_row / mean(v_row)) * rsqrt(v_col)              (or g * rsqrt(v))
#     u      /= max(1, rms(u) / clipping_threshold)
#     update  = -lr * max(rms(param), 1e-3) * u
#
# with beta2_t = 1 - (t + 1)**-decay_rate. init() is optax.adafactor's own, so the
# state tree (and checkpoints) are the same on both paths; tests/test_optim.py
# checks the updates against optax's.

def factored_dims(shape, min_dim_size_to_factor: int) -> tuple[int, int] | None:
  """(second largest, largest) axis, or None when that axis is < min size (optax's rule)."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def _rms(x: Array) -> Array:
  return jnp.sqrt(jnp.mean(jnp.square(x)))


def adafactor(learning_rate: float | Callable, *, decay_rate: float = 0.8,
              min_dim_size_to_factor: int = 128, epsilon1: float = 1e-30,
              clipping_threshold: float | None = 1.0,
              multiply_by_parameter_scale: bool = True) -> optax.GradientTransformation:
  """Fused Adafactor without momentum or weight decay (T5's settings)."""
  reference = optax.adafactor(
      learning_rate=learning_rate, min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate, multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold, momentum=None, eps=epsilon1, factored=True)
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

  def one(grad, param, v_row, v_col, v, beta2, lr):
    dims = factored_dims(param.shape, min_dim_size_to_factor)
    g2 = jnp.square(grad) + epsilon1
    if dims is not None:
      d1, d0 = dims
      v_row = (beta2 * v_row + (1.0 - beta2) * _mean(g2, d0)).astype(param.dtype)
      v_col = (beta2 * v_col + (1.0 - beta2) * _mean(g2, d1)).astype(param.dtype)
      row_mean = jnp.mean(v_row, axis=d1 - 1 if d1 > d0 else d1, keepdims=True)
      u = (grad * jnp.expand_dims(jax.lax.rsqrt(v_row / row_mean), d0)
           * jnp.expand_dims(jax.lax.rsqrt(v_col), d1))
    else:
      v = (beta2 * v + (1.0 - beta2) * g2).astype(param.dtype)
      u = grad * jax.lax.rsqrt(v)
    if clipping_threshold is not None:
      u = u / jnp.maximum(1.0, _rms(u) / clipping_threshold)
    scale = lr
    if multiply_by_parameter_scale:
      scale = scale * jnp.maximum(_rms(param), 1e-3)
    return -scale * u, v_row, v_col, v

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("Adafactor needs params (parameter scale, factored shapes).")
    factored = state[0]
    beta2 = 1.0 - jnp.asarray(factored.count + 1, jnp.float32) ** -decay_rate
    schedules = [s for s in state if isinstance(s, optax.ScaleByScheduleState)]
    lr = schedule(schedules[0].count) if schedules else learning_rate
    out = jax.tree.map(lambda g, p, r, c, v: one(g, p, r, c, v, beta2, lr),
                       grads, params, factored.v_row, factored.v_col, factored.v)
    pick = lambda i: jax.tree.map(lambda _, o: o[i], grads, out)
    new_factored = factored._replace(count=optax.safe_increment(factored.count),
                                     v_row=pick(1), v_col=pick(2), v=pick(3))
    rest = tuple(s._replace(count=optax.safe_increment(s.count))
                 if isinstance(s, optax.ScaleByScheduleState) else s for s in state[1:])
    return pick(0), (new_factored,) + rest

  return optax.GradientTransformation(reference.init, update)
