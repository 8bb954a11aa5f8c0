"""Resuming: the input pipeline's saved position (no replay), and elastic resume onto
another mesh, device count or layer layout."""

import json
import os
import time

import jax
import numpy as np
import pytest

from synthetic_batches import FAST_COMPILE, final_params, make_batch, run_script
from t5jax import trainer
from t5jax.checkpoints import CheckpointConfig
from t5jax.config import get_config
from t5jax.model import scan_params
from t5jax.optim import OptimizerConfig
from t5jax.partitioning import MeshConfig

TINY = get_config("tiny", vocab_size=128, dropout_rate=0.1)


class Source:
  """A data source with a position (as t5jax.data.BatchIterator): batch k is
  make_batch(k). It refuses to replay: reading from start_step > 0 without a
  restored position fails, so a resume that would skip batches is caught."""

  def __init__(self, start_step, batch_size=16, replay=False):
    self.next_index, self.batch_size = start_step, batch_size
    self.must_restore = start_step > 0 and not replay
    self.saves = []

  def __iter__(self):
    return self

  def __next__(self):
    assert not self.must_restore, "resumed by replaying batches, not from the saved position"
    batch = make_batch(self.next_index, self.batch_size)
    self.next_index += 1
    return batch

  def save_state(self, directory):
    time.sleep(0.05)  # a slow save: the reader thread must not move meanwhile
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "position.json"), "w") as f:
      json.dump({"next": self.next_index}, f)
    self.saves.append(self.next_index)

  def restore_state(self, directory):
    with open(os.path.join(directory, "position.json")) as f:
      self.next_index = json.load(f)["next"]
    self.must_restore = False


def config(run_dir, num_steps, mesh=MeshConfig(-1, 1), **kw):
  base = dict(run_dir=str(run_dir), num_steps=num_steps, batch_size=16, seed=0, mesh=mesh,
              optimizer=OptimizerConfig(schedule="constant", learning_rate=0.05,
                                        min_dim_size_to_factor=32),
              checkpoint=CheckpointConfig(every_steps=3, keep=5, asynchronous=True),
              log_every=1, tensorboard=False, compiler_options=FAST_COMPILE, peak_flops=1e12,
              handle_signals=False, prefetch=2)
  base.update(kw)
  return trainer.TrainConfig(**base)


