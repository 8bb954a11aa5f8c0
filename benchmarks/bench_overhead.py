"""Host overhead of the training loop: `t5jax.trainer.train` against a bare jitted loop.

    .venv/bin/python benchmarks/bench_overhead.py [--preset tiny] [--batch 8]
        [--input_len 128] [--target_len 32] [--steps 40] [--rounds 5]

Both sides run the same jitted `train_step` (t5jax.train_step.jit_steps) on the
same model and batch shapes. The bare loop dispatches it back to back over
batches already on the device and waits once at the end. The trainer gets numpy
batches from a `data_fn`, as in a real run, and does everything it does in a run
(sharding the batches, metrics, the NaN guard, signal checks, logging), minus
checkpoints and TensorBoard. Its wall time is read between two `eval_hook`
calls, `--steps` steps apart (the hook waits for the device and returns no
metrics), so the trainer's own step timer is not trusted. The tiny preset makes
a step cheap, so host work shows. Rounds alternate trainer run, bare block; the
last line is the median over rounds of the steps/s ratio:

    trainer / bare loop: X
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from t5jax import losses, optim, partitioning, trainer, train_step as ts  # noqa: E402
from t5jax.benchmark import synthetic_batch  # noqa: E402
from t5jax.checkpoints import CheckpointConfig  # noqa: E402
from t5jax.config import get_config  # noqa: E402


def _batches(args, config, count=4):
  return [synthetic_batch(args.batch, args.input_len, args.target_len, config.vocab_size, seed=i)
          for i in range(count)]


def trainer_steps_per_s(args, config, batches) -> float:
  """Wall-clock steps/s of trainer.train between its eval_hook calls at steps K and 2K."""
  stamps = []

  def hook(step, params):
    jax.block_until_ready(params)
    stamps.append(time.perf_counter())
    return {}

  def data_fn(start):
    step = start
    while True:
      yield batches[step % len(batches)]
      step += 1

  k = args.steps
  with tempfile.TemporaryDirectory() as run_dir:
    cfg = trainer.TrainConfig(
        run_dir=run_dir, num_steps=2 * k, batch_size=args.batch, log_every=k, eval_every=k,
        optimizer=optim.OptimizerConfig(), tensorboard=False, handle_signals=False,
        checkpoint=CheckpointConfig(every_steps=0, asynchronous=False), peak_flops=1e12)
    trainer.train(config, cfg, data_fn, eval_hook=hook, verbose=False)
  return k / (stamps[1] - stamps[0])


class BareLoop:
  """The same jitted step dispatched back to back over device-resident batches."""

  def __init__(self, args, config, batches):
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rule_set = partitioning.rules("1d")
    tx = optim.make_optimizer(optim.OptimizerConfig())
    _, state_sh = ts.state_shardings(mesh, config, rule_set, tx)
    step_fn = ts.make_train_step(config, tx, losses.LossConfig(), optim.make_schedule(
        optim.OptimizerConfig()))
    self.compiled = ts.jit_steps(mesh, rule_set, state_sh, step_fn)
    self.state = trainer.create_state(config, tx, mesh, rule_set, state_sh)
    self.batches = [partitioning.global_batch(b, mesh, rule_set) for b in batches]
    self.rng = jax.random.PRNGKey(0)
    self.block(2)  # compile

  def block(self, steps: int) -> float:
    start = time.perf_counter()
    metrics = None
    for i in range(steps):
      self.state, metrics = self.compiled.train_step(
          self.state, self.batches[i % len(self.batches)], jax.random.fold_in(self.rng, i))
    jax.block_until_ready((self.state, metrics))
    return steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="tiny")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input_len", type=int, default=128)
  parser.add_argument("--target_len", type=int, default=32)
  parser.add_argument("--steps", type=int, default=40, help="timed steps per block")
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  config = get_config(args.preset)
  batches = _batches(args, config)
  bare = BareLoop(args, config, batches)
  print(f"{args.preset}, batch {args.batch} x {args.input_len}/{args.target_len}, "
        f"{jax.devices()[0].platform} x {jax.device_count()}, {args.steps} steps per block, "
        f"load average {os.getloadavg()[0]:.2f}", flush=True)
  ratios = []
  for r in range(args.rounds):
    t = trainer_steps_per_s(args, config, batches)
    b = bare.block(args.steps)
    ratios.append(t / b)
    print(f"round {r + 1}: trainer {t:.2f} steps/s, bare loop {b:.2f} steps/s, "
          f"ratio {t / b:.3f}", flush=True)
  print(f"trainer / bare loop: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
  main()
