"""Optimizers and learning-rate schedules (T5 / T5X settings by default).

    tx = make_optimizer(OptimizerConfig())  # Adafactor + rsqrt, as T5X pretraining

Schedules take optax's update count `step` (0 for the first update), as T5X's
`rsqrt_decay` does, so the first 10k steps of pretraining get exactly 0.01.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from t5jax import ops
from t5jax.config import SCANNED_LAYERS
from t5jax.errors import UsageError

SCHEDULES = ("rsqrt", "warmup_rsqrt", "constant", "cosine")
OPTIMIZERS = ("adafactor", "adamw")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adafactor"
  schedule: str = "rsqrt"
  # rsqrt: lr = learning_rate / sqrt(max(step, warmup_steps)); 1.0 gives T5X's 0.01 flat.
  # warmup_rsqrt: lr = learning_rate * min(t^-1/2, t / warmup_steps^1.5), t = step + 1.
  # constant: lr = learning_rate (T5 finetuning: 0.001).
  # cosine: linear warm-up to learning_rate over warmup_steps, then cosine
  #   decay to end_learning_rate at total_steps.
  learning_rate: float = 1.0
  warmup_steps: int = 10_000
  total_steps: int | None = None
  end_learning_rate: float = 0.0
  clip_grad_norm: float | None = None  # global-norm clipping before the optimizer
  # Adafactor (T5 / mesh-tf settings).
  decay_rate: float = 0.8  # beta2_t = 1 - (step + 1)^-0.8
  clipping_threshold: float | None = 1.0  # update clipping by RMS
  multiply_by_parameter_scale: bool = True
  min_dim_size_to_factor: int = 128
  epsilon1: float = 1e-30  # added to squared gradients
  epsilon2: float = 1e-3  # floor of the parameter-scale RMS
  momentum: float | None = None
  # Factor 3-D attention kernels [embed, heads, kv] / [heads, kv, embed] as the
  # 2-D matrix [embed, heads*kv], as T5 (2-D kernels) and T5X's factor rules
  # do; optax alone would factor none of them (heads, kv < 128).
  factor_heads_as_matrix: bool = True
  # AdamW.
  b1: float = 0.9
  b2: float = 0.999
  adam_eps: float = 1e-8
  weight_decay: float = 0.0

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise UsageError(f"OptimizerConfig.name={self.name!r}: expected one of {OPTIMIZERS}.")
    if self.schedule not in SCHEDULES:
      raise UsageError(f"OptimizerConfig.schedule={self.schedule!r}: expected one of {SCHEDULES}.")
    if self.schedule == "cosine" and not self.total_steps:
      raise UsageError("OptimizerConfig: schedule='cosine' needs total_steps.")


def rsqrt_schedule(learning_rate: float, warmup_steps: int) -> Callable:
  """T5X 'constant * rsqrt_decay': learning_rate / sqrt(max(step, warmup_steps))."""
  warmup = max(warmup_steps, 1)
  return lambda step: learning_rate * jnp.asarray(jnp.maximum(step, warmup), jnp.float32) ** -0.5


def warmup_rsqrt_schedule(learning_rate: float, warmup_steps: int) -> Callable:
  """learning_rate * min(t^-1/2, t / warmup^1.5), t = step + 1: rsqrt decay after a linear
  ramp (docs/t5_facts.md, "Optimisation").

  t counts from 1 so the first update is not multiplied by zero.
  """
  w = float(max(warmup_steps, 1))

  def schedule(step):
    t = jnp.asarray(step, jnp.float32) + 1.0
    return learning_rate * jnp.minimum(t ** -0.5, t / w ** 1.5)
  return schedule


def constant_schedule(learning_rate: float) -> Callable:
  return lambda step: jnp.full_like(jnp.asarray(step, jnp.float32), learning_rate)


def cosine_schedule(learning_rate: float, warmup_steps: int, total_steps: int,
                    end: float = 0.0) -> Callable:
  """Linear warm-up learning_rate * step / warmup, then
  end + (learning_rate - end) * (1 + cos(pi * progress)) / 2."""
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = learning_rate * step / max(warmup_steps, 1)
    progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
    decayed = end + (learning_rate - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup_steps, warm, decayed)
  return schedule


def make_schedule(config: OptimizerConfig) -> Callable:
  """The learning rate as a function of the optimizer's update count (0 first)."""
  if config.schedule == "rsqrt":
    return rsqrt_schedule(config.learning_rate, config.warmup_steps)
  if config.schedule == "warmup_rsqrt":
    return warmup_rsqrt_schedule(config.learning_rate, config.warmup_steps)
  if config.schedule == "constant":
    return constant_schedule(config.learning_rate)
  return cosine_schedule(config.learning_rate, config.warmup_steps, config.total_steps,
                         config.end_learning_rate)


