"""The T5 encoder-decoder in Flax Linen.

    logits = T5(config).apply({'params': params}, encoder_input_tokens,
                              decoder_input_tokens)

Inputs follow seqio's encoder-decoder feature converter: token ids with 0 as
padding; for packed rows also `*_segment_ids` (0 = padding, 1, 2, ... per
example). Positions are not needed: the relative position bias only depends
on differences of positions, which are the same for a segment wherever it sits
in a packed row, and attention across segments is masked.

Incremental decoding keeps keys/values in the 'cache' collection; see
`init_cache` and `T5.decode(..., decode=True)`. Only jax/flax/numpy here.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from t5jax.config import T5Config
from t5jax.layers import (Dropout, Embed, MlpBlock, MultiHeadAttention, RMSNorm,
                          RelativePositionBias, dense_init, remat_policy, _param)

Array = jax.Array


def _maybe_remat(layer_cls, config: T5Config):
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=remat_policy(config.remat_policy))


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask, bias):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    dropout = lambda y: Dropout(cfg.dropout_rate)(y, self.deterministic)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype,
                           self.deterministic, name="attention")(y, y, mask, bias)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.d_ff, cfg.is_gated, cfg.dropout_rate, dtype, self.deterministic,
                 name="mlp")(y)
    x = x + dropout(y)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, bias, decode_position=None):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    dropout = lambda y: Dropout(cfg.dropout_rate)(y, self.deterministic)
    attention = functools.partial(MultiHeadAttention, cfg.num_heads, cfg.d_kv,
                                  cfg.dropout_rate, dtype, self.deterministic, self.decode)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
    y = attention(name="self_attention")(y, y, self_mask, bias, decode_position)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(x)
    y = attention(cross=True, name="encoder_decoder_attention")(y, encoded, cross_mask)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.d_ff, cfg.is_gated, cfg.dropout_rate, dtype, self.deterministic,
                 name="mlp")(y)
    x = x + dropout(y)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def _padding_mask(query_valid, key_valid):
  """[B, Q] x [B, K] booleans -> [B, 1, Q, K]."""
  return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]


def _segment_mask(query_segments, key_segments):
  return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, deterministic=True):
    cfg = self.config
    valid = tokens > 0
    mask = _padding_mask(valid, valid)
    if segment_ids is not None:
      mask &= _segment_mask(segment_ids, segment_ids)
    positions = jnp.arange(tokens.shape[1])
    bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, cfg.num_heads,
                                bidirectional=True, name="relpos_bias")(positions, positions)
    x = self.shared_embedding(tokens)
    x = Dropout(cfg.dropout_rate)(x, deterministic)
    layer_cls = _maybe_remat(EncoderLayer, cfg)
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, deterministic, name=f"layers_{i}")(x, mask, bias)
    x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="encoder_norm")(x)
    return Dropout(cfg.dropout_rate)(x, deterministic)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_tokens, tokens, encoder_segment_ids=None,
               segment_ids=None, deterministic=True, decode=False):
    cfg = self.config
    length = tokens.shape[1]
    relpos = RelativePositionBias(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  bidirectional=False, name="relpos_bias")
    decode_position = None
    stepping = decode and self.has_variable("cache", "position")
    if decode:
      position = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
    if stepping:
      # One new token at `decode_position`; keys are the whole cache, of which
      # only entries up to this position have been written.
      if length != 1:
        raise ValueError(f"decode=True steps one token at a time, got length {length}.")
      decode_position = position.value
      position.value = decode_position + 1
      max_length = self.variables["cache"]["layers_0"]["self_attention"]["cached_key"].shape[1]
      key_positions = jnp.arange(max_length)
      bias = relpos(decode_position[None], key_positions)
      self_mask = (key_positions <= decode_position)[None, None, None, :]
    else:
      positions = jnp.arange(length)
      bias = relpos(positions, positions)
      self_mask = (positions[None, :] <= positions[:, None])[None, None]
      if segment_ids is not None:
        self_mask = self_mask & _segment_mask(segment_ids, segment_ids)
    cross_mask = (encoder_tokens > 0)[:, None, None, :]
    if segment_ids is not None and encoder_segment_ids is not None and not stepping:
      cross_mask = cross_mask & _segment_mask(segment_ids, encoder_segment_ids)

    x = self.shared_embedding(tokens)
    x = Dropout(cfg.dropout_rate)(x, deterministic)
    layer_cls = _maybe_remat(DecoderLayer, cfg)
    for i in range(cfg.decoder_layers):
      x = layer_cls(cfg, deterministic, decode, name=f"layers_{i}")(
          x, encoded, self_mask, cross_mask, bias, decode_position)
    x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="decoder_norm")(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic)
    # Logits are accumulated and returned in float32 whatever the activation dtype.
    if cfg.tie_word_embeddings:
      if cfg.scale_tied_logits:
        x = x * (cfg.d_model ** -0.5)
      logits = self.shared_embedding.attend(x)
    else:
      kernel = _param(self, "logits_dense", dense_init(0, 1), (cfg.d_model, cfg.vocab_size),
                      ("embed", "vocab"))
      logits = jnp.einsum("bld,dv->blv", x.astype(cfg.dtype), kernel.astype(cfg.dtype),
                          preferred_element_type=jnp.float32)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class T5(nn.Module):
  """Encoder, decoder and the shared token embedding (T5X parameter names)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, jnp.dtype(cfg.dtype))
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, *, deterministic=True):
    return self.encoder(encoder_input_tokens, encoder_segment_ids, deterministic)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, *,
             deterministic=True, decode=False):
    """Decoder logits [B, L, vocab] in float32.

    With decode=True the call is one step of incremental decoding (length 1)
    against a cache from `init_cache`: `encoded` is needed on the first step
    only (its projected keys/values are cached); pass None afterwards.
    """
    return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                        encoder_segment_ids, decoder_segment_ids, deterministic, decode)

  def __call__(self, encoder_input_tokens, decoder_input_tokens,
               encoder_segment_ids=None, decoder_segment_ids=None,
               encoder_positions=None, decoder_positions=None, *, deterministic=True):
    del encoder_positions, decoder_positions  # offsets cancel in relative positions
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids,
                          deterministic=deterministic)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids, decoder_segment_ids, deterministic=deterministic)

  def _init_decode(self, encoder_input_tokens, decoder_input_tokens):
    encoded = self.encode(encoder_input_tokens)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, decode=True)


