"""int8 decoding (t5jax.quantize): the int8 x int8 matmuls, and their error on HF models.

Reference for the error: the same HF model in float32 (logits of t5jax's float32 path equal
HF's; tests/test_conversion_hf.py). The tolerances come from measuring int8 against float32
on these random HF-initialised models (5 seeds each, two architectures): the largest logit
error was 0.08-0.24 of the logits' standard deviation, greedy agreement 0.44-1.0 per model
(random models have small logit margins, so one flipped token changes the rest of a row).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_reference import batch, hf_model, to_t5jax
from t5jax import quantize
from t5jax.decoding import DecodeConfig, decode, prepare_params
from t5jax.errors import UsageError
from t5jax.model import T5, scan_params

SPECS = (  # every weight matmul of t5jax.layers: spec, x shape, weight shape, contracted
    ("mk,kn->mn", (6, 32), (32, 40), (0,)),  # mlp, logits_dense
    ("ble,ehd->blhd", (2, 5, 32), (32, 4, 8), (0,)),  # query / key / value
    ("blhd,hde->ble", (2, 5, 4, 8), (4, 8, 32), (0, 1)),  # attention out
    ("bld,vd->blv", (2, 5, 32), (50, 32), (1,)),  # tied logits (the embedding)
)


@pytest.mark.parametrize("spec,x_shape,w_shape,contracted", SPECS)
def test_int8_einsum_is_the_product_of_the_quantised_operands(spec, x_shape, w_shape,
                                                              contracted):
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  qw = quantize.quantize_weight(w, contracted)
  assert qw.values.dtype == jnp.int8 and qw.values.shape == w.shape
  assert qw.scale.shape == tuple(n for i, n in enumerate(w.shape) if i not in contracted)
  # Each weight is within half a step of its scale.
  step = np.expand_dims(np.asarray(qw.scale), contracted)
  assert np.all(np.abs(np.asarray(quantize.dequantize(qw)) - w) <= step / 2 + 1e-7)
  got = np.asarray(quantize.einsum(spec, jnp.asarray(x), qw, jnp.float32))
  x_axes, out = spec.split("->")[0].split(",")[0], spec.split("->")[1]
  x_int8, x_scale = quantize._quantize_rows(
      jnp.asarray(x), tuple(i for i, a in enumerate(x_axes) if a not in out))
  exact = np.einsum(spec, np.asarray(x_int8, np.float32) * np.asarray(x_scale),
                    np.asarray(quantize.dequantize(qw)))
  np.testing.assert_allclose(got, exact, atol=1e-5)  # int32 accumulation is exact
  full = np.einsum(spec, x, w)
  assert np.abs(got - full).max() <= 0.02 * np.abs(full).max()


@pytest.mark.parametrize("style", ["t5.1.0", "t5.1.1"])
def test_int8_logits_and_greedy_tokens_near_float32(style):
  kw = {} if style == "t5.1.0" else dict(feed_forward_proj="gated-gelu",
                                         tie_word_embeddings=False)
  agreements = []
  for seed in range(2):
    model = hf_model(seed, **kw)
    with torch.no_grad():
      model.shared.weight.mul_(0.1)  # varied greedy outputs, as in tests/test_decoding.py
    config, params = to_t5jax(model)
    enc, dec = batch(seed)
    ref = np.asarray(T5(config).apply({"params": params}, enc, dec))
    got = np.asarray(T5(config).apply({"params": quantize.quantize_params(params)}, enc, dec))
    assert np.abs(got - ref).max() <= 0.35 * ref.std(), seed
    cfg = DecodeConfig(max_decode_length=12)
    want = np.asarray(decode(params, config, enc, cfg).tokens)
    agreements.append(np.mean(np.asarray(decode(params, config, enc, cfg,
                                                quantize="int8").tokens) == want))
  assert np.mean(agreements) >= 0.5, agreements


def test_int8_decodes_with_every_method_and_on_a_mesh():
  from t5jax.partitioning import MeshConfig, make_mesh
  model = hf_model(1, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  config, params = to_t5jax(model)
  enc, _ = batch(1, batch_size=4)
  prepared = prepare_params(params, config, quantize="int8")
  assert prepared.quantize == "int8"
  assert isinstance(prepared.tree["encoder"]["layers_0"]["mlp"]["wo"], quantize.Int8Weight)
  mesh = make_mesh(MeshConfig(data=2, model=2), jax.devices()[:4])  # of 8 simulated
  for cfg in (DecodeConfig(max_decode_length=6),
              DecodeConfig(method="sample", top_k=4, max_decode_length=6),
              DecodeConfig(method="beam", num_beams=2, max_decode_length=6, alpha=0.6)):
    single = decode(prepared, config, enc, cfg, jax.random.PRNGKey(3))
    assert single.tokens.shape[:2] == (4, 1) and np.all(np.asarray(single.tokens)[:, 0, 0] > 1)
  # Beam search on a mesh (the cache reordered across shards every step) equals one device.
  sharded = decode(params, config, enc, cfg, mesh=mesh, rules="2d", quantize="int8")
  np.testing.assert_array_equal(np.asarray(sharded.tokens),
                                np.asarray(decode(prepared, config, enc, cfg).tokens))


def test_bad_quantize_settings_are_clear_errors():
  model = hf_model(0)
  config, params = to_t5jax(model)
  with pytest.raises(UsageError, match="quantize='int4'.*int8"):
    prepare_params(params, config, quantize="int4")
  scanned_config, scanned = scan_params(config, params)
  with pytest.raises(UsageError, match="unscan"):
    quantize.quantize_params(scanned)