def make_optimizer(config: OptimizerConfig,
                   schedule: Callable | None = None) -> optax.GradientTransformation:
  """The optimizer of `config`; `schedule` (default make_schedule(config)): pass the one
  the caller also logs, so that there is one."""
  schedule = schedule or make_schedule(config)
  if config.name == "adafactor":
    tx = ops.adafactor(
        schedule, decay_rate=config.decay_rate,
        min_dim_size_to_factor=config.min_dim_size_to_factor, epsilon1=config.epsilon1,
        clipping_threshold=config.clipping_threshold,
        multiply_by_parameter_scale=config.multiply_by_parameter_scale,
        momentum=config.momentum)
    if config.multiply_by_parameter_scale and config.epsilon2 != 1e-3:
      raise UsageError("optax.adafactor fixes epsilon2 (the parameter-scale floor) at 1e-3.")
    if config.factor_heads_as_matrix:
      tx = as_matrices(tx)
    # Adafactor is per tensor (factoring, update clipping, parameter scale):
    # run it per layer on scanned stacks so they train as unscanned layers do.
    tx = per_layer(tx)
  else:
    tx = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.adam_eps,
                     weight_decay=config.weight_decay)
  if config.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
  return tx


def update_count(opt_state) -> jax.Array:
  """The optimizer's own count of applied updates, the step its learning-rate schedule
  reads (optax's ScaleByScheduleState). A step skipped with on_nonfinite='skip' keeps the
  optimizer state and so this count, while the train state's step moves on."""
  is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=is_count) if is_count(s)]
  if not counts:
    raise ValueError("the optimizer state holds no schedule count (ScaleByScheduleState)")
  return jnp.ravel(counts[0])[0]  # per-layer (vmapped) states repeat it per layer


def _matrix_shape(shape) -> tuple:
  """3-D [big, a, b] -> [big, a*b]; [a, b, big] -> [a*b, big]; else unchanged.

  Keeps the largest axis (d_model in T5's attention kernels) and merges the
  two others (heads, kv), which are adjacent in both layouts.
  """
  if len(shape) != 3:
    return tuple(shape)
  if shape[0] >= max(shape[1:]):
    return (shape[0], shape[1] * shape[2])
  if shape[2] >= max(shape[:2]):
    return (shape[0] * shape[1], shape[2])
  return tuple(shape)


def as_matrices(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on 2-D views of 3-D leaves (see _matrix_shape); other leaves as they are.

  Adafactor's per-tensor parts (update clipping, parameter-scale RMS) do not
  change under a reshape; only which axes the second moments factor over does.
  """
  flat = lambda tree: jax.tree.map(lambda x: x.reshape(_matrix_shape(x.shape)), tree)

  def init(params):
    return inner.init(flat(params))

  def update(updates, state, params=None):
    new, state = inner.update(flat(updates), state, None if params is None else flat(params))
    return jax.tree.map(lambda u, ref: u.reshape(ref.shape), new, updates), state

  return optax.GradientTransformation(init, update)


def _stack_size(path, leaf) -> int:
  """Leading (layers) size of a scanned stack's parameter; 0 for any other leaf."""
  keys = [getattr(k, "key", None) for k in path]
  return leaf.shape[0] if SCANNED_LAYERS in keys else 0


def _vmapped(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` applied independently to every slice along the leading axis."""
  return optax.GradientTransformation(
      jax.vmap(inner.init), lambda u, s, p=None: jax.vmap(inner.update)(u, s, p))


def per_layer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """Runs `inner` on each layer of a scanned stack as if it were its own tensor.

  Parameters under a `layers` key (`T5Config.scan_layers`) carry a leading
  [num_layers] axis. A per-tensor optimizer would otherwise see one
  [layers, a, b] tensor: one update-clipping RMS and one parameter scale for
  the whole stack instead of one per layer. Here each stack (grouped by its
  number of layers) gets `inner` vmapped over that axis, so updates equal the
  unscanned model's up to float rounding, and optimizer states keep the
  leading layers axis (their shardings still follow the parameters').

  Trees without stacked leaves get `inner` itself, state layout unchanged.
  Groups come from static shapes and key paths, so init and update agree.
  """
  def groups(tree):
    sizes = jax.tree_util.tree_map_with_path(_stack_size, tree)
    return sizes, sorted(set(jax.tree.leaves(sizes)))

  def parts(tree):
    sizes, keys = groups(tree)
    if keys in ([], [0]):
      return None
    return [optax.masked(_vmapped(inner) if k else inner,
                         jax.tree.map(lambda n, k=k: n == k, sizes)) for k in keys]

  def init(params):
    txs = parts(params)
    return inner.init(params) if txs is None else tuple(t.init(params) for t in txs)

  def update(updates, state, params=None):
    txs = parts(updates)
    if txs is None:
      return inner.update(updates, state, params)
    new_state = []
    for t, s in zip(txs, state):  # disjoint masks: each pass updates its own leaves
      updates, s = t.update(updates, s, params)
      new_state.append(s)
    return updates, tuple(new_state)

  return optax.GradientTransformation(init, update)