def _dummy_inputs(batch=1, encoder_length=8, decoder_length=8):
  return (jnp.ones((batch, encoder_length), jnp.int32),
          jnp.ones((batch, decoder_length), jnp.int32))


def init_params(config: T5Config, rng: Array, *, boxed: bool = False):
  """Fresh float32 parameters. boxed=True keeps the logical-axis metadata."""
  variables = T5(config).init(rng, *_dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables["params"])


def abstract_params(config: T5Config):
  """Parameter shapes (with logical-axis boxes) without allocating anything."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), boxed=True))


def logical_axes(config: T5Config):
  """A tree like params whose leaves are PartitionSpecs of logical axis names."""
  return nn.get_partition_spec(abstract_params(config))


def count_params(config: T5Config) -> int:
  shapes = nn.meta.unbox(abstract_params(config))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))


def init_cache(config: T5Config, batch_size: int, max_decode_length: int,
               encoder_length: int):
  """Zeroed 'cache' collection for `T5.decode(..., decode=True)`."""
  model = T5(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         *_dummy_inputs(batch_size, encoder_length, max_decode_length),
                         method=T5._init_decode))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def format_count(n: int) -> str:
  for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if n >= size:
      return f"{n / size:.2f}{unit}"
  return str(n)


__all__ = ["T5", "T5Config", "init_params", "abstract_params", "logical_axes",
           "count_params", "init_cache", "format_count"]
