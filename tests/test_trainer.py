"""The training loop end to end: multi-host, eval, finetuning init, MFU numbers."""

import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from synthetic_batches import (FAST_COMPILE, REFERENCE_FLAGS, data_fn, final_params,
                               make_batch, reference_run, script_command, script_env,
                               step_losses)
from t5jax import trainer
from t5jax.checkpoints import CheckpointConfig
from t5jax.config import get_config
from t5jax.model import init_params
from t5jax.optim import OptimizerConfig
from t5jax.partitioning import MeshConfig


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_x_4_devices_match_one_process_x_8(tmp_path):
  port = free_port()
  flags = REFERENCE_FLAGS + ("--devices", 4, "--num_processes", 2,
                             "--coordinator", f"localhost:{port}")
  procs = [subprocess.Popen(script_command(tmp_path, *flags, "--process_id", i),
                            env=script_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
  assert "(2 process(es)" in outs[0]
  reference = reference_run()
  got, want = step_losses(tmp_path), step_losses(reference)
  assert got.keys() == want.keys()
  np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                             rtol=1e-5)
  ref_params = final_params(reference)
  for k, v in final_params(tmp_path).items():
    np.testing.assert_allclose(v, ref_params[k], rtol=1e-4, atol=1e-5, err_msg=k)


def small_config(run_dir, **kw):
  base = dict(run_dir=str(run_dir), num_steps=4, batch_size=8, mesh=MeshConfig(-1, 1),
              optimizer=OptimizerConfig(schedule="constant", learning_rate=0.01),
              checkpoint=CheckpointConfig(every_steps=2, asynchronous=False),
              log_every=1, tensorboard=False, compiler_options=FAST_COMPILE, peak_flops=1e12,
              handle_signals=False)
  base.update(kw)
  return trainer.TrainConfig(**base)


def test_finetune_from_params_with_eval_and_metrics(tmp_path):
  model = get_config("tiny", vocab_size=128)
  params = init_params(model, jax.random.PRNGKey(7))
  eval_data = lambda: iter([make_batch(1000 + i, 8) for i in range(2)])
  config = small_config(tmp_path, eval_every=2, checkpoint=CheckpointConfig(
      every_steps=2, asynchronous=False, best_metric="eval/loss"))
  result = trainer.train(model, config, data_fn(8), init_params=params, eval_data_fn=eval_data,
                         verbose=False)
  assert result.stopped == "done" and result.step == 4
  assert [h["step"] for h in result.history] == [1, 2, 3, 4]
  later = result.history[-1]
  for key in ("loss", "accuracy", "z_loss", "learning_rate", "grad_norm", "step_time",
              "tokens_per_s", "seq_per_s", "mfu"):
    assert np.isfinite(later[key]), key
  assert later["learning_rate"] == pytest.approx(0.01)
  assert later["seq_per_s"] == pytest.approx(8 / later["step_time"])
  lines = open(tmp_path / "metrics.jsonl").read().splitlines()
  assert len(lines) == 4 and "eval/loss" in lines[1]
  # The first update moved the given params, not a fresh init: its loss is theirs.
  from t5jax.train_step import make_eval_step
  from t5jax.losses import LossConfig, summarize
  first = summarize(make_eval_step(model, LossConfig())(params, make_batch(0, 8)))
  assert result.history[0]["loss"] == pytest.approx(float(first["loss"]), rel=1e-4)
  # Running again resumes from the final checkpoint and has nothing left to do.
  again = trainer.train(model, config, data_fn(8), init_params=params, verbose=False)
  assert again.step == 4 and again.history == []


def test_nonfinite_loss_stops_naming_the_step(tmp_path, capsys):
  model = get_config("tiny", vocab_size=128)
  config = small_config(tmp_path, loss=trainer.losses.LossConfig(normalization=0.0))
  result = trainer.train(model, config, data_fn(8))
  assert result.stopped == "nonfinite" and result.step == 1
  out = capsys.readouterr().out
  assert "Non-finite loss" in out and "at step 0" in out
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_batch_not_divisible_by_mesh(tmp_path):
  with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
    trainer.train(get_config("tiny", vocab_size=128), small_config(tmp_path, batch_size=12),
                  data_fn(12))
