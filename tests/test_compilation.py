"""t5jax.compilation: the persistent compile cache (where it lives, how to turn it off) and
the line that says what compiling cost; a resumed run loads its train step instead of
compiling it again."""

import os
import subprocess
import sys

from synthetic_batches import REPO, run_script
from t5jax import compilation


def test_cache_directory_from_the_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compilation.default_dir() == str(tmp_path / "t5jax" / "xla")
  for value in ("", "1", "on"):
    assert compilation.requested_dir({compilation.ENV: value}) == str(tmp_path / "t5jax" / "xla")
  assert compilation.requested_dir({}) == str(tmp_path / "t5jax" / "xla")
  for value in ("0", "off", "No"):
    assert compilation.requested_dir({compilation.ENV: value}) is None
  assert compilation.requested_dir({compilation.ENV: str(tmp_path / "c")}) == str(tmp_path / "c")


def test_watch_counts_compiles_and_says_so():
  import jax
  import jax.numpy as jnp
  with compilation.watch() as w:
    jax.jit(lambda x: jnp.tanh(x) * 3.0 + 17.0)(jnp.ones(5)).block_until_ready()
  assert w.seconds["compile"] > 0 and w.total >= w.seconds["compile"]
  line = w.describe("the probe")
  assert line.startswith(("Compiled the probe in ", "Loaded the probe from the compile cache"))


def test_enable_cache_writes_and_reads_the_directory(tmp_path):
  """In a fresh process, T5JAX_COMPILE_CACHE=DIR caches what compiles; =0 leaves no trace."""
  code = ("import jax, jax.numpy as jnp\n"
          "from t5jax import compilation\n"
          "print('DIR', compilation.enable_cache())\n"
          "f = lambda x: jnp.linalg.qr(jnp.sin(x) @ x)[0].sum()\n"
          "with compilation.watch() as w:\n"
          "  jax.jit(jax.grad(f))(jnp.ones((64, 64))).block_until_ready()\n"
          "print(w.describe('f'))\n")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(PYTHONPATH=REPO, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")

  def run(value):
    proc = subprocess.run([sys.executable, "-c", code], env={**env, compilation.ENV: value},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout

  cache = tmp_path / "cache"
  first = run(str(cache))
  assert f"DIR {cache}" in first and "Compiled f in" in first
  assert any(cache.iterdir())
  assert "Loaded f from the compile cache" in run(str(cache))
  assert "DIR None" in run("0")


def test_a_resumed_run_loads_its_train_step_from_the_cache(tmp_path):
  env_dir = tmp_path / "xla_cache"
  flags = ("--ckpt_every", 2, "--devices", 2)
  first = _run(tmp_path / "run", env_dir, "--steps", 2, *flags)
  assert "Compiled the train step in" in first and "Compiled the state's init in" in first
  resumed = _run(tmp_path / "run", env_dir, "--steps", 4, *flags)
  assert "Resumed from" in resumed
  assert "Loaded the train step from the compile cache" in resumed, resumed


def _run(run_dir, cache_dir, *flags) -> str:
  old = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)  # what script_env passes on
  try:
    proc = run_script(run_dir, *flags)
  finally:
    if old is None:
      os.environ.pop("JAX_COMPILATION_CACHE_DIR")
    else:
      os.environ["JAX_COMPILATION_CACHE_DIR"] = old
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout
