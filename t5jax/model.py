"""The T5 encoder-decoder in Flax Linen.

    logits = T5(config).apply({'params': params}, encoder_input_tokens,
                              decoder_input_tokens)

Inputs follow seqio's encoder-decoder feature converter: token ids with 0 as
padding; for packed rows also `*_segment_ids` (0 = padding, 1, 2, ... per
example). Positions are not needed: the relative position bias only depends
on differences of positions, which are the same for a segment wherever it sits
in a packed row, and attention across segments is masked.

Incremental decoding keeps keys/values in the 'cache' collection; see
`init_cache` and `T5.decode(..., decode=True)`. Only jax/flax/numpy and
t5jax's config, layers and rng (the init key) here.

With `config.scan_layers` each stack's layers run as one `nn.scan` and their
parameters are stacked along a leading 'layers' axis (`encoder/layers/...`);
`scan_params` / `unscan_params` convert between the two layouts, and
incremental decoding needs the per-layer one.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from t5jax.config import SCANNED_LAYERS, T5Config, layer_targets
from t5jax.layers import (Dropout, Embed, MlpBlock, MultiHeadAttention, RMSNorm,
                          RelativePositionBias, dense_init, _param)
from t5jax.ops import matmul, remat_policy
from t5jax.rng import init_key

Array = jax.Array


def _layer_stack(layer_cls, config: T5Config, num_layers: int, num_broadcast: int):
  """The layer class to instantiate: rematerialised per config.remat_policy and,
  with config.scan_layers, scanned `num_layers` times (as T5X does: remat inside
  the scan, so the backward pass recomputes one layer at a time).

  The scanned body carries the residual stream; its other `num_broadcast`
  arguments (masks, bias, ...) are the same for every layer. Parameters get a
  leading axis named 'layers' (part of their logical axis names), and each
  layer draws its own params/dropout keys.
  """
  if config.remat_policy != "none":
    # prevent_cse is only needed outside a scan (XLA could otherwise merge the
    # recomputation back into the forward pass); inside one it costs speed.
    layer_cls = nn.remat(layer_cls, policy=remat_policy(config.remat_policy),
                         prevent_cse=not config.scan_layers)
  if not config.scan_layers:
    return layer_cls
  return nn.scan(layer_cls, variable_axes={"params": 0},
                 split_rngs={"params": True, "dropout": True},
                 in_axes=(nn.broadcast,) * num_broadcast, length=num_layers,
                 metadata_params={nn.PARTITION_NAME: SCANNED_LAYERS})


def _adapter_fields(cfg: T5Config, stack: str, index: int | None, block: str) -> dict:
  """The adapter arguments of one attention / MLP block: none without a LoRA / IA3
  adapter targeting it, so the plain model builds exactly the modules it did."""
  targets = layer_targets(cfg, stack, index, block)
  return dict(adapter=cfg.adapter, targets=targets) if targets else {}


def prompt_length(cfg: T5Config) -> int:
  """Encoder positions taken by prompt tuning's virtual tokens (0 without)."""
  adapter = cfg.adapter
  return adapter.num_virtual_tokens if adapter is not None and adapter.method == "prompt" else 0


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  scanned: bool = False  # the body of an nn.scan: returns (carry, None)
  index: int | None = None  # layer number (None when scanned): which kernels adapters target

  @nn.compact
  def __call__(self, x, mask, bias):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    dropout = lambda y: Dropout(cfg.dropout_rate)(y, self.deterministic)
    adapters = lambda block: _adapter_fields(cfg, "encoder", self.index, block)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, dtype,
                           self.deterministic, name="attention", precision=cfg.dot_precision,
                           **adapters("attention"))(y, y, mask, bias)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.d_ff, cfg.feed_forward_proj, cfg.dropout_rate, dtype, self.deterministic,
                 name="mlp", precision=cfg.dot_precision, **adapters("mlp"))(y)
    x = x + dropout(y)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool = True
  decode: bool = False
  scanned: bool = False  # the body of an nn.scan: returns (carry, None)
  index: int | None = None  # layer number (None when scanned): which kernels adapters target

  @nn.compact
  def __call__(self, x, encoded, self_mask, cross_mask, bias, decode_position=None):
    cfg, dtype = self.config, jnp.dtype(self.config.dtype)
    dropout = lambda y: Dropout(cfg.dropout_rate)(y, self.deterministic)
    adapters = lambda block: _adapter_fields(cfg, "decoder", self.index, block)
    attention = functools.partial(MultiHeadAttention, cfg.num_heads, cfg.d_kv,
                                  cfg.dropout_rate, dtype, self.deterministic, self.decode,
                                  precision=cfg.dot_precision)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_self_attention_layer_norm")(x)
    y = attention(name="self_attention", **adapters("self_attention"))(
        y, y, self_mask, bias, decode_position)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_cross_attention_layer_norm")(x)
    y = attention(cross=True, name="encoder_decoder_attention",
                  **adapters("encoder_decoder_attention"))(y, encoded, cross_mask)
    x = x + dropout(y)
    y = RMSNorm(cfg.layer_norm_epsilon, dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.d_ff, cfg.feed_forward_proj, cfg.dropout_rate, dtype, self.deterministic,
                 name="mlp", precision=cfg.dot_precision, **adapters("mlp"))(y)
    x = x + dropout(y)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return (x, None) if self.scanned else x


