"""Schedules and optimizers against their formulas on hand-checked values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5jax.optim import OptimizerConfig, make_optimizer, make_schedule


def lr(step, **kw):
  return float(make_schedule(OptimizerConfig(**kw))(step))


def test_rsqrt_is_t5x_pretraining_schedule():
  # 1/sqrt(max(step, 10k)): 0.01 flat for 10k steps, then decays.
  for step, want in [(0, 0.01), (1, 0.01), (9_999, 0.01), (10_000, 0.01), (40_000, 0.005),
                     (1_000_000, 0.001)]:
    assert lr(step, schedule="rsqrt") == pytest.approx(want, rel=1e-6)
  assert lr(400, schedule="rsqrt", learning_rate=2.0, warmup_steps=100) == pytest.approx(0.1)


def test_warmup_rsqrt():
  # eta0 * min(t^-1/2, t / warmup^1.5), t = step + 1; warmup 100 -> peak 0.1 at t = 100.
  kw = dict(schedule="warmup_rsqrt", learning_rate=1.0, warmup_steps=100)
  assert lr(0, **kw) == pytest.approx(1 / 1000)
  assert lr(49, **kw) == pytest.approx(50 / 1000)
  assert lr(99, **kw) == pytest.approx(0.1)
  assert lr(399, **kw) == pytest.approx(0.05)


def test_constant():
  assert lr(0, schedule="constant", learning_rate=1e-3) == pytest.approx(1e-3)
  assert lr(123_456, schedule="constant", learning_rate=1e-3) == pytest.approx(1e-3)


def test_cosine():
  kw = dict(schedule="cosine", learning_rate=1.0, warmup_steps=10, total_steps=110,
            end_learning_rate=0.1)
  assert lr(0, **kw) == 0.0
  assert lr(5, **kw) == pytest.approx(0.5)
  assert lr(10, **kw) == pytest.approx(1.0)
  assert lr(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
  assert lr(110, **kw) == pytest.approx(0.1)
  assert lr(500, **kw) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="total_steps"):
    OptimizerConfig(schedule="cosine")


def numpy_adafactor(w, grads, lrs, decay=0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
  """Adafactor (Shazeer & Stern 2018, Alg. 4 with T5's settings) for one matrix."""
  w = w.astype(np.float64)
  r = np.zeros(w.shape[0])
  c = np.zeros(w.shape[1])
  for t, (g, lr_t) in enumerate(zip(grads, lrs), start=1):
    g = g.astype(np.float64)
    beta2 = 1.0 - t ** -decay
    g2 = g * g + eps1
    r = beta2 * r + (1 - beta2) * g2.mean(axis=1)
    c = beta2 * c + (1 - beta2) * g2.mean(axis=0)
    v_hat = np.outer(r, c) / r.mean()
    u = g / np.sqrt(v_hat)
    u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
    scale = max(eps2, np.sqrt(np.mean(w * w)))
    w = w - lr_t * scale * u
  return w


def test_adafactor_factored_update_matches_numpy():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(256, 128)).astype(np.float32) * 0.05
  grads = [rng.normal(size=w.shape).astype(np.float32) * s for s in (1.0, 0.3, 2.0)]
  tx = make_optimizer(OptimizerConfig(schedule="rsqrt", learning_rate=1.0, warmup_steps=2))
  state = tx.init(jnp.asarray(w))
  # The second moments are factored: a row and a column vector, no full matrix.
  shapes = sorted(x.shape for x in jax.tree.leaves(state) if x.ndim == 1 and x.size > 1)
  assert shapes == [(128,), (256,)]
  params = jnp.asarray(w)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  lrs = [1 / np.sqrt(max(s, 2)) for s in range(3)]
  np.testing.assert_allclose(params, numpy_adafactor(w, grads, lrs), rtol=1e-5, atol=1e-6)


def test_adafactor_unfactored_below_min_dim():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(64,)).astype(np.float32)
  g = rng.normal(size=(64,)).astype(np.float32)
  tx = make_optimizer(OptimizerConfig(schedule="constant", learning_rate=0.01))
  updates, _ = tx.update(jnp.asarray(g), tx.init(jnp.asarray(w)), jnp.asarray(w))
  # Step 1: beta2 = 0, so v = g^2 and u = g/|g| = sign(g); rms(u) = 1, no clipping.
  want = -0.01 * max(1e-3, np.sqrt(np.mean(w * w))) * np.sign(g)
  np.testing.assert_allclose(updates, want, rtol=1e-5)


