"""The T5 family (mT5, ByT5, FLAN-T5, UL2): preset sizes against HF, HF round trips."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_reference import batch, hf_forward
from t5jax.config import PRESETS
from t5jax.conversion import hf as hf_conv
from t5jax.conversion import load_checkpoint, save_checkpoint
from t5jax.decoding import DecodeConfig, decode
from t5jax.model import T5, count_params

TOL = 1e-4  # as tests/test_conversion_hf.py
FAMILIES = ("mt5-", "byt5-", "flan-t5-", "ul2")
FAMILY_PRESETS = sorted(n for n in PRESETS if n.startswith(FAMILIES))


def _hf_classes(name):
  if name.startswith("mt5"):
    return transformers.MT5Config, transformers.MT5ForConditionalGeneration
  return transformers.T5Config, transformers.T5ForConditionalGeneration


def _hf_config(name, **fields):
  config_class, _ = _hf_classes(name)
  return config_class(decoder_start_token_id=0, **fields)


def test_every_family_has_its_presets():
  for family, sizes in (("mt5-", 5), ("byt5-", 5), ("flan-t5-", 5), ("ul2", 1)):
    assert sum(n.startswith(family) for n in FAMILY_PRESETS) == sizes, family


@pytest.mark.parametrize("name", FAMILY_PRESETS)
def test_preset_param_count_matches_hf(name):
  """HF's own model of the same config, built on the meta device (nothing allocated)."""
  config = PRESETS[name]
  hf_config = _hf_config(
      name, vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv,
      num_heads=config.num_heads, d_ff=config.d_ff, num_layers=config.num_layers,
      num_decoder_layers=config.decoder_layers, feed_forward_proj=config.feed_forward_proj,
      tie_word_embeddings=config.tie_word_embeddings)
  with torch.device("meta"):
    model = _hf_classes(name)[1](hf_config)
  # parameters() yields each tensor once: encoder/decoder embed_tokens are `shared`.
  assert count_params(config) == sum(p.numel() for p in model.parameters())


# Toy models in each family's shape: (preset it stands for, HF fields).
TOY = dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, dropout_rate=0.0,
           tie_word_embeddings=False, feed_forward_proj="gated-gelu")
TOY_CASES = {
    "mt5": ("mt5-small", dict(TOY, vocab_size=256, num_layers=2)),
    "byt5": ("byt5-small", dict(TOY, vocab_size=384, num_layers=3, num_decoder_layers=1)),
    "flan-t5": ("flan-t5-small", dict(TOY, vocab_size=128, num_layers=2)),
    "ul2": ("ul2", dict(TOY, vocab_size=128, num_layers=2, num_heads=2, d_kv=24,
                        feed_forward_proj="gated-silu")),
}


def _toy_hf_model(case, seed=0):
  """A random-weight HF model of the case's family, norms jittered as in hf_reference."""
  name, fields = TOY_CASES[case]
  torch.manual_seed(seed)
  model = _hf_classes(name)[1](_hf_config(name, **fields)).eval()
  with torch.no_grad():
    for param_name, p in model.named_parameters():
      if "layer_norm" in param_name:
        p.add_(torch.randn_like(p) * 0.1)
    # HF's init echoes the input through the residual stream; a smaller
    # embedding gives varied greedy outputs (as tests/test_decoding.py does).
    model.shared.weight.mul_(0.1)
  return model


def _t5jax_logits(config, params, enc, dec):
  return np.asarray(T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))


def _hf_greedy(model, enc, length, use_cache):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                         attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                         max_new_tokens=length, do_sample=False, num_beams=1,
                         use_cache=use_cache)
  seqs = out.numpy()[:, 1:]  # drop the decoder start token
  after_eos = (np.cumsum(seqs == 1, axis=1) - (seqs == 1)) > 0
  seqs = np.where(after_eos, 0, seqs)  # HF pads with EOS after it, t5jax with 0
  return np.pad(seqs, ((0, 0), (0, length - seqs.shape[1])))


@pytest.mark.parametrize("case", sorted(TOY_CASES))
def test_hf_round_trip(case, tmp_path):
  """HF dir -> load_checkpoint: same logits and greedy output; save_checkpoint -> HF."""
  name, fields = TOY_CASES[case]
  model = _toy_hf_model(case)
  model.save_pretrained(str(tmp_path / "hf"))
  config, params = load_checkpoint(str(tmp_path / "hf"))
  preset = PRESETS[name]
  assert (config.feed_forward_proj, config.tie_word_embeddings) == (
      preset.feed_forward_proj, preset.tie_word_embeddings)
  assert (config.vocab_size, config.num_layers, config.decoder_layers) == (
      fields["vocab_size"], fields["num_layers"],
      fields.get("num_decoder_layers", fields["num_layers"]))

  enc, dec = batch(seed=5, vocab=fields["vocab_size"])
  _, ref_logits = hf_forward(model, enc, dec)
  assert np.abs(_t5jax_logits(config, params, enc, dec) - ref_logits).max() <= TOL

  # transformers 4.57 generate with the cache fails for decoder depth != encoder's.
  ref = _hf_greedy(model, enc, 8, use_cache=config.decoder_layers == config.num_layers)
  out = decode(params, config, enc, DecodeConfig(max_decode_length=8))
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), ref)
  assert len(np.unique(ref)) > 1  # a non-degenerate reference

  save_checkpoint(str(tmp_path / "out"), config, params, format="hf")
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  assert reloaded.config.feed_forward_proj == fields["feed_forward_proj"]
  assert np.abs(hf_forward(reloaded.eval(), enc, dec)[1] - ref_logits).max() <= TOL


def test_gated_silu_matches_hf_on_both_paths(both_paths):
  """The UL2 feed-forward on the XLA-CPU path and the standard path."""
  model = _toy_hf_model("ul2", seed=1)
  config = hf_conv.config_from_hf(model.config.to_dict())
  assert config.feed_forward_proj == "gated-silu" and config.is_gated
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = hf_conv.params_from_hf(sd, config)
  enc, dec = batch(seed=6)
  _, ref_logits = hf_forward(model, enc, dec)
  assert np.abs(_t5jax_logits(config, params, enc, dec) - ref_logits).max() <= TOL
  # And it is not the gated-GELU model: the activation is really switched.
  gelu = _t5jax_logits(config.replace(feed_forward_proj="gated-gelu"), params, enc, dec)
  assert np.abs(gelu - ref_logits).max() > 100 * TOL


def test_gated_silu_config_round_trips():
  hf_json = hf_conv.config_to_hf(PRESETS["ul2"])
  assert (hf_json["feed_forward_proj"], hf_json["dense_act_fn"], hf_json["is_gated_act"]) == (
      "gated-silu", "silu", True)
  hf_config = transformers.T5Config(**hf_json)
  assert (hf_config.dense_act_fn, hf_config.is_gated_act) == ("silu", True)
  # HF always names the decoder depth; the preset leaves it None (= num_layers).
  # HF checkpoints load per layer (load_checkpoint(..., scan_layers=True) stacks them).
  assert hf_conv.config_from_hf(hf_json) == PRESETS["ul2"].replace(num_decoder_layers=32,
                                                                   scan_layers=False)


def test_unsupported_feed_forward_is_refused():
  hf_json = hf_conv.config_to_hf(PRESETS["flan-t5-small"])
  hf_json["feed_forward_proj"] = "gated-relu"
  with pytest.raises(ValueError, match="gated-relu.*'gated-silu'"):
    hf_conv.config_from_hf(hf_json)
