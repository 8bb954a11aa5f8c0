"""Trains the tiny model on synthetic batches: the subprocess of the trainer tests.

    python tests/trainer_script.py RUN_DIR --steps 8 --ckpt_every 2 [--devices 8]
        [--mesh 8x1] [--rules 1d] [--step_delay 0.2] [--log_every 1] [--sync_every 0]
        [--num_processes 2 --process_id 0 --coordinator localhost:12345]

Writes RUN_DIR/final_params.npz (process 0) when it reaches --steps.
"""

import argparse
import os
import sys
import time
import zlib

parser = argparse.ArgumentParser()
parser.add_argument("run_dir")
parser.add_argument("--steps", type=int, default=8)
parser.add_argument("--ckpt_every", type=int, default=2)
parser.add_argument("--devices", type=int, default=8)
parser.add_argument("--mesh", default="-1x1")
parser.add_argument("--rules", default="1d")
parser.add_argument("--batch_size", type=int, default=16)
parser.add_argument("--step_delay", type=float, default=0.0)
parser.add_argument("--log_every", type=int, default=1)
parser.add_argument("--sync_every", type=int, default=0)
parser.add_argument("--num_processes", type=int, default=1)
parser.add_argument("--process_id", type=int, default=0)
parser.add_argument("--coordinator", default=None)
parser.add_argument("--saved_position", action="store_true",
                    help="a data source that saves its position and refuses to replay")
parser.add_argument("--grain", action="store_true",
                    help="the grain pipeline over a synthetic tokenised corpus; each process "
                         "logs a digest of every row it trains on to RUN_DIR/rows.<p>.txt")
args = parser.parse_args()

os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                           + os.environ.get("T5JAX_TEST_XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from synthetic_batches import FAST_COMPILE, data_fn  # noqa: E402
from t5jax import trainer  # noqa: E402
from t5jax.checkpoints import CheckpointConfig  # noqa: E402
from t5jax.config import get_config  # noqa: E402
from t5jax.optim import OptimizerConfig  # noqa: E402
from t5jax.partitioning import MeshConfig  # noqa: E402

if args.num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  trainer.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

data, model = (int(x) for x in args.mesh.split("x"))
config = trainer.TrainConfig(
    run_dir=args.run_dir, num_steps=args.steps, batch_size=args.batch_size, seed=0,
    mesh=MeshConfig(data, model, args.rules),
    optimizer=OptimizerConfig(schedule="constant", learning_rate=0.05, min_dim_size_to_factor=32),
    checkpoint=CheckpointConfig(every_steps=args.ckpt_every, keep=3),
    log_every=args.log_every, sync_every=args.sync_every, tensorboard=False,
    compiler_options=FAST_COMPILE, peak_flops=1e12)
base = data_fn(args.batch_size, jax.process_index(), jax.process_count())


def slow_data(start_step):
  for batch in base(start_step):
    time.sleep(args.step_delay)  # a slow input pipeline leaves time to kill us mid-run
    yield batch


class SavedPosition:
  """This process's rows of batch k, k+1, ...; its position is saved with each
  checkpoint (as t5jax.data.BatchIterator's), and it fails if asked to replay."""

  def __init__(self, start_step):
    self.next, self.must_restore = start_step, start_step > 0

  def __iter__(self):
    return self

  def __next__(self):
    assert not self.must_restore, "replayed instead of restoring the saved position"
    time.sleep(args.step_delay)
    batch = next(base(self.next))
    self.next += 1
    return batch

  def save_state(self, directory):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "next.txt"), "w") as f:
      f.write(str(self.next))

  def restore_state(self, directory):
    with open(os.path.join(directory, "next.txt")) as f:
      self.next, self.must_restore = int(f.read()), False


def grain_data(start_step):
  """GrainBatches over random 'documents' of ids 3..99 (sentinels from 127 down), rows of
  16/4 tokens, logging (step, row digests) of what this process reads."""
  from t5jax.data import grain_pipeline as gp
  rng = np.random.default_rng(0)
  lengths = rng.integers(5, 60, 400)
  flat = rng.integers(3, 100, lengths.sum()).astype(np.int32)
  splits = np.concatenate([[0], np.cumsum(lengths)])
  stream = gp.CorpusStream(flat, splits, np.arange(400),
                           gp.StreamSpec(inputs_length=16, targets_length=4), 128, 20)

  class Logged(gp.GrainBatches):
    def __next__(self):
      batch = super().__next__()
      time.sleep(args.step_delay)
      rows = [zlib.crc32(r.tobytes()) for r in batch["encoder_input_tokens"]]
      with open(os.path.join(args.run_dir, f"rows.{jax.process_index()}.txt"), "a") as f:
        f.write(f"{self.step} {' '.join(map(str, rows))}\n")
      return batch

  return Logged(stream, args.batch_size, start_step=start_step,
                process_index=jax.process_index(), process_count=jax.process_count())


model_config = get_config("tiny", vocab_size=128, dropout_rate=0.1)
source = grain_data if args.grain else SavedPosition if args.saved_position else slow_data
result = trainer.train(model_config, config, source)
print(f"STOPPED {result.stopped} at step {result.step}", flush=True)
if result.stopped == "done" and jax.process_index() == 0:
  from jax.experimental import multihost_utils
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(
              multihost_utils.process_allgather(result.state.params, tiled=True))[0]}
  np.savez(os.path.join(args.run_dir, "final_params.npz"), **flat)
elif result.stopped == "done" and jax.process_count() > 1:
  from jax.experimental import multihost_utils
  multihost_utils.process_allgather(result.state.params, tiled=True)
