"""Adafactor as one fused update per tensor, state-compatible with optax.adafactor.

    tx = adafactor(schedule, decay_rate=0.8, clipping_threshold=1.0,
                   multiply_by_parameter_scale=True)  # what t5jax.optim builds

optax.adafactor chains five transformations (factored RMS, block-RMS
clipping, learning rate, parameter scale, sign flip). Under XLA-CPU that chain
becomes a dozen full passes over every tensor per step (the parameter-scale
RMS alone is two reductions plus a select of the whole tensor), about a fifth
of a T5-small training step. Here each tensor's update is written once:

    g2      = g**2 + eps1
    v_row   = beta2_t * v_row + (1 - beta2_t) * mean(g2, largest axis)   (factored)
    v_col   = beta2_t * v_col + (1 - beta2_t) * mean(g2, 2nd largest)
    u       = g * rsqrt(v_row / mean(v_row)) * rsqrt(v_col)              (or g * rsqrt(v))
    u      /= max(1, rms(u) / clipping_threshold)
    update  = -lr * max(rms(param), 1e-3) * u

beta2_t = 1 - (t + 1)**-decay_rate. That is optax's arithmetic in optax's
order, so updates agree to float rounding, and init() is optax.adafactor's own,
so the optimizer state (and checkpoints) have the same tree either way.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5jax.reductions import tree_sum_leading


def factored_dims(shape, min_dim_size_to_factor: int) -> tuple[int, int] | None:
  """(second largest, largest) axis, or None when that axis is < min size (optax's rule)."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def _mean(x: jax.Array, axis: int) -> jax.Array:
  """jnp.mean(x, axis); on CPU, axis 0 of a wide matrix as a tree of adds
  (t5jax.reductions): ~95 -> ~19 ms for T5.1.1's [512, 32128] logits kernel."""
  if axis == 0 and x.ndim == 2 and x.shape[1] >= 8192 and jax.default_backend() == "cpu":
    return tree_sum_leading(x)[0] / x.shape[0]
  return jnp.mean(x, axis=axis)


def _rms(x: jax.Array) -> jax.Array:
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