def test_adamw_first_step_and_global_norm_clipping():
  g = jnp.asarray([3.0, -4.0])  # global norm 5
  p = jnp.asarray([1.0, 1.0])
  tx = make_optimizer(OptimizerConfig(name="adamw", schedule="constant", learning_rate=0.1,
                                      weight_decay=0.0))
  updates, _ = tx.update(g, tx.init(p), p)
  # Bias-corrected first Adam step is -lr * sign(g) (float32 rounding of 1 - b^t).
  np.testing.assert_allclose(updates, [-0.1, 0.1], rtol=1e-4)
  # clip_grad_norm chains global-norm clipping in front of the optimizer.
  tx = make_optimizer(OptimizerConfig(name="adamw", schedule="constant", clip_grad_norm=1.0))
  assert len(tx.init(p)) == 2
  clipped, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
  np.testing.assert_allclose(clipped, [0.6, -0.8], rtol=1e-6)


def test_attention_kernels_are_factored_as_matrices():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(256, 4, 32)).astype(np.float32) * 0.05  # [embed, heads, kv]
  grads = [rng.normal(size=w.shape).astype(np.float32) for _ in range(2)]
  tx = make_optimizer(OptimizerConfig(schedule="constant", learning_rate=0.01))
  state = tx.init(jnp.asarray(w))
  shapes = sorted(x.shape for x in jax.tree.leaves(state) if x.ndim == 1 and x.size > 1)
  assert shapes == [(128,), (256,)]  # rows over embed, columns over heads*kv
  params = jnp.asarray(w)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g), state, params)
    params = optax.apply_updates(params, updates)
  want = numpy_adafactor(w.reshape(256, 128), [g.reshape(256, 128) for g in grads], [0.01] * 2)
  np.testing.assert_allclose(params, want.reshape(w.shape), rtol=1e-5, atol=1e-6)
  out = jnp.asarray(rng.normal(size=(4, 32, 256)), jnp.float32)  # [heads, kv, embed]
  assert {x.shape for x in jax.tree.leaves(tx.init(out)) if x.ndim == 1 and x.size > 1} == {
      (128,), (256,)}


def test_fused_adafactor_equals_optax_adafactor():
  """The CPU path's fused Adafactor: same updates and the same state tree as optax's
  5-transform chain (the standard path)."""
  from t5jax.xla_cpu import adafactor
  rng = np.random.default_rng(3)
  params = {"kernel": rng.normal(size=(256, 160)).astype(np.float32),
            "tall": rng.normal(size=(130, 300, 2)).astype(np.float32),
            "scale": rng.normal(size=(256,)).astype(np.float32),
            "small": rng.normal(size=(64, 8)).astype(np.float32),
            # factored with column means over a leading axis of 131 rows (tree of adds)
            "wide": rng.normal(size=(131, 8200)).astype(np.float32)}
  schedule = lambda step: 0.01 / jnp.sqrt(step + 1.0)
  for clip, scale in [(1.0, True), (None, False)]:
    kw = dict(decay_rate=0.8, min_dim_size_to_factor=128, clipping_threshold=clip,
              multiply_by_parameter_scale=scale)
    ref = optax.adafactor(schedule, eps=1e-30, momentum=None, factored=True, **kw)
    fused = adafactor(schedule, **kw)
    p_ref, p_new = params, params
    s_ref, s_new = ref.init(params), fused.init(params)
    assert jax.tree.structure(s_ref) == jax.tree.structure(s_new)
    for step in range(3):
      grads = jax.tree.map(lambda p: np.sin(p * (step + 2)).astype(np.float32) * 1e-2, params)
      u, s_ref = ref.update(grads, s_ref, p_ref)
      p_ref = optax.apply_updates(p_ref, u)
      u, s_new = jax.jit(fused.update)(grads, s_new, p_new)
      p_new = optax.apply_updates(p_new, u)
    for a, b in zip(jax.tree.leaves((p_ref, s_ref)), jax.tree.leaves((p_new, s_new))):
      np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
