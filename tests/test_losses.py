"""Cross-entropy, label smoothing, z-loss and normalisation against numpy."""

import jax.numpy as jnp
import numpy as np
import pytest

from t5jax import losses


def numpy_loss(logits, targets, smoothing, z):
  v = logits.shape[-1]
  log_z = np.log(np.exp(logits).sum(-1))
  log_p = logits - log_z[..., None]
  soft = np.full(logits.shape, smoothing / (v - 1))
  np.put_along_axis(soft, targets[..., None], 1 - smoothing, axis=-1)
  entropy = -np.sum(soft * np.log(soft + 1e-20), -1)
  return -np.sum(soft * log_p, -1) - entropy, z * log_z ** 2


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_and_z_loss(smoothing):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)) * 3
  targets = rng.integers(0, 11, (3, 5))
  ce, z = losses.cross_entropy_with_z_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(targets),
                                           smoothing, 1e-4)
  want_ce, want_z = numpy_loss(logits, targets, smoothing, 1e-4)
  np.testing.assert_allclose(ce, want_ce, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(z, want_z, rtol=1e-5)
  if smoothing:
    # A perfect (very peaked) prediction costs ~0 once the target entropy is removed.
    soft = np.full((1, 1, 11), np.log(0.1 / 10))
    soft[0, 0, 3] = np.log(0.9)
    ce0, _ = losses.cross_entropy_with_z_loss(jnp.asarray(soft, jnp.float32),
                                              jnp.asarray([[3]]), 0.1)
    assert abs(float(ce0[0, 0])) < 1e-5


def batch():
  targets = np.array([[5, 6, 7, 0], [8, 9, 0, 0]])
  return {"decoder_target_tokens": targets,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


@pytest.mark.parametrize("normalization,want", [
    ("num_real_target_tokens", 5.0), ("num_total_target_tokens", 8.0),
    ("average_per_sequence", 2.0), (233472.0, 233472.0)])
def test_normalizers(normalization, want):
  assert float(losses.normalizer(batch(), normalization)) == want


def test_masking_accuracy_and_per_sequence_weights():
  b = batch()
  logits = np.zeros((2, 4, 10), np.float32)
  logits[0, 0, 5] = logits[0, 1, 6] = 10.0  # two of three right in row 0
  logits[1, 0, 8] = 10.0  # one of two right in row 1
  logits[:, 3, 1] = 100.0  # padding positions: must not count
  cfg = losses.LossConfig(z_loss=0.0)
  objective, stats = losses.loss_sums(jnp.asarray(logits), b, cfg)
  m = losses.summarize(stats)
  assert float(stats["num_tokens"]) == 5
  assert float(m["accuracy"]) == pytest.approx(3 / 5)
  ce, _ = numpy_loss(logits.astype(np.float64), b["decoder_target_tokens"], 0.0, 0.0)
  mask = b["decoder_loss_weights"]
  assert float(objective) == pytest.approx(np.sum(ce * mask), rel=1e-5)
  # average_per_sequence: each sequence's tokens sum to weight 1.
  obj_seq, _ = losses.loss_sums(jnp.asarray(logits), b,
                                losses.LossConfig(z_loss=0.0, normalization="average_per_sequence"))
  want = np.sum(ce[0] * mask[0]) / 3 + np.sum(ce[1] * mask[1]) / 2
  assert float(obj_seq) == pytest.approx(want, rel=1e-5)
