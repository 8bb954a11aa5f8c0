"""Deterministic synthetic encoder-decoder batches for trainer tests.

Batch `step` depends only on (seed, step), so a resumed run sees exactly the
batches an uninterrupted one would; each process takes its rows of it.
"""

import numpy as np

VOCAB = 128
# Per-executable XLA options: ~4x faster CPU compiles of the tiny model, same maths.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def make_batch(step: int, batch_size: int = 16, input_len: int = 12, target_len: int = 8,
               seed: int = 0, vocab: int = VOCAB) -> dict:
  rng = np.random.default_rng([seed, step])
  enc = rng.integers(2, vocab, (batch_size, input_len), dtype=np.int32)
  targets = rng.integers(2, vocab, (batch_size, target_len), dtype=np.int32)
  # Ragged lengths, padded with 0 as the real pipeline does.
  enc_len = rng.integers(input_len // 2, input_len + 1, batch_size)
  tgt_len = rng.integers(target_len // 2, target_len + 1, batch_size)
  enc[np.arange(input_len)[None] >= enc_len[:, None]] = 0
  targets[np.arange(target_len)[None] >= tgt_len[:, None]] = 0
  dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def data_fn(batch_size: int = 16, process_index: int = 0, process_count: int = 1, **kw):
  """A `data_fn(start_step)` yielding this process's rows of each global batch."""
  rows = batch_size // process_count

  def fn(start_step):
    step = start_step
    while True:
      b = make_batch(step, batch_size, **kw)
      yield {k: v[process_index * rows:(process_index + 1) * rows] for k, v in b.items()}
      step += 1
  return fn


# --- Running tests/trainer_script.py in subprocesses ---------------------------
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainer_script.py")
REPO = os.path.dirname(os.path.dirname(SCRIPT))


def script_command(run_dir, *flags):
  return [sys.executable, SCRIPT, str(run_dir), *map(str, flags)]


def script_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the script sets its own device count
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_script(run_dir, *flags, timeout=240):
  proc = subprocess.run(script_command(run_dir, *flags), env=script_env(), capture_output=True,
                        text=True, timeout=timeout)
  return proc


def step_losses(run_dir) -> dict:
  """step -> loss from metrics.jsonl; a re-run step's later line wins."""
  out = {}
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      out[rec["step"]] = rec["loss"]
  return out


def final_params(run_dir) -> dict:
  import numpy as np
  with np.load(os.path.join(run_dir, "final_params.npz")) as z:
    return {k: z[k] for k in z.files}


REFERENCE_FLAGS = ("--steps", 8, "--ckpt_every", 2)


@functools.lru_cache(maxsize=None)
def reference_run() -> str:
  """One uninterrupted 1-process x 8-device run, shared by the tests of a session."""
  run_dir = tempfile.mkdtemp(prefix="t5jax_reference_")
  proc = run_script(run_dir, *REFERENCE_FLAGS)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return run_dir
