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
