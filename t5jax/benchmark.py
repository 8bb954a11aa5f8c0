"""Training-step throughput on synthetic data: what `make bench` reports.

    measure_train_step(get_config("t5.1.1-base", dtype="bfloat16"), 128, 512, 114, steps=20)
    -> {'step_time': s, 'tokens_per_s': ..., 'seq_per_s': ..., 'mfu': ..., ...}
    runner = TrainStepRunner(config, 128, 512, 114); runner.block(steps=5)  # s / step

Uses the same partitioning, optimizer and jitted step as `trainer.train`, so
the number measures the real training step, minus input pipeline and logging.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from t5jax import flops, losses, optim, partitioning, train_step as ts
from t5jax.trainer import create_state


def format_count(n: int) -> str:
  """12345678 -> '12.35M' (parameter counts in benchmark tables)."""
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(n)


def synthetic_batch(batch_size: int, input_len: int, target_len: int, vocab_size: int,
                    seed: int = 0) -> dict:
  """Full-length random rows (no padding): the MFU formula counts every position."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, vocab_size, (batch_size, target_len), dtype=np.int32)
  return {"encoder_input_tokens": rng.integers(2, vocab_size, (batch_size, input_len),
                                               dtype=np.int32),
          "decoder_input_tokens": np.concatenate(
              [np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1),
          "decoder_target_tokens": targets,
          "decoder_loss_weights": np.ones((batch_size, target_len), np.float32)}


class TrainStepRunner:
  """A jitted training step on a synthetic batch, compiled and warmed up on creation;
  `block(steps)` times `steps` more steps (mean seconds per step). For side-by-side
  benchmarks that alternate blocks of several runners in one process.

  batch_size is global. Steps are dispatched back to back and timed as a block,
  as in training, so host dispatch overlaps device work.
  """

  def __init__(self, config, batch_size: int, input_len: int, target_len: int, *,
               mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
               optimizer: optim.OptimizerConfig = optim.OptimizerConfig(),
               microbatches: int = 1, warmup_steps: int = 2,
               compiler_options: dict | None = None):
    self.mesh = partitioning.make_mesh(mesh)
    rule_set = partitioning.rules(mesh.rules)
    tx = optim.make_optimizer(optimizer)
    _, state_sh = ts.state_shardings(self.mesh, config, rule_set, tx)
    step_fn = ts.make_train_step(config, tx, losses.LossConfig(), None, microbatches)
    self.compiled = ts.jit_steps(self.mesh, rule_set, state_sh, step_fn,
                                 compiler_options=compiler_options)
    self.state = create_state(config, tx, self.mesh, rule_set, state_sh,
                              compiler_options=compiler_options)
    rows = batch_size // jax.process_count()
    local = synthetic_batch(batch_size, input_len, target_len, config.vocab_size)
    local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows]
             for k, v in local.items()}
    self.batch = partitioning.global_batch(local, self.mesh, rule_set)
    self.rng = jax.random.PRNGKey(0)
    start = time.perf_counter()
    self.metrics = None
    self._steps(max(warmup_steps, 1))
    jax.block_until_ready(self.metrics)
    self.warmup_time = time.perf_counter() - start

  def _steps(self, n: int) -> None:
    for _ in range(n):
      self.state, self.metrics = self.compiled.train_step(self.state, self.batch, self.rng)

  def block(self, steps: int) -> float:
    start = time.perf_counter()
    self._steps(steps)
    jax.block_until_ready((self.state, self.metrics))
    return (time.perf_counter() - start) / steps

  @property
  def loss(self) -> float:
    return float(self.metrics["loss"])


def measure_train_step(config, batch_size: int, input_len: int, target_len: int, steps: int = 10,
                       *, mesh: partitioning.MeshConfig = partitioning.MeshConfig(),
                       optimizer: optim.OptimizerConfig = optim.OptimizerConfig(),
                       microbatches: int = 1, peak_flops: float | None = None,
                       warmup_steps: int = 2, compiler_options: dict | None = None) -> dict:
  """Mean wall time of `steps` training steps after `warmup_steps` (compilation
  excluded), with throughput and MFU; see TrainStepRunner."""
  runner = TrainStepRunner(config, batch_size, input_len, target_len, mesh=mesh,
                           optimizer=optimizer, microbatches=microbatches,
                           warmup_steps=warmup_steps, compiler_options=compiler_options)
  step_time = runner.block(steps)
  peak, peak_source = flops.peak_flops_per_device(peak_flops, config.dtype)
  step_flops = flops.train_step_flops(config, batch_size, input_len, target_len)
  devices = runner.mesh.devices.size
  return {
      "step_time": step_time,
      "tokens_per_s": batch_size * (input_len + target_len) / step_time,
      "seq_per_s": batch_size / step_time,
      "mfu": flops.mfu(step_flops, step_time, devices, peak),
      "tflops_per_device": step_flops / step_time / devices / 1e12,
      "flops_per_step": step_flops,
      "peak_flops_per_device": peak,
      "peak_source": peak_source,
      "devices": devices,
      "warmup_time": runner.warmup_time,
      "loss": runner.loss,
  }
