"""Checkpoints: exact resume after kill -9, SIGTERM, corrupt and foreign checkpoints."""

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthetic_batches import (REFERENCE_FLAGS, final_params, reference_run, run_script,
                               script_command, script_env, step_losses)
from t5jax.checkpoints import CheckpointConfig, Checkpointer, ConfigMismatchError
from t5jax.config import get_config

TINY = get_config("tiny", vocab_size=128)


def wait_for_steps(run_dir, proc, n, timeout=180):
  path = os.path.join(run_dir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stdout.read()[-3000:]}")
    if os.path.exists(path) and len(open(path).read().splitlines()) >= n:
      return
    time.sleep(0.05)
  raise AssertionError("training did not reach the step in time")


def test_kill_9_then_restart_is_bitwise_identical(tmp_path):
  flags = REFERENCE_FLAGS + ("--step_delay", 0.4)
  proc = subprocess.Popen(script_command(tmp_path, *flags), env=script_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  wait_for_steps(tmp_path, proc, 5)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(tmp_path / "final_params.npz")
  restarted = run_script(tmp_path, *flags)
  assert restarted.returncode == 0, restarted.stdout[-3000:] + restarted.stderr[-3000:]
  assert "Resumed from" in restarted.stdout
  reference = reference_run()
  assert step_losses(tmp_path) == step_losses(reference)  # exact float equality, every step
  want = final_params(reference)
  got = final_params(tmp_path)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_sigterm_saves_exits_0_and_resumes(tmp_path):
  flags = ("--steps", 40, "--ckpt_every", 100, "--step_delay", 0.3)
  proc = subprocess.Popen(script_command(tmp_path, *flags), env=script_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  wait_for_steps(tmp_path, proc, 3)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "Received SIGTERM: saved step" in out
  saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert len(saved) == 1 and 3 <= saved[0] < 40  # no periodic save was due: the signal's
  resumed = run_script(tmp_path, "--steps", saved[0] + 1, "--ckpt_every", 100)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert f"Resumed from {tmp_path} at step {saved[0]}." in resumed.stdout
  assert f"STOPPED done at step {saved[0] + 1}" in resumed.stdout


# --- In-process checks of the Checkpointer on a small tree ------------------------

def small_tree(x):
  return {"state": {"w": jnp.full((4, 3), x, jnp.float32), "step": jnp.asarray(x, jnp.int32)},
          "rng": jax.random.PRNGKey(0)}


def abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def test_interrupted_save_is_invisible_and_corrupt_latest_falls_back(tmp_path, capsys):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(every_steps=1, asynchronous=False), TINY)
  for step in (1, 2):
    ckpt.save(step, small_tree(step))
  ckpt.close()
  # A save killed mid-write leaves only orbax's temporary directory.
  os.makedirs(tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234" / "state")
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(asynchronous=False), TINY)
  assert ckpt.all_steps() == [1, 2]
  step, tree, _ = ckpt.restore_latest(abstract(small_tree(0)))
  assert step == 2 and float(tree["state"]["w"][0, 0]) == 2.0
  # Corrupt step 2's array data: restore falls back to step 1 with a warning.
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "state"):
    for name in files:
      if "manifest" in name or name.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  step, tree, _ = ckpt.restore_latest(abstract(small_tree(0)))
  assert step == 1 and float(tree["state"]["w"][0, 0]) == 1.0
  assert "Checkpoint step 2" in capsys.readouterr().out
  # The unreadable step is set aside, so step 2 can be written again.
  assert ckpt.all_steps() == [1]
  assert any(d.startswith("2.corrupt-") for d in os.listdir(tmp_path / "checkpoints"))
  assert ckpt.save(2, small_tree(2))
  ckpt.wait()
  assert ckpt.restore_latest(abstract(small_tree(0)))[0] == 2
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(asynchronous=False), TINY)
  # Nothing restorable: a clear error, not a silent fresh start.
  for root, _, files in os.walk(tmp_path / "checkpoints"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises(RuntimeError, match="No checkpoint .* could be restored"):
    ckpt.restore_latest(abstract(small_tree(0)))
  ckpt.close()


def test_refuses_a_different_model_config(tmp_path):
  Checkpointer(str(tmp_path), CheckpointConfig(), TINY).close()
  with pytest.raises(ConfigMismatchError, match="d_model: checkpoint 64 vs now 128"):
    Checkpointer(str(tmp_path), CheckpointConfig(), TINY.replace(d_model=128))


def test_keeps_last_k(tmp_path):
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(every_steps=1, keep=2, asynchronous=True),
                      TINY)
  for step in range(1, 6):
    ckpt.save(step, small_tree(step))
  ckpt.wait()
  assert ckpt.all_steps() == [4, 5]
  ckpt.close()


def test_keeps_best_by_eval_metric_besides_last_k(tmp_path):
  config = CheckpointConfig(every_steps=1, keep=1, asynchronous=False, best_metric="eval/loss",
                            best_mode="min")
  ckpt = Checkpointer(str(tmp_path), config, TINY)
  for step, loss in zip((1, 2, 3, 4), (3.0, 1.0, 2.0, 4.0)):
    ckpt.save(step, small_tree(step), {"eval/loss": loss})
  assert ckpt.all_steps() == [2, 4]  # the best (lowest loss) and the latest
  ckpt.close()
  # The run directory says which step is best, for eval / infer / convert --step=best.
  # `ranked`: every evaluated step, best first, for loading to fall back along.
  best = json.load(open(tmp_path / "best.json"))
  assert best == {"step": 2, "metric": "eval/loss", "value": 1.0, "mode": "min",
                  "ranked": [{"step": 2, "value": 1.0}, {"step": 3, "value": 2.0},
                             {"step": 1, "value": 3.0}, {"step": 4, "value": 4.0}]}


def test_parameter_free_fields_may_change_others_are_refused(tmp_path):
  Checkpointer(str(tmp_path), CheckpointConfig(), TINY).close()
  changed = TINY.replace(dtype="bfloat16", dropout_rate=0.3, remat_policy="full",
                         scan_layers=True)
  ckpt = Checkpointer(str(tmp_path), CheckpointConfig(), changed)
  assert ckpt.changed == {"dtype": ("float32", "bfloat16"), "dropout_rate": (0.0, 0.3),
                          "remat_policy": ("none", "full"), "scan_layers": (False, True)}
  ckpt.close()
  assert json.load(open(tmp_path / "model_config.json"))["dtype"] == "bfloat16"
  for field, value in (("num_heads", 8), ("feed_forward_proj", "relu"),
                       ("layer_norm_epsilon", 1e-5)):
    with pytest.raises(ConfigMismatchError, match=f"{field}: checkpoint"):
      Checkpointer(str(tmp_path), CheckpointConfig(), changed.replace(**{field: value}))
