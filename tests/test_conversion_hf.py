"""Parity with HF transformers' T5 (PyTorch, CPU) and HF checkpoint round trips."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from hf_reference import batch, hf_forward, hf_model, state_dict, to_t5jax
from t5jax.conversion import hf as hf_conv
from t5jax.layers import relative_position_bucket
from t5jax.model import T5

TOL = 1e-4

CASES = {
    "t5.1.0-style": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5.1.1-style": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "decoder-deeper": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                           num_decoder_layers=3),
    "heads*d_kv!=d_model": dict(feed_forward_proj="relu", tie_word_embeddings=True,
                                num_heads=3, d_kv=16),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_and_logits_match_hf(case, both_paths):
  model = hf_model(**CASES[case])
  config, params = to_t5jax(model)
  enc, dec = batch()
  ref_encoded, ref_logits = hf_forward(model, enc, dec)
  t5 = T5(config)
  encoded = t5.apply({"params": params}, jnp.asarray(enc), method=T5.encode)
  logits = t5.apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  valid = (enc > 0)[..., None]  # HF leaves padded encoder positions unmasked
  assert np.abs(np.where(valid, np.asarray(encoded) - ref_encoded, 0)).max() <= TOL
  assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_bucket_matches_hf(bidirectional):
  rel = torch.arange(-300, 301)
  ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      rel, bidirectional=bidirectional, num_buckets=32, max_distance=128).numpy()
  ours = np.asarray(relative_position_bucket(jnp.asarray(rel.numpy()), bidirectional, 32, 128))
  np.testing.assert_array_equal(ours, ref)


def test_param_counts_match_hf():
  from t5jax.model import count_params
  for case in CASES.values():
    model = hf_model(**case)
    config, _ = to_t5jax(model)
    assert count_params(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case", ["t5.1.0-style", "t5.1.1-style"])
def test_export_loads_in_transformers_with_same_logits(case, tmp_path):
  config, params = to_t5jax(hf_model(seed=1, **CASES[case]))
  hf_conv.save_hf(str(tmp_path), config, params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
  enc, dec = batch(seed=1)
  _, ref_logits = hf_forward(reloaded, enc, dec)
  logits = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL


@pytest.mark.parametrize("case", ["t5.1.0-style", "t5.1.1-style"])
def test_import_export_round_trip_is_bit_identical(case, tmp_path):
  hf_model(seed=2, **CASES[case]).save_pretrained(str(tmp_path / "hf"))
  config, params = hf_conv.load_hf(str(tmp_path / "hf"))
  hf_conv.save_hf(str(tmp_path / "out"), config, params)
  original = load_file(str(tmp_path / "hf" / "model.safetensors"))
  exported = load_file(str(tmp_path / "out" / "model.safetensors"))
  assert sorted(original) == sorted(exported)
  for name, tensor in original.items():
    assert exported[name].dtype == tensor.dtype and np.array_equal(exported[name], tensor), name


def test_transformers5_untied_form_is_read(tmp_path):
  """5.x saves T5.1.1 as tied + scale_decoder_outputs=false with no lm_head."""
  model = hf_model(seed=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  sd = state_dict(model)
  sd["lm_head.weight"] = sd["shared.weight"].copy()  # what a 5.x model computes with
  model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
  del sd["lm_head.weight"]
  for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    sd.pop(k, None)
  save_file(sd, str(tmp_path / "model.safetensors"))
  hf_json = model.config.to_dict()
  hf_json.update(tie_word_embeddings=True, scale_decoder_outputs=False)
  (tmp_path / "config.json").write_text(json.dumps(hf_json))
  config, params = hf_conv.load_hf(str(tmp_path))
  assert config.tie_word_embeddings and not config.scale_tied_logits
  enc, dec = batch(seed=3)
  _, ref_logits = hf_forward(model, enc, dec)
  logits = T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec))
  assert np.abs(np.asarray(logits) - ref_logits).max() <= TOL
  # Exported in 4.x form (untied, with lm_head) it loads back in transformers.
  hf_conv.save_hf(str(tmp_path / "out"), config, params)
  reloaded = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "out"))
  assert np.abs(hf_forward(reloaded.eval(), enc, dec)[1] - ref_logits).max() <= TOL


def test_wrong_shape_checkpoint_names_the_tensor(tmp_path):
  model = hf_model(seed=4)
  model.save_pretrained(str(tmp_path))
  hf_json = json.loads((tmp_path / "config.json").read_text())
  hf_json["d_ff"] = 48  # config no longer matches the tensors
  (tmp_path / "config.json").write_text(json.dumps(hf_json))
  with pytest.raises(ValueError, match=r"mlp/wi: shape \(32, 64\), config needs \(32, 48\)"):
    hf_conv.load_hf(str(tmp_path))


def test_not_an_hf_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf_conv.load_hf(str(tmp_path))
