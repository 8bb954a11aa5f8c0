"""benchmarks/memory_estimate.py: exact state bytes against a hand count."""

import pytest

from t5jax.config import get_config

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def estimate():
  return load_benchmark("memory_estimate")


def test_tiny_state_bytes_equal_hand_count(estimate):
  # tiny: d_model 64, 4 heads x d_kv 16, d_ff 128 (gated), 2+2 layers, vocab 32128, untied.
  embedding = lm_head = 32128 * 64
  enc_layer = 4 * 64 * 64 + 2 * 64 + 3 * 64 * 128  # q k v o, 2 norms, wi_0 wi_1 wo
  dec_layer = 8 * 64 * 64 + 3 * 64 + 3 * 64 * 128  # self + cross attention, 3 norms, mlp
  stack_extra = 64 + 32 * 4  # final norm, relative position bias [32 buckets, 4 heads]
  params = embedding + lm_head + 2 * enc_layer + 2 * dec_layer + 2 * stack_extra
  assert params == 4_310_016
  leaves = 2 + (2 * 9 + 2) + (2 * 14 + 2)  # 52 parameter tensors
  # Adafactor factors a matrix only if its two largest dims are >= 128: none
  # here (d_model 64), so every tensor has a full second moment v plus two
  # (1,) placeholders (v_row, v_col); two int32 step counts (Adafactor and
  # the learning-rate schedule).
  opt = 4 * (params + 2 * leaves) + 8
  s = estimate.state_bytes(get_config("tiny"))
  assert s["num_params"] == params
  assert s["params"] == s["grads"] == 4 * params
  assert s["opt_state"] == opt
  assert s["total"] == 8 * params + opt


def test_factored_second_moments_hand_count(estimate):
  # d_model 128, d_ff 256: embeddings, lm_head and the mlp matrices are
  # factored (row + column vectors + a (1,) placeholder); attention kernels
  # [128, 4, 16] are factored as [128, 64] matrices: 64 < 128, so not.
  cfg = get_config("tiny", d_model=128, d_ff=256)
  factored = lambda r, c: r + c + 1  # noqa: E731
  full = lambda n: n + 2  # noqa: E731
  vocab = 2 * factored(32128, 128)
  attention = full(128 * 64)
  mlp = 3 * factored(128, 256)
  enc_layer = 4 * attention + 2 * full(128) + mlp
  dec_layer = 8 * attention + 3 * full(128) + mlp
  stack_extra = full(128) + full(32 * 4)
  floats = vocab + 2 * enc_layer + 2 * dec_layer + 2 * stack_extra
  assert estimate.state_bytes(cfg)["opt_state"] == 4 * floats + 8  # + 2 int32 counts


def test_largest_batch(estimate):
  gib = estimate.GIB
  assert estimate.largest_batch(10 * gib, 2 * gib, 70 * gib) == 30
  assert estimate.largest_batch(80 * gib, 1 * gib, 70 * gib) == 0
