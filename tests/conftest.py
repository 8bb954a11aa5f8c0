"""Shared test set-up: 8 simulated CPU devices, no TF inside transformers."""

import os

# Test-only LLVM settings: XLA's HLO passes (fusion, layout, sharding) are unchanged, only
# the machine code is less optimised, so most tests, which compile more than they run,
# take less time. Scripts the tests start add them to their own XLA_FLAGS.
# T5JAX_TEST_XLA_FLAGS= (empty) compiles as users do.
os.environ.setdefault("T5JAX_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
# Must be set before jax is first imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      + os.environ["T5JAX_TEST_XLA_FLAGS"])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("USE_TF", "0")  # transformers: PyTorch only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# XLA's persistent compilation cache, fresh for each test session (never reused across
# sessions, so nothing stale can leak in): many tests compile the very same tiny train
# step, and the trainer scripts the tests start inherit the cache through the environment.
# T5JAX_TEST_COMPILE_CACHE=0 turns it off.
if (os.environ.get("T5JAX_TEST_COMPILE_CACHE", "1") != "0"
    and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
  import atexit
  import shutil
  import tempfile
  _cache = tempfile.mkdtemp(prefix="t5jax_test_xla_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


import pytest  # noqa: E402


@pytest.fixture(params=["cpu_kernels", "standard"])
def both_paths(request):
  """Runs a test on the XLA-CPU path and on the standard (GPU/TPU) path in turn."""
  from t5jax import xla_cpu
  with xla_cpu.forced(request.param == "cpu_kernels"):
    yield request.param
