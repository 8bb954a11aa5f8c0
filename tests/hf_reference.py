"""Random-weight HF transformers T5 models: the independent reference in tests."""

import numpy as np
import torch
import transformers

from t5jax.conversion.hf import config_from_hf, params_from_hf

VOCAB = 128


def hf_model(seed=0, **overrides):
  """An HF T5ForConditionalGeneration with random weights (HF's init; norms jittered
  away from 1 so that a misplaced norm scale shows)."""
  kwargs = dict(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                feed_forward_proj="relu", tie_word_embeddings=True, dropout_rate=0.0,
                decoder_start_token_id=0)
  kwargs.update(overrides)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.add_(torch.randn_like(p) * 0.1)
  return model


def state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def to_t5jax(model):
  config = config_from_hf(model.config.to_dict())
  sd = state_dict(model)
  if config.tie_word_embeddings:
    sd.pop("lm_head.weight", None)
  return config, params_from_hf(sd, config)


def batch(seed=0, batch_size=3, enc_len=24, dec_len=12, vocab=VOCAB):
  """Token batch with padded rows (ids >= 2 so no accidental pad/eos inside)."""
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, vocab, (batch_size, enc_len)).astype(np.int32)
  dec = rng.integers(2, vocab, (batch_size, dec_len)).astype(np.int32)
  dec[:, 0] = 0  # decoder starts from pad
  if batch_size > 1:
    enc[1, enc_len * 2 // 3:] = 0
  if batch_size > 2:
    enc[2, enc_len // 4:] = 0
  return enc, dec


def hf_forward(model, enc, dec):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return out.encoder_last_hidden_state.numpy(), out.logits.numpy()
