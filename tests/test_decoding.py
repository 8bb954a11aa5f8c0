"""Decoders against HF transformers' generate, and on hand-built distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_reference import batch, hf_model, to_t5jax
from t5jax.decoding import (DecodeConfig, beam_search, brevity_penalty, decode, sample_loop,
                            score_targets, top_k_top_p)

V1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
V1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True)


def _hf_generate(model, enc, **kwargs):
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(enc, dtype=torch.long),
                         attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                         return_dict_in_generate=True, output_scores=True, **kwargs)
  seqs = out.sequences.numpy()[:, 1:]  # drop the decoder start token
  after_eos = (np.cumsum(seqs == 1, axis=1) - (seqs == 1)) > 0
  return np.where(after_eos, 0, seqs), out  # HF pads with EOS, t5jax with 0


def _pad_to(tokens, length):
  return np.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def model_and_inputs(request):
  kw = V1_0 if request.param == "v1.0" else V1_1
  model = hf_model(seed=11, vocab_size=24, **kw)
  with torch.no_grad():
    # With HF's init a tied model echoes its input token (here always pad)
    # through the residual stream; a smaller embedding gives varied outputs.
    model.shared.weight.mul_(0.1)
  config, params = to_t5jax(model)
  enc, _ = batch(seed=11, batch_size=4, enc_len=14, vocab=24)
  return model, config, params, enc


def test_greedy_matches_hf(model_and_inputs, both_paths):
  model, config, params, enc = model_and_inputs
  ref, _ = _hf_generate(model, enc, max_new_tokens=12, do_sample=False, num_beams=1)
  out = decode(params, config, enc, DecodeConfig(max_decode_length=12))
  assert out.tokens.shape == (4, 1, 12)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), _pad_to(ref, 12))
  assert len(np.unique(ref)) > 1  # a non-degenerate reference


def test_beam_search_matches_hf_without_length_penalty(model_and_inputs, both_paths):
  model, config, params, enc = model_and_inputs
  ref, hf_out = _hf_generate(model, enc, max_new_tokens=10, do_sample=False, num_beams=4,
                             num_return_sequences=2, length_penalty=0.0, early_stopping=False)
  out = decode(params, config, enc,
               DecodeConfig(method="beam", num_beams=4, num_decodes=2, alpha=0.0,
                            max_decode_length=10))
  np.testing.assert_array_equal(np.asarray(out.tokens).reshape(8, -1), _pad_to(ref, 10))
  np.testing.assert_allclose(np.asarray(out.scores).reshape(-1),
                             hf_out.sequences_scores.numpy(), atol=1e-4)


def test_no_repeat_ngram_matches_hf(model_and_inputs, both_paths):
  model, config, params, enc = model_and_inputs
  ref, _ = _hf_generate(model, enc, max_new_tokens=12, do_sample=False, num_beams=1,
                        no_repeat_ngram_size=2)
  out = decode(params, config, enc, DecodeConfig(max_decode_length=12, no_repeat_ngram_size=2))
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), _pad_to(ref, 12))


def test_top_k_1_sampling_equals_greedy(model_and_inputs):
  _, config, params, enc = model_and_inputs
  greedy = decode(params, config, enc, DecodeConfig(max_decode_length=8))
  sampled = decode(params, config, enc, DecodeConfig(method="sample", top_k=1, num_decodes=3,
                                                     max_decode_length=8),
                   rng=jax.random.PRNGKey(5))
  for i in range(3):
    np.testing.assert_array_equal(sampled.tokens[:, i], greedy.tokens[:, 0])


def test_sampling_is_reproducible_from_seed(model_and_inputs):
  _, config, params, enc = model_and_inputs
  cfg = DecodeConfig(method="sample", temperature=1.5, max_decode_length=8)
  a = decode(params, config, enc, cfg, rng=jax.random.PRNGKey(1))
  b = decode(params, config, enc, cfg, rng=jax.random.PRNGKey(1))
  c = decode(params, config, enc, cfg, rng=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_score_targets_matches_hf(model_and_inputs, both_paths):
  model, config, params, enc = model_and_inputs
  rng = np.random.default_rng(0)
  targets = rng.integers(2, 24, (4, 6)).astype(np.int32)
  targets[:, -1] = 1
  targets[1, 3:] = 0
  labels = torch.tensor(np.where(targets > 0, targets, -100), dtype=torch.long)
  with torch.no_grad():
    logits = model(input_ids=torch.tensor(enc, dtype=torch.long),
                   attention_mask=torch.tensor(enc > 0, dtype=torch.long), labels=labels).logits
  lp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
  ref = (lp * (labels >= 0)).sum(-1).numpy()
  np.testing.assert_allclose(score_targets(params, config, enc, targets), ref, atol=1e-4)


# ---------------------------------------------------------------------------
# Hand-built distributions: a step function whose log-probs depend only on t.

def _table_step(table):
  """step() over a fixed [T, vocab] probability table; the cache is just t."""
  log_table = jnp.log(jnp.asarray(table, jnp.float32) + 1e-30)

  def step(cache, tokens, first):
    return jnp.broadcast_to(log_table[cache["t"]], (tokens.shape[0], log_table.shape[1])), {
        "t": cache["t"] + 1}
  return step


def test_t5x_length_penalty_changes_the_winner():
  # vocab: 0 pad (never), 1 EOS, 2 word. Hypotheses: [EOS] p=.4;
  # [2, EOS] p=.6*.5=.3; [2, 2, EOS] p=.6*.5*.99=.297.
  table = [[0, .4, .6], [0, .5, .5], [0, .99, .01], [0, .99, .01]]
  step = _table_step(table)
  run = lambda alpha: beam_search(step, {"t": jnp.int32(0)}, 1, DecodeConfig(
      method="beam", num_beams=2, alpha=alpha, max_decode_length=4))
  plain, penalised = run(0.0), run(2.0)
  np.testing.assert_array_equal(plain.tokens[0, 0], [1, 0, 0, 0])
  np.testing.assert_allclose(plain.scores[0, 0], np.log(.4), rtol=1e-5)
  # alpha=2: [EOS] scores log(.4) / 1 = -0.916; [2, 2, EOS]: log(.297) / (8/6)**2 = -0.683.
  np.testing.assert_array_equal(penalised.tokens[0, 0], [2, 2, 1, 0])
  np.testing.assert_allclose(penalised.scores[0, 0], np.log(.297) / (8 / 6) ** 2, rtol=1e-5)
  assert brevity_penalty(0.6, 1) == 1.0


def test_top_p_and_top_k_keep_the_right_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda **kw: np.asarray(top_k_top_p(logits, **kw) > -1e9)[0].tolist()
  assert kept(top_k=0, top_p=0.7) == [True, True, False, False]
  assert kept(top_k=0, top_p=0.5) == [True, False, False, False]
  assert kept(top_k=0, top_p=0.81) == [True, True, True, False]
  assert kept(top_k=3, top_p=1.0) == [True, True, True, False]


@pytest.mark.parametrize("temperature,top_p,expected", [
    (1.0, 1.0, [0.5, 0.3, 0.15, 0.05]),
    (0.5, 1.0, np.array([0.25, 0.09, 0.0225, 0.0025]) / 0.365),  # p**2, renormalised
    (1.0, 0.7, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),
])
def test_sampled_frequencies_follow_the_distribution(temperature, top_p, expected):
  table = [[0, 0.0, 0.5, 0.3, 0.15, 0.05]]  # ids 2..5 carry the distribution; no EOS
  step = _table_step(table)
  n = 20000
  out = sample_loop(step, {"t": jnp.int32(0)}, n, jax.random.PRNGKey(0), DecodeConfig(
      method="sample", temperature=temperature, top_p=top_p, max_decode_length=1))
  freq = np.bincount(np.asarray(out.tokens[:, 0, 0]), minlength=6)[2:] / n
  np.testing.assert_allclose(freq, expected, atol=0.015)


def test_bad_decode_arguments():
  with pytest.raises(ValueError, match="max_decode_length=0"):
    DecodeConfig(max_decode_length=0)
  with pytest.raises(ValueError, match="method='topk'"):
    DecodeConfig(method="topk")
  with pytest.raises(ValueError, match="cannot exceed"):
    DecodeConfig(method="beam", num_beams=2, num_decodes=3)
  from t5jax.config import get_config
  from t5jax.model import init_params
  config = get_config("tiny", vocab_size=32)
  params = init_params(config, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="length>0"):
    decode(params, config, np.zeros((2, 0), np.int32))


def test_min_decode_length_matches_hf(model_and_inputs, both_paths):
  model, config, params, enc = model_and_inputs
  ref, _ = _hf_generate(model, enc, max_new_tokens=10, min_new_tokens=6, do_sample=False,
                        num_beams=1)
  out = decode(params, config, enc, DecodeConfig(max_decode_length=10, min_decode_length=6))
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), _pad_to(ref, 10))
  assert not np.any(np.asarray(out.tokens[:, 0, :6]) == 1)


def test_sharded_decoding_equals_single_device(model_and_inputs, both_paths):
  from t5jax.partitioning import MeshConfig, make_mesh
  _, config, params, enc = model_and_inputs
  if config.tie_word_embeddings:
    pytest.skip("one architecture is enough (sharded compiles are slow on CPU)")
  # Beam search: reorders the sharded cache across the data axis every step.
  cfg = DecodeConfig(method="beam", num_beams=2, max_decode_length=6, alpha=0.6)
  single = decode(params, config, enc, cfg)
  mesh = make_mesh(MeshConfig(data=2, model=2), jax.devices()[:4])  # of 8 simulated
  sharded = decode(params, config, enc, cfg, mesh=mesh, rules="2d")
  np.testing.assert_array_equal(np.asarray(sharded.tokens), np.asarray(single.tokens))
  np.testing.assert_allclose(np.asarray(sharded.scores), np.asarray(single.scores), atol=1e-5)


@pytest.mark.parametrize("repeat_tokens", [False, True])
def test_decode_step_with_shared_encoder_rows_equals_repeated_rows(repeat_tokens):
  """Decoder rows B * g against B encoder rows (beams / samples sharing one
  cross-attention cache) give the logits of B * g rows each with its own copy.
  The cross mask may come from either batch of encoder tokens."""
  from t5jax.config import T5Config
  from t5jax.model import T5, init_cache, init_params
  config = T5Config(vocab_size=96, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_layers=2,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  model, params = T5(config), init_params(config, jax.random.PRNGKey(3))
  rng = np.random.default_rng(3)
  enc = rng.integers(2, 96, (2, 9)).astype(np.int32)
  enc[1, 5:] = 0
  groups, steps = 3, 4
  dec = rng.integers(2, 96, (2 * groups, steps)).astype(np.int32)
  encoded = model.apply({"params": params}, enc, method=T5.encode)
  enc_rep, encoded_rep = np.repeat(enc, groups, axis=0), jnp.repeat(encoded, groups, axis=0)

  def run(encoded, enc_tokens):
    cache = init_cache(config, 2 * groups, steps, enc.shape[1])
    out = []
    for t in range(steps):
      logits, mutated = model.apply({"params": params, "cache": cache},
                                    encoded if t == 0 else None, enc_tokens, dec[:, t:t + 1],
                                    decode=True, mutable=["cache"], method=T5.decode)
      cache = mutated["cache"]
      out.append(logits[:, 0])
    return np.stack(out, 1), cache

  shared, cache = run(encoded, enc_rep if repeat_tokens else enc)
  own, _ = run(encoded_rep, enc_rep)
  assert cache["decoder"]["layers_0"]["encoder_decoder_attention"]["cross_key"].shape[0] == 2
  np.testing.assert_allclose(shared, own, atol=1e-5, rtol=1e-5)


def test_bfloat16_decoding_layout_is_only_a_layout(model_and_inputs):
  """bf16 decoding on the CPU path stores matmul weights [out, in] (`prepare_params`) and
  contracts them under `kernels_stored_out_in`: the model's logits are the plain bf16 model's, and
  greedy decoding equals a full-forward (uncached) bf16 argmax loop."""
  from t5jax import xla_cpu
  from t5jax.decoding import _param_shapes, prepare_params
  from t5jax.model import T5
  _, config, params, enc = model_and_inputs
  if not xla_cpu.enabled():
    pytest.skip("the [out, in] layout is the XLA-CPU path's")
  config = config.replace(dtype="bfloat16")
  prepared = prepare_params(params, config).tree
  assert prepared["decoder"]["layers_0"]["mlp"]["wo"].shape == \
      params["decoder"]["layers_0"]["mlp"]["wo"].shape[::-1]
  dec = np.asarray(enc[:, :6])

  @jax.jit
  def stored_logits(prepared):
    with xla_cpu.kernels_stored_out_in():
      return T5(config).apply(
          {"params": xla_cpu.restore_out_in(prepared, _param_shapes(config))}, enc, dec)
  plain = jax.jit(lambda p: T5(config).apply({"params": p}, enc, dec))(params)
  np.testing.assert_allclose(stored_logits(prepared), plain, rtol=1e-5, atol=1e-5)

  out = decode(params, config, enc, DecodeConfig(max_decode_length=8))
  forward = jax.jit(lambda p, d: T5(config).apply({"params": p}, enc, d))
  seqs = np.zeros((enc.shape[0], 1), np.int32)  # the decoder start token (0)
  for _ in range(8):
    next_token = np.argmax(np.asarray(forward(params, seqs))[:, -1], axis=-1)
    seqs = np.concatenate([seqs, next_token[:, None].astype(np.int32)], axis=1)
  ref = seqs[:, 1:]
  ref = np.where(np.cumsum(ref == 1, axis=1) - (ref == 1) > 0, 0, ref)
  np.testing.assert_array_equal(np.asarray(out.tokens[:, 0]), ref)
  assert len(np.unique(ref)) > 1


def test_prepared_params_are_reused_and_checked(model_and_inputs):
  """`prepare_params` once, then many `decode` calls: the same tokens as preparing
  inside each call. A dtype mismatch, or the [out, in] layout on a mesh, is an error.
  bfloat16 on a mesh decodes from the plain layout: the single device's tokens."""
  from t5jax.decoding import DecodeParams, _decode_jit, prepare_params
  from t5jax.partitioning import MeshConfig, make_mesh
  _, config, params, enc = model_and_inputs
  if config.tie_word_embeddings:
    pytest.skip("one architecture is enough (sharded compiles are slow on CPU)")
  config = config.replace(dtype="bfloat16")
  cfg = DecodeConfig(max_decode_length=6)
  prepared = prepare_params(params, config)
  assert prepared.out_in and prepare_params(prepared, config) is prepared
  once, each = decode(prepared, config, enc, cfg), decode(params, config, enc, cfg)
  np.testing.assert_array_equal(np.asarray(once.tokens), np.asarray(each.tokens))
  np.testing.assert_array_equal(np.asarray(once.scores), np.asarray(each.scores))
  with pytest.raises(ValueError, match="prepared for dtype bfloat16"):
    decode(prepared, config.replace(dtype="float32"), enc, cfg)
  mesh = make_mesh(MeshConfig(data=2, model=1), jax.devices()[:2])
  with pytest.raises(ValueError, match="plain params"):
    decode(prepared, config, enc, cfg, mesh=mesh)
  sharded = decode(params, config, enc, cfg, mesh=mesh)  # was garbage: weights read as [out, in]
  plain = _decode_jit(DecodeParams(params, "bfloat16", False), jnp.asarray(enc),
                      jax.random.PRNGKey(0), config, cfg)  # one device, the plain layout
  # bf16 rounds differently in the sharded program, so a near-tie may flip a later
  # token; reading the weights wrongly changed the first tokens of most rows.
  toks, ref = np.asarray(sharded.tokens), np.asarray(plain.tokens)
  np.testing.assert_array_equal(toks[:, :, 0], ref[:, :, 0])
  agree = (toks == ref).all(-1)
  assert agree.mean() >= 0.5
  np.testing.assert_allclose(np.asarray(sharded.scores)[agree], np.asarray(plain.scores)[agree],
                             atol=0.05)