def _padding_mask(query_valid, key_valid):
  """[B, Q] x [B, K] booleans -> [B, 1, Q, K]."""
  return (query_valid[:, :, None] & key_valid[:, None, :])[:, None]


def _segment_mask(query_segments, key_segments):
  return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


def _with_prompt_keys(mask, num_prompt: int):
  """[B, 1, Q, K] -> [B, 1, Q, P + K]: every query also sees the P prompt keys."""
  return jnp.concatenate([jnp.ones(mask.shape[:3] + (num_prompt,), bool), mask], axis=-1)


class Encoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens, segment_ids=None, deterministic=True):
    cfg = self.config
    valid = tokens != 0  # pad 0; negative ids are prompt slots (packed prompt tuning)
    mask = _padding_mask(valid, valid)
    if segment_ids is not None:
      mask &= _segment_mask(segment_ids, segment_ids)
    num_prompt = prompt_length(cfg)
    prepend = num_prompt if segment_ids is None else 0  # unpacked: the prompt comes first
    positions = jnp.arange(prepend + tokens.shape[1])
    bias = RelativePositionBias(cfg.relative_attention_num_buckets,
                                cfg.relative_attention_max_distance, cfg.num_heads,
                                bidirectional=True, precision=cfg.dot_precision,
                                name="relpos_bias")(positions, positions)
    if num_prompt:
      prompt = _param(self, "prompt_embedding", nn.initializers.normal(stddev=1.0),
                      (num_prompt, cfg.d_model), ("prompt", "embed"))
      x = self.shared_embedding(jnp.maximum(tokens, 0))
      if prepend:
        x, mask = _prepend_prompt(prompt.astype(x.dtype), x, mask, valid)
      else:
        x = _fill_prompt_slots(prompt.astype(x.dtype), x, tokens)
    else:
      x = self.shared_embedding(tokens)
    x = Dropout(cfg.dropout_rate)(x, deterministic)
    layer_cls = _layer_stack(EncoderLayer, cfg, cfg.num_layers, num_broadcast=2)
    if cfg.scan_layers:
      x, _ = layer_cls(cfg, deterministic, scanned=True, name=SCANNED_LAYERS)(x, mask, bias)
    else:
      for i in range(cfg.num_layers):
        x = layer_cls(cfg, deterministic, index=i, name=f"layers_{i}")(x, mask, bias)
    x = RMSNorm(cfg.layer_norm_epsilon, jnp.dtype(cfg.dtype), name="encoder_norm")(x)
    return Dropout(cfg.dropout_rate)(x, deterministic)


def _prepend_prompt(prompt, x, mask, valid):
  """Prompt tuning on unpacked rows, as PEFT does it: the P prompt rows before each
  row's tokens (PEFT prepends them to inputs_embeds); every query sees the prompt keys,
  the prompt's queries see the prompt and the row's tokens."""
  batch, num_prompt = x.shape[0], prompt.shape[0]
  x = jnp.concatenate([jnp.broadcast_to(prompt[None], (batch,) + prompt.shape), x], axis=1)
  keys = jnp.concatenate([jnp.ones((batch, num_prompt), bool), valid], axis=1)
  top = jnp.broadcast_to(keys[:, None, None, :], (batch, 1, num_prompt, x.shape[1]))
  return x, jnp.concatenate([top, _with_prompt_keys(mask, num_prompt)], axis=2)


