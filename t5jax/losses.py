"""Cross-entropy with label smoothing and z-loss, T5X-style normalisation.

Losses are returned as *sums* over the target tokens plus the normaliser,
not means: gradient accumulation adds the sums of k microbatches and divides
once by the full batch's normaliser, so accumulating equals the full batch.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from t5jax.errors import UsageError

NORMALIZATIONS = ("num_real_target_tokens", "num_total_target_tokens", "average_per_sequence")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  label_smoothing: float = 0.0  # T5X default; 0.1 is a common choice
  z_loss: float = 1e-4  # z * log(Z)^2, keeps the softmax normaliser near 1
  # One of NORMALIZATIONS, or a number: T5X's fixed loss_normalizing_factor
  # (the released t5.1.0 checkpoints: 2048 x 114 = 233472).
  normalization: str | float = "num_real_target_tokens"

  def __post_init__(self):
    if isinstance(self.normalization, str) and self.normalization not in NORMALIZATIONS:
      raise UsageError(f"LossConfig.normalization={self.normalization!r}: expected a number or "
                       f"one of {NORMALIZATIONS}.")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise UsageError(f"LossConfig.label_smoothing={self.label_smoothing} must be in [0, 1).")


def cross_entropy_with_z_loss(logits, targets, label_smoothing: float = 0.0,
                              z_loss: float = 0.0):
  """Per-token (cross-entropy, z-loss), both [B, L], float32.

  Soft targets put 1-s on the target and s/(V-1) elsewhere; the entropy of the
  soft targets is subtracted (as T5X) so that a perfect prediction costs 0.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    # sum_v q_v * logit_v without materialising the one-hot soft targets.
    soft_dot = confidence * target_logit + low * (jnp.sum(logits, -1) - target_logit)
    entropy = -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
  else:
    soft_dot, entropy = target_logit, 0.0
  cross_entropy = log_z - soft_dot - entropy
  return cross_entropy, z_loss * jnp.square(log_z)


def token_weights(batch, normalization) -> jax.Array:
  """decoder_loss_weights, rescaled for 'average_per_sequence' (each row sums to 1)."""
  weights = batch["decoder_loss_weights"].astype(jnp.float32)
  if normalization == "average_per_sequence":
    weights = weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-8)
  return weights


def normalizer(batch, normalization) -> jax.Array:
  """What the summed loss of the (full) batch is divided by."""
  weights = batch["decoder_loss_weights"]
  if normalization == "num_real_target_tokens":
    return jnp.maximum(jnp.sum(weights.astype(jnp.float32)), 1.0)
  if normalization == "num_total_target_tokens":
    return jnp.asarray(math.prod(weights.shape), jnp.float32)
  if normalization == "average_per_sequence":
    return jnp.asarray(weights.shape[0], jnp.float32)
  return jnp.asarray(float(normalization), jnp.float32)


def loss_sums(logits, batch, config: LossConfig) -> tuple[jax.Array, dict]:
  """(objective sum, stats). stats are sums too: divide by 'num_tokens' to report."""
  targets = batch["decoder_target_tokens"]
  raw = batch["decoder_loss_weights"].astype(jnp.float32)
  weights = token_weights(batch, config.normalization)
  cross_entropy, z = cross_entropy_with_z_loss(logits, targets, config.label_smoothing,
                                               config.z_loss)
  objective = jnp.sum((cross_entropy + z) * weights)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  stats = {
      "cross_entropy_sum": jnp.sum(cross_entropy * raw),
      "z_loss_sum": jnp.sum(z * raw),
      "correct_sum": jnp.sum(correct * raw),
      "num_tokens": jnp.sum(raw),
      "num_sequences": jnp.sum((jnp.sum(raw, axis=-1) > 0).astype(jnp.float32)),
  }
  return objective, stats


def summarize(stats: dict) -> dict:
  """Per-token means from summed stats (loss = cross-entropy + z-loss per token)."""
  n = jnp.maximum(stats["num_tokens"], 1.0)
  ce, z = stats["cross_entropy_sum"] / n, stats["z_loss_sum"] / n
  return {"loss": ce + z, "cross_entropy": ce, "z_loss": z,
          "accuracy": stats["correct_sum"] / n}
