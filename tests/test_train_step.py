"""Gradient accumulation equals the full batch; non-finite steps can be skipped."""

import jax
import numpy as np

from synthetic_batches import FAST_COMPILE, make_batch
from t5jax import partitioning as pt
from t5jax.losses import LossConfig
from t5jax.optim import make_optimizer
from t5jax.train_step import jit_steps, make_train_step, state_shardings
from t5jax.trainer import create_state
from test_partitioning import CONFIG, OPT, initial_params, run_steps

CONFIG0 = CONFIG.replace(dropout_rate=0.0)  # dropout masks differ with microbatch shapes


def test_gradient_accumulation_equals_full_batch():
  mesh = pt.MeshConfig(data=8, model=1)
  full_losses, full_params, _ = run_steps(mesh, microbatches=1, config=CONFIG0)
  acc_losses, acc_params, _ = run_steps(mesh, microbatches=2, config=CONFIG0)
  np.testing.assert_allclose(acc_losses, full_losses, rtol=2e-5)
  # Adafactor divides by sqrt of tiny second moments at step 1, which magnifies
  # summation-order rounding of near-zero gradients: a looser absolute bound.
  for a, b in zip(jax.tree.leaves(acc_params), jax.tree.leaves(full_params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4)


def test_skip_nonfinite_keeps_params():
  mesh = pt.make_mesh(pt.MeshConfig(1, 1), jax.devices()[:1])
  rule_set = pt.rules("1d")
  tx = make_optimizer(OPT)
  _, sh = state_shardings(mesh, CONFIG0, rule_set, tx)
  # A fixed normaliser of 0 makes the loss and gradients infinite.
  step = make_train_step(CONFIG0, tx, LossConfig(normalization=0.0), None, skip_nonfinite=True)
  compiled = jit_steps(mesh, rule_set, sh, step, compiler_options=FAST_COMPILE)
  params = initial_params(CONFIG0)
  state = create_state(CONFIG0, tx, mesh, rule_set, sh, params=params,
                       compiler_options=FAST_COMPILE)
  state, metrics = compiled.train_step(state, pt.global_batch(make_batch(0), mesh, rule_set),
                                       jax.random.PRNGKey(0))
  assert not bool(metrics["finite"])
  assert int(state.step) == 1
  for a, b in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_logged_learning_rate_is_the_one_applied_after_a_skipped_step():
  """The schedule reads the optimizer's own update count, which a skipped step keeps: the
  step after a skip logs (and applies) the rate of the update count, not of the step."""
  from t5jax.optim import OptimizerConfig, make_schedule, update_count
  mesh = pt.make_mesh(pt.MeshConfig(1, 1), jax.devices()[:1])
  rule_set = pt.rules("1d")
  opt = OptimizerConfig(schedule="cosine", learning_rate=0.1, warmup_steps=10, total_steps=20,
                        min_dim_size_to_factor=32)
  schedule = make_schedule(opt)
  tx = make_optimizer(opt, schedule)
  _, sh = state_shardings(mesh, CONFIG0, rule_set, tx)
  steps = {name: jit_steps(mesh, rule_set, sh, make_train_step(
      CONFIG0, tx, LossConfig(normalization=norm), schedule, skip_nonfinite=True),
      compiler_options=FAST_COMPILE).train_step
      for name, norm in (("bad", 0.0), ("good", "num_real_target_tokens"))}
  state = create_state(CONFIG0, tx, mesh, rule_set, sh, params=initial_params(CONFIG0),
                       compiler_options=FAST_COMPILE)
  logged = []
  for i, name in enumerate(("good", "bad", "good", "good")):
    state, metrics = steps[name](state, pt.global_batch(make_batch(i), mesh, rule_set),
                                 jax.random.PRNGKey(i))
    logged.append(float(metrics["learning_rate"]))
  assert int(state.step) == 4 and int(update_count(state.opt_state)) == 3
  # Update counts 0, 1 (skipped), 1, 2: warm-up rates 0, 0.01, 0.01, 0.02.
  np.testing.assert_allclose(logged, [0.0, 0.01, 0.01, 0.02], rtol=1e-6)
