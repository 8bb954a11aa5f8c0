"""FLOPs of a T5 training step and device peak FLOP/s, for MFU.

The count follows docs/t5_facts.md ("FLOPs for MFU"): matmuls only, a
training step = 3 x forward. 6 * N * tokens overcounts an encoder-decoder
(the decoder only sees Ld tokens), so it is not used.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s (no sparsity), by substring of jax's device_kind.
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "A100": 312e12,
    "V100": 125e12,
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
}


def forward_flops(config, batch_size: int, input_len: int, target_len: int) -> float:
  """Matmul FLOPs of one forward pass over a [B, Le] -> [B, Ld] batch."""
  b, le, ld, d = batch_size, input_len, target_len, config.d_model
  i, f, v = config.num_heads * config.d_kv, config.d_ff, config.vocab_size
  g = 2 if config.is_gated else 1
  encoder_layer = (2 * b * le * d * 3 * i + 4 * b * le * le * i + 2 * b * le * i * d
                   + 2 * b * le * d * f * (g + 1))
  decoder_self = 2 * b * ld * d * 3 * i + 4 * b * ld * ld * i + 2 * b * ld * i * d
  decoder_cross = (2 * b * ld * d * i + 2 * b * le * d * 2 * i + 4 * b * ld * le * i
                   + 2 * b * ld * i * d)
  decoder_layer = decoder_self + decoder_cross + 2 * b * ld * d * f * (g + 1)
  lm_head = 2 * b * ld * d * v
  return float(config.num_layers * encoder_layer + config.decoder_layers * decoder_layer
               + lm_head)


def train_step_flops(config, batch_size: int, input_len: int, target_len: int) -> float:
  """Forward + backward (2x forward): 3 x forward."""
  return 3.0 * forward_flops(config, batch_size, input_len, target_len)


def known_peak_flops(device: jax.Device | None = None) -> float | None:
  """Dense bf16 peak of a known accelerator, else None."""
  device = device or jax.devices()[0]
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS_BF16.items():
    if name.lower() in kind.lower():
      return peak
  return None


def measured_peak_flops(dtype: str = "bfloat16", n: int = 2048, repeats: int = 5) -> float:
  """Best-of FLOP/s of a square matmul on one device: a fallback peak for unknown devices.

  Only an approximation of the true peak, so MFU against it reads high.
  """
  device = jax.devices()[0]
  if device.platform == "cpu":
    n = min(n, 1024)  # ~0.1 s of CPU start-up; 512 understated the peak (MFU read ~1)
  x = jax.device_put(jnp.ones((n, n), dtype), device)
  # float32 accumulation, as the model's matmuls: a bf16-result dot is a slow path on CPU
  matmul = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  matmul(x).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


def peak_flops_per_device(override: float | None = None, dtype: str = "bfloat16") -> tuple[float, str]:
  """(peak FLOP/s, where it came from): the config value, a known default, or a measurement."""
  if override:
    return float(override), "config"
  known = known_peak_flops()
  if known is not None:
    return known, f"known {jax.devices()[0].device_kind} bf16 peak"
  n = 1024 if jax.devices()[0].platform == "cpu" else 2048
  return measured_peak_flops(dtype, n), f"measured {n}x{n} {jnp.dtype(dtype).name} matmul"


def mfu(flops_per_step: float, step_time_s: float, num_devices: int, peak_per_device: float) -> float:
  return flops_per_step / step_time_s / (num_devices * peak_per_device)