def _fill_prompt_slots(prompt, x, tokens):
  """Prompt tuning on packed rows: the input pipelines put P slot ids -1 .. -P before
  each example's inputs (t5jax.data.rows.prompt_slot_ids); slot -k holds prompt row
  k - 1. Each example then has its own prompt at positions 0 .. P-1 of its segment,
  seen through the segment mask exactly as PEFT's prepended prompt is, and the rows
  are as long as PEFT's."""
  slot = jnp.clip(-tokens - 1, 0, prompt.shape[0] - 1)
  return jnp.where((tokens < 0)[..., None], prompt[slot], x)


class Decoder(nn.Module):
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded, encoder_tokens, tokens, encoder_segment_ids=None,
               segment_ids=None, deterministic=True, decode=False):
    cfg = self.config
    if decode and cfg.scan_layers:
      # The decoding cache and beam search index per-layer, batch-leading
      # arrays; a scanned stack would give them a leading layers axis.
      raise ValueError(
          "Incremental decoding (decode=True) needs per-layer parameters, but this "
          "config has scan_layers=True. Convert first: `config, params = "
          "t5jax.model.unscan_params(config, params)`.")
    length = tokens.shape[1]
    relpos = RelativePositionBias(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  bidirectional=False, precision=cfg.dot_precision,
                                  name="relpos_bias")
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
      max_length = self.variables["cache"]["layers_0"]["self_attention"]["cached_key"].shape[2]
      key_positions = jnp.arange(max_length)
      bias = relpos(decode_position[None], key_positions)
      self_mask = (key_positions <= decode_position)[None, None, None, :]
    else:
      positions = jnp.arange(length)
      bias = relpos(positions, positions)
      self_mask = (positions[None, :] <= positions[:, None])[None, None]
      if segment_ids is not None:
        self_mask = self_mask & _segment_mask(segment_ids, segment_ids)
    cross_mask = (encoder_tokens != 0)[:, None, None, :]  # negative: prompt slots
    if segment_ids is not None and encoder_segment_ids is not None and not stepping:
      cross_mask = cross_mask & _segment_mask(segment_ids, encoder_segment_ids)
    if prompt_length(cfg) and encoder_segment_ids is None:
      # Unpacked: the encoder output starts with the prompt's positions.
      cross_mask = _with_prompt_keys(cross_mask, prompt_length(cfg))

    if prompt_length(cfg) and cfg.adapter.num_transformer_submodules == 2:
      # HF PEFT's decoder prompt table for T5: saved with the adapter, never applied
      # (PEFT 0.21's seq2seq forward and generate prepend the encoder's rows only).
      _param(self, "prompt_embedding", nn.initializers.normal(stddev=1.0),
             (prompt_length(cfg), cfg.d_model), ("prompt", "embed"))
    x = self.shared_embedding(tokens)
    x = Dropout(cfg.dropout_rate)(x, deterministic)
    layer_cls = _layer_stack(DecoderLayer, cfg, cfg.decoder_layers, num_broadcast=5)
    if cfg.scan_layers:
      x, _ = layer_cls(cfg, deterministic, scanned=True, name=SCANNED_LAYERS)(
          x, encoded, self_mask, cross_mask, bias, decode_position)
    else:
      for i in range(cfg.decoder_layers):
        x = layer_cls(cfg, deterministic, decode, index=i, name=f"layers_{i}")(
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
      logits = matmul(x, kernel, cfg.dtype, jnp.float32, cfg.dot_precision)
    return nn.with_logical_constraint(logits, ("batch", "length", "vocab"))


class T5(nn.Module):
  """Encoder, decoder and the shared token embedding (T5X parameter names)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, jnp.dtype(cfg.dtype),
                                cfg.dot_precision)
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
    `encoded` (and `encoder_input_tokens`) may have fewer rows than the
    decoder tokens, B against B * g: each encoder row then serves g adjacent
    decoder rows (beams or samples) and its keys/values are cached once.
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
  """Fresh float32 parameters. boxed=True keeps the logical-axis metadata.

  The initialisers draw from `rng`'s words as a counter-hash key (t5jax.rng.init_key):
  the same distributions as with threefry, in a program a fraction of the size.
  """
  variables = T5(config).init(init_key(rng), *_dummy_inputs())
  return variables["params"] if boxed else nn.meta.unbox(variables["params"])


def abstract_params(config: T5Config):
  """Parameter shapes (with logical-axis boxes) without allocating anything."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), boxed=True))


def logical_axes(config: T5Config):
  """A tree like params whose leaves are PartitionSpecs of logical axis names."""
  return nn.get_partition_spec(abstract_params(config))


def param_shapes(config: T5Config):
  """Unboxed parameter shapes in config's own layout, traced through one scanned layer.

  Tracing `init` of a per-layer model costs time in its depth (5-7 s for an 11B-20B preset
  on CPU); the scanned model traces its layer once and `unscan_params` only slices, so this
  is ~10x faster and gives exactly the same tree of shapes as `abstract_params`.
  """
  scanned = config.replace(scan_layers=True)
  def shapes():
    params = init_params(scanned, jax.random.PRNGKey(0))
    return params if config.scan_layers else unscan_params(scanned, params)[1]
  return jax.eval_shape(shapes)


def count_params(config: T5Config) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(param_shapes(config))))


