"""Shared test set-up: 8 simulated CPU devices, no TF inside transformers."""

import os

# Must be set before jax is first imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("USE_TF", "0")  # transformers: PyTorch only
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


import pytest  # noqa: E402


@pytest.fixture(params=["cpu_kernels", "standard"])
def both_paths(request):
  """Runs a test on the XLA-CPU path and on the standard (GPU/TPU) path in turn."""
  from t5jax import xla_cpu
  with xla_cpu.forced(request.param == "cpu_kernels"):
    yield request.param
