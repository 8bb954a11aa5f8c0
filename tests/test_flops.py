"""FLOP counting (docs/t5_facts.md figure), MFU arithmetic and the benchmark entry point."""

import pytest

from synthetic_batches import FAST_COMPILE
from t5jax import flops
from t5jax.benchmark import measure_train_step
from t5jax.config import get_config
from t5jax.model import count_params
from t5jax.partitioning import MeshConfig


def test_t5_1_1_base_flops_per_sequence():
  # docs/t5_facts.md, "FLOPs for MFU": 425.9 GFLOP per sequence per training step
  # at 512/114.
  got = flops.train_step_flops(get_config("t5.1.1-base"), 1, 512, 114)
  assert got / 1e9 == pytest.approx(425.9, abs=0.05)
  # Linear in the batch.
  assert flops.train_step_flops(get_config("t5.1.1-base"), 128, 512, 114) == pytest.approx(128 * got)
  # The decoder-only 6*N*tokens rule overcounts it ~2.2x.
  six_n = 6 * count_params(get_config("t5.1.1-base")) * (512 + 114)
  assert six_n / got == pytest.approx(2.2, abs=0.1)


def test_mfu_and_peaks():
  assert flops.mfu(1e12, 0.5, 4, 1e12) == pytest.approx(0.5)
  assert flops.peak_flops_per_device(123.0) == (123.0, "config")
  peak, source = flops.peak_flops_per_device()  # CPU: not a known device -> measured
  assert peak > 0 and source == "measured 1024x1024 bfloat16 matmul"


def test_measure_train_step_tiny():
  out = measure_train_step(get_config("tiny", vocab_size=128), 8, 16, 8, steps=2,
                           mesh=MeshConfig(-1, 1), peak_flops=1e12,
                           compiler_options=FAST_COMPILE)
  assert out["step_time"] > 0
  assert out["seq_per_s"] == pytest.approx(8 / out["step_time"])
  assert out["tokens_per_s"] == pytest.approx(8 * 24 / out["step_time"])
  assert 0 < out["mfu"] < 1 and out["devices"] == 8