def host(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def assert_trees_equal(got, want):
  got, want = host(got), host(want)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_resume_continues_the_saved_position_without_replay(tmp_path, capsys):
  sources = []

  def data_fn(start):
    sources.append(Source(start))
    return sources[-1]

  whole = trainer.train(TINY, config(tmp_path / "whole", 8), data_fn, verbose=False)
  # Stopped at step 5 (a checkpoint at 3, the final save at 5), read ahead by the prefetcher.
  first = trainer.train(TINY, config(tmp_path / "parts", 5), data_fn)
  assert first.step == 5 and len(sources[-1].saves) == 2  # steps 3 and 5
  resumed = trainer.train(TINY, config(tmp_path / "parts", 8), data_fn)
  out = capsys.readouterr().out
  assert "Input pipeline continues from its position saved at step 5 (no replay)." in out
  assert resumed.step == 8
  assert_trees_equal(resumed.state.params, whole.state.params)


def test_resume_without_a_saved_position_replays(tmp_path, capsys):
  trainer.train(TINY, config(tmp_path, 3), lambda s: (b for b in Source(s, replay=True)),
                verbose=False)
  # The first run's source was a plain iterator (no save_state): nothing saved.
  assert not os.path.exists(tmp_path / "checkpoints" / "3" / "data")
  result = trainer.train(TINY, config(tmp_path, 4), lambda s: Source(s, replay=True))
  assert result.step == 4
  assert "replaying 3 batches" in capsys.readouterr().out


def test_elastic_resume_other_mesh_and_layer_layout(tmp_path, capsys):
  saved = trainer.train(TINY, config(tmp_path, 3, mesh=MeshConfig(4, 2, "2d")),
                        lambda s: Source(s), verbose=False)
  saved_params = jax.device_get(saved.state.params)
  # Another mesh and rule set, and parameter-free config changes: restored bitwise.
  other = trainer.train(TINY.replace(dropout_rate=0.0, remat_policy="full"),
                        config(tmp_path, 3, mesh=MeshConfig(8, 1, "fsdp"), microbatches=2),
                        lambda s: Source(s))
  out = capsys.readouterr().out
  assert "Changed since step 3 was saved: remat_policy none -> full, dropout_rate 0.1 -> 0.0, " \
         "mesh 4x2 -> 8x1, rules 2d -> fsdp, microbatches 1 -> 2." in out
  assert_trees_equal(other.state.params, saved_params)
  # Scanned: the same params, stacked, and the optimizer state converted with them.
  scanned = trainer.train(TINY.replace(scan_layers=True), config(tmp_path, 3),
                          lambda s: Source(s))
  assert "scan_layers False -> True" in capsys.readouterr().out
  assert_trees_equal(scanned.state.params, scan_params(TINY, saved_params)[1])
  # Training on scanned from the converted state matches training on unscanned (the
  # optimizer state carried over; a fresh one would differ by far more than rounding).
  # Without dropout: scanned layers draw other dropout masks than per-layer ones.
  no_dropout = TINY.replace(dropout_rate=0.0)
  continued = trainer.train(no_dropout.replace(scan_layers=True), config(tmp_path, 5),
                            lambda s: Source(s), verbose=False)
  reference_dir = tmp_path / "reference"
  trainer.train(TINY, config(reference_dir, 3), lambda s: Source(s), verbose=False)
  reference = trainer.train(no_dropout, config(reference_dir, 5), lambda s: Source(s),
                            verbose=False)
  got = host(scan_params(TINY, jax.device_get(reference.state.params))[1])
  for k, v in host(continued.state.params).items():
    np.testing.assert_allclose(v, got[k], rtol=2e-5, atol=2e-6, err_msg=k)
  # And back to per-layer from the scanned checkpoint at step 5.
  back = trainer.train(no_dropout, config(tmp_path, 5), lambda s: Source(s), verbose=False)
  assert_trees_equal(scan_params(TINY, jax.device_get(back.state.params))[1],
                     continued.state.params)


def test_architecture_change_is_refused_naming_the_field(tmp_path):
  trainer.train(TINY, config(tmp_path, 1), lambda s: Source(s), verbose=False)
  with pytest.raises(ValueError, match="d_ff: checkpoint 128 vs now 256"):
    trainer.train(TINY.replace(d_ff=256), config(tmp_path, 2), lambda s: Source(s))


def test_resume_on_one_device_restores_the_8_device_params(tmp_path):
  """A run of 8 devices (4x2) restored by a process with a single device."""
  proc = run_script(tmp_path, "--steps", 4, "--ckpt_every", 2, "--mesh", "4x2", "--rules", "2d")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  want = final_params(tmp_path)
  os.remove(tmp_path / "final_params.npz")
  proc = run_script(tmp_path, "--steps", 4, "--devices", 1, "--mesh", "1x1")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "mesh 4x2 -> 1x1" in proc.stdout and "devices 8 -> 1" in proc.stdout
  got = final_params(tmp_path)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_early_stopping_keeps_and_records_the_best(tmp_path, capsys):
  scores = {1: 1.0, 2: 2.0, 3: 1.5, 4: 1.0, 5: 0.5, 6: 3.0}
  checkpoint = CheckpointConfig(every_steps=100, keep=1, asynchronous=False,
                                best_metric="eval/score", best_mode="max",
                                early_stopping_patience=2)
  result = trainer.train(TINY, config(tmp_path, 6, eval_every=1, checkpoint=checkpoint),
                         lambda s: Source(s), eval_hook=lambda step, _: {
                             "eval/score": scores[step]})
  assert result.stopped == "early_stopped" and result.step == 4
  assert "Early stopping at step 4: 2 evals without a better eval/score than 2 (step 2)" \
      in capsys.readouterr().out
  assert json.load(open(tmp_path / "best.json")) == {
      "step": 2, "metric": "eval/score", "value": 2.0, "mode": "max",
      "ranked": [{"step": 2, "value": 2.0}, {"step": 3, "value": 1.5},
                 {"step": 1, "value": 1.0}, {"step": 4, "value": 1.0}]}
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2, 4]