def init_cache(config: T5Config, batch_size: int, max_decode_length: int,
               encoder_length: int):
  """Zeroed 'cache' collection for `T5.decode(..., decode=True)`.

  Keys/values are [batch, heads, length, d_kv]. The cross-attention entries
  are replaced on the first step by the projected encoder output, whatever
  its batch (see `T5.decode`).
  """
  model = T5(config)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0),
                         *_dummy_inputs(batch_size, encoder_length, max_decode_length),
                         method=T5._init_decode))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _stack_sizes(config: T5Config) -> dict:
  return {"encoder": config.num_layers, "decoder": config.decoder_layers}


def unscan_params(config: T5Config, params) -> tuple[T5Config, dict]:
  """(config with scan_layers=False, params with per-layer `layers_{i}` subtrees).

  The inverse of `scan_params`. Stacks already in per-layer form are left as
  they are, so this is safe to call on any params ("unscan if needed").
  Works on numpy or jax arrays (sharded ones too) and under jit. Use it before
  incremental decoding (`t5jax.decoding`) or exporting per-layer names.
  """
  params = dict(nn.meta.unbox(params))
  for stack, num_layers in _stack_sizes(config).items():
    tree = dict(params[stack])
    if SCANNED_LAYERS not in tree:
      continue
    stacked = tree.pop(SCANNED_LAYERS)
    for leaf in jax.tree.leaves(stacked):
      if leaf.shape[0] != num_layers:
        raise ValueError(f"{stack}/{SCANNED_LAYERS} stacks {leaf.shape[0]} layers, but the "
                         f"config has {num_layers}.")
    for i in range(num_layers):
      tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    params[stack] = tree
  return config.replace(scan_layers=False), params


def scan_params(config: T5Config, params) -> tuple[T5Config, dict]:
  """(config with scan_layers=True, params with each stack's `layers_{i}`
  subtrees stacked into one `layers` subtree along a new leading axis).

  Stacks already scanned are left as they are. numpy in, numpy out (the
  checkpoint importers' arrays stay on the host); jax arrays otherwise.
  """
  params = dict(nn.meta.unbox(params))
  for stack, num_layers in _stack_sizes(config).items():
    tree = dict(params[stack])
    if SCANNED_LAYERS in tree:
      continue
    names = [f"layers_{i}" for i in range(num_layers)]
    extra = sorted(k for k in tree if k.startswith("layers_") and k not in names)
    missing = [k for k in names if k not in tree]
    if missing or extra:
      raise ValueError(f"{stack} does not have exactly the config's {num_layers} layers: "
                       f"missing {missing}, unexpected {extra}.")
    layers = [tree.pop(k) for k in names]

    def stack_leaves(*xs):
      if all(isinstance(x, np.ndarray) for x in xs):
        return np.stack(xs)
      return jnp.stack(xs)

    tree[SCANNED_LAYERS] = jax.tree.map(stack_leaves, *layers)
    params[stack] = tree
  return config.replace(scan_layers=True), params


__all__ = ["T5", "T5Config", "init_params", "abstract_params", "logical_axes",
           "count_params", "init_cache", "scan_params", "unscan_params"]
