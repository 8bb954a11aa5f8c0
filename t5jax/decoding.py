"""Cached decoding: greedy, temperature / top-k / top-p sampling, beam search, scoring.

    out = decode(params, model_config, encoder_input_tokens,
                 DecodeConfig(method="beam", num_beams=4, alpha=0.6))
    out.tokens  # [batch, num_decodes, max_decode_length], 0 after EOS
    out.scores  # [batch, num_decodes]: log-probability (beam: length-penalised)

The encoder runs once; the decoder runs one token per step against the
model's key/value cache (`t5jax.model.init_cache`), inside one jitted
`lax.while_loop` that stops early when every sequence has emitted EOS. Beam
search uses T5X's length penalty `((5 + len) / 6) ** alpha`. No TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from t5jax.config import T5Config
from t5jax import ops
from t5jax.model import T5, init_cache, init_params, unscan_params
from t5jax.errors import UsageError

NEG_INF = -1e10
METHODS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  method: str = "greedy"  # "greedy", "sample" or "beam"
  max_decode_length: int = 64  # new tokens, EOS included
  num_decodes: int = 1  # samples per input (sample) or beams returned (beam)
  num_beams: int = 4
  alpha: float = 0.6  # beam length penalty exponent; 0 turns it off
  temperature: float = 1.0
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1.0: off
  no_repeat_ngram_size: int = 0  # 0: off; as HF's no_repeat_ngram_size
  min_decode_length: int = 0  # EOS is banned before this many new tokens (HF min_new_tokens)
  # 'int8': int8 weights and int8 x int8 matmuls (t5jax.quantize; `t5jax infer --quantize`)
  quantize: str | None = None

  def __post_init__(self):
    if self.method not in METHODS:
      raise UsageError(f"DecodeConfig.method={self.method!r}: expected one of {METHODS}.")
    if self.max_decode_length < 1:
      raise UsageError(f"DecodeConfig.max_decode_length={self.max_decode_length}: must be >= 1 "
                       "(it counts new tokens, EOS included).")
    if self.method == "beam" and not 1 <= self.num_decodes <= self.num_beams:
      raise UsageError(f"num_decodes={self.num_decodes} beams cannot exceed "
                       f"num_beams={self.num_beams}.")
    if self.num_decodes < 1 or self.num_beams < 1 or self.top_k < 0:
      raise UsageError("num_decodes and num_beams must be >= 1 and top_k >= 0.")
    if self.quantize not in (None, "int8"):
      raise UsageError(f"DecodeConfig.quantize={self.quantize!r}: None or 'int8'.")
    if not 0.0 < self.top_p <= 1.0 or self.temperature < 0:
      raise UsageError(f"top_p={self.top_p} must be in (0, 1] and temperature="
                       f"{self.temperature} >= 0.")


class DecodeOutput(NamedTuple):
  tokens: jax.Array  # [batch, num_decodes, max_decode_length] int32
  scores: jax.Array  # [batch, num_decodes] float32


def brevity_penalty(alpha: float, length):
  """T5X / Google NMT: ((5 + length) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


# ----------------------------------------------------------------------------
# Logit processing (all on [batch, vocab] float32 log-probs / logits).

def banned_ngram_mask(seqs, cur_len, n: int, vocab_size: int):
  """True where a token would repeat an n-gram already in seqs[:, :cur_len].

  seqs holds the decoder start token at 0, as HF's input_ids do.
  """
  batch, length = seqs.shape
  num = length - n + 1  # candidate n-gram start positions
  if num <= 0:
    return jnp.zeros((batch, vocab_size), bool)
  # An n-gram starting at j already exists if it ends before cur_len; the
  # next token repeats it if the last n-1 tokens equal its first n-1.
  match = ((jnp.arange(num) + n - 1 < cur_len) & (cur_len >= n))[None, :]
  if n > 1:
    start = jnp.maximum(cur_len - n + 1, 0)
    suffix = jax.lax.dynamic_slice_in_dim(seqs, start, n - 1, axis=1)
    for i in range(n - 1):
      match = match & (seqs[:, i:i + num] == suffix[:, i:i + 1])
  next_tokens = seqs[:, n - 1:n - 1 + num]
  banned = jnp.zeros((batch, vocab_size), bool)
  return banned.at[jnp.arange(batch)[:, None], next_tokens].max(match)


def top_k_top_p(logits, top_k: int, top_p: float):
  """Keeps the top_k largest and the smallest set with probability >= top_p."""
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # A token stays if the mass before it is < top_p (the first always stays).
    keep = (cum - jax.nn.softmax(sorted_logits, axis=-1)) < top_p
    threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


# ----------------------------------------------------------------------------
# The decoder step shared by all methods.

def _model_step(model: T5, params, encoder_tokens, encoded):
  """step(cache, tokens [n], first) -> (log-probs [n, vocab], cache).

  The first step passes the encoder output, which the cross-attention layers
  project once into the cache; later steps read it back.
  """
  def step(cache, tokens, first: bool):
    logits, mutated = model.apply({"params": params, "cache": cache},
                                  encoded if first else None, encoder_tokens, tokens[:, None],
                                  decode=True, mutable=["cache"], method=T5.decode)
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), mutated["cache"]
  return step


def _process(log_probs, seqs, cur_len, cfg: DecodeConfig, eos_id: int):
  """seqs[:, :cur_len] is the start token plus the cur_len - 1 tokens made so far."""
  if cfg.min_decode_length:
    too_short = cur_len - 1 < cfg.min_decode_length
    log_probs = log_probs.at[:, eos_id].set(jnp.where(too_short, NEG_INF, log_probs[:, eos_id]))
  if cfg.no_repeat_ngram_size:
    banned = banned_ngram_mask(seqs, cur_len, cfg.no_repeat_ngram_size, log_probs.shape[-1])
    log_probs = jnp.where(banned, NEG_INF, log_probs)
  return log_probs


def _start_seqs(shape, start_id, pad_id):
  """seqs[..., 0] is the decoder start token; seqs[..., t + 1] the t-th new token."""
  return jnp.full(shape, pad_id, jnp.int32).at[..., 0].set(start_id)


def sample_loop(step, cache, batch: int, rng, cfg: DecodeConfig, *, eos_id=1, pad_id=0,
                start_id=0) -> DecodeOutput:
  """Greedy (method 'greedy' or temperature 0) or sampled decoding of `batch` rows."""
  length = cfg.max_decode_length
  greedy = cfg.method == "greedy" or cfg.temperature == 0

  def advance(t, seqs, cache, done, score, rng, first=False):
    log_probs, cache = step(cache, seqs[:, t], first)
    log_probs = _process(log_probs, seqs, t + 1, cfg, eos_id)
    rng, key = jax.random.split(rng)
    if greedy:
      token = ops.argmax(log_probs)
    else:
      logits = top_k_top_p(log_probs / cfg.temperature, cfg.top_k, cfg.top_p)
      token = jax.random.categorical(key, logits, axis=-1)
    token_lp = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, pad_id, token)
    score = score + jnp.where(done, 0.0, token_lp)
    return t + 1, seqs.at[:, t + 1].set(token), cache, done | (token == eos_id), score, rng

  state = (0, _start_seqs((batch, length + 1), start_id, pad_id), cache,
           jnp.zeros(batch, bool), jnp.zeros(batch), rng)
  state = advance(*state, first=True)  # outside the loop: see _model_step
  state = jax.lax.while_loop(lambda s: (s[0] < length) & ~jnp.all(s[3]),
                             lambda s: advance(*s), state)
  return DecodeOutput(state[1][:, None, 1:], state[4][:, None])


def _gather_beams(tree, indices, batch_beams):
  """Reorders every batch-leading array of a cache by flat beam indices.

  The cross-attention keys/values are skipped: they hold one row per input,
  shared by its beams (see T5.decode), so there is nothing to reorder.
  """
  def gather(path, x):
    if any(getattr(k, "key", None) in ("cross_key", "cross_value") for k in path):
      return x
    return x[indices] if x.ndim and x.shape[0] == batch_beams else x
  return jax.tree_util.tree_map_with_path(gather, tree)


def beam_search(step, cache, batch: int, cfg: DecodeConfig, *, eos_id=1, pad_id=0,
                start_id=0) -> DecodeOutput:
  """Beam search over `batch` inputs, each with cfg.num_beams rows in `cache`.

  Finished hypotheses are scored log p / ((5 + len) / 6) ** alpha (T5X); the
  search stops when no alive beam can beat the worst finished one.
  """
  k, length = cfg.num_beams, cfg.max_decode_length
  seqs = _start_seqs((batch, k, length + 1), start_id, pad_id)
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  fin_seqs, fin_scores = seqs, jnp.full((batch, k), NEG_INF)

  def advance(t, seqs, alive_lp, fin_seqs, fin_scores, cache, first=False):
    """Extends every alive beam by one token (written at index t + 1)."""
    log_probs, cache = step(cache, seqs[:, :, t].reshape(-1), first)
    vocab = log_probs.shape[-1]
    log_probs = _process(log_probs, seqs.reshape(batch * k, -1), t + 1, cfg, eos_id)
    cand = (alive_lp[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, k * vocab)
    # 2k candidates: enough to keep k alive even if k of them end in EOS.
    top_lp, top_idx = jax.lax.top_k(cand, 2 * k)
    parent, token = top_idx // vocab, top_idx % vocab
    cand_seqs = jnp.take_along_axis(seqs, parent[:, :, None], axis=1).at[:, :, t + 1].set(token)
    is_eos = token == eos_id
    # As HF: an EOS candidate finishes only if it ranks in the top k.
    new_fin = jnp.where(is_eos & (jnp.arange(2 * k) < k)[None],
                        top_lp / brevity_penalty(cfg.alpha, t + 1), NEG_INF)
    fin_scores, idx = jax.lax.top_k(jnp.concatenate([fin_scores, new_fin], axis=1), k)
    fin_seqs = jnp.take_along_axis(jnp.concatenate([fin_seqs, cand_seqs], axis=1),
                                   idx[:, :, None], axis=1)
    alive_lp, idx = jax.lax.top_k(jnp.where(is_eos, NEG_INF, top_lp), k)
    seqs = jnp.take_along_axis(cand_seqs, idx[:, :, None], axis=1)
    beam_parent = jnp.take_along_axis(parent, idx, axis=1)
    flat_parent = (jnp.arange(batch)[:, None] * k + beam_parent).reshape(-1)
    return t + 1, seqs, alive_lp, fin_seqs, fin_scores, _gather_beams(cache, flat_parent,
                                                                      batch * k)

  def not_done(state):
    t, _, alive_lp, _, fin_scores, _ = state
    # Alive log-probs only fall as tokens are added; with alpha > 0 the
    # penalty can lift them, at most up to the maximum length's penalty.
    best_alive = alive_lp[:, 0] / brevity_penalty(cfg.alpha, length if cfg.alpha > 0 else t)
    return (t < length) & jnp.any(best_alive > fin_scores[:, -1])

  state = advance(0, seqs, alive_lp, fin_seqs, fin_scores, cache, first=True)
  t, seqs, alive_lp, fin_seqs, fin_scores, _ = jax.lax.while_loop(
      not_done, lambda s: advance(*s), state)
  # Beams still alive at the length limit compete with the finished ones.
  alive_scores = jnp.where(alive_lp > NEG_INF / 2, alive_lp / brevity_penalty(cfg.alpha, t),
                           NEG_INF)
  scores, idx = jax.lax.top_k(jnp.concatenate([fin_scores, alive_scores], axis=1), cfg.num_decodes)
  seqs = jnp.take_along_axis(jnp.concatenate([fin_seqs, seqs], axis=1), idx[:, :, None], axis=1)
  return DecodeOutput(_pad_after_eos(seqs[:, :, 1:], eos_id, pad_id), scores)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeParams:
  """Params prepared for `decode` (`prepare_params`). Pass these in place of the plain
  params to prepare once for many `decode` calls (evaluation, inference). On the
  XLA-CPU path in bfloat16 the matmul weights are cast once and stored [out, in]
  (`ops.to_decode_layout`; the cast and transpose cost about as much as several
  decoding steps); elsewhere the tree is the params as they are."""
  tree: dict
  dtype: str = dataclasses.field(metadata=dict(static=True))
  out_in: bool = dataclasses.field(metadata=dict(static=True))  # weights stored [out, in]
  # 'int8': matmul weights are t5jax.quantize.Int8Weight (int8 x int8 matmuls)
  quantize: str | None = dataclasses.field(default=None, metadata=dict(static=True))


def prepare_params(params, config: T5Config, quantize: str | None = None) -> DecodeParams:
  """Per-layer params -> `DecodeParams` for this config (and this backend path).

  quantize='int8': every matmul weight as int8 with per-output-channel scales, the
  activations quantised per row at each matmul (t5jax.quantize; what it costs in quality:
  docs/cli.md, "Decoding in int8"). Activations, norms and the KV cache stay in config.dtype.
  """
  dtype = jnp.dtype(config.dtype)
  if not isinstance(params, DecodeParams):
    config, params = unscan_params(config, params)  # the decoding cache is per layer
  if isinstance(params, DecodeParams):
    if params.quantize != quantize and quantize is not None:
      raise ValueError(f"these DecodeParams were prepared with quantize={params.quantize!r}, "
                       f"not {quantize!r}: prepare them from the plain params.")
    if params.dtype != dtype.name:
      raise ValueError(f"these DecodeParams were prepared for dtype {params.dtype}, but the "
                       f"config says {dtype.name}: prepare them with this config.")
    ops.check_decode_layout(params.out_in)
    return params
  if quantize is not None:
    from t5jax import quantize as quantize_lib
    if getattr(config, "adapter", None) is not None:
      raise UsageError("quantize='int8' needs plain weights: merge the adapter into the base "
                       "first (t5jax convert --adapter=DIR, or t5jax.peft.merge).")
    if quantize not in quantize_lib.QUANTIZE_MODES:
      raise UsageError(f"quantize={quantize!r}: choose one of "
                       f"{', '.join(map(repr, quantize_lib.QUANTIZE_MODES))}, or None.")
    tree = jax.jit(functools.partial(quantize_lib.quantize_params, mode=quantize))(params)
    return DecodeParams(tree, dtype.name, False, quantize)
  out_in = ops.decode_layout(config.dtype, config.scan_layers)
  tree = ops.to_decode_layout(params, dtype) if out_in else params
  return DecodeParams(tree, dtype.name, out_in)


@functools.lru_cache(maxsize=16)
def _param_shapes(config: T5Config):
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def _pad_after_eos(tokens, eos_id, pad_id):
  after = jnp.cumsum(tokens == eos_id, axis=-1) - (tokens == eos_id) > 0
  return jnp.where(after, pad_id, tokens)


def _decode_jit(params: DecodeParams, encoder_tokens, rng, config: T5Config, cfg: DecodeConfig):
  return _decode_compiled(params, encoder_tokens, rng, config, cfg, ops.cpu_path())


@functools.partial(jax.jit, static_argnames=("config", "cfg", "cpu_path"))
def _decode_compiled(params: DecodeParams, encoder_tokens, rng, config: T5Config,
                     cfg: DecodeConfig, cpu_path: bool):
  del cpu_path  # a key of the jit cache: the path is read while tracing
  if not params.out_in:
    return _decode(params.tree, encoder_tokens, rng, config, cfg)
  with ops.decode_layout_scope(params.tree, _param_shapes(config)) as tree:
    return _decode(tree, encoder_tokens, rng, config, cfg)


def _decode(params, encoder_tokens, rng, config: T5Config, cfg: DecodeConfig):
  model = T5(config)
  copies = cfg.num_beams if cfg.method == "beam" else cfg.num_decodes
  batch = encoder_tokens.shape[0]
  # Each input is encoded once; its `copies` decoder rows (beams / samples,
  # adjacent) share its cross-attention keys/values (see T5.decode).
  encoded = model.apply({"params": params}, encoder_tokens, method=T5.encode)
  cache = init_cache(config, batch * copies, cfg.max_decode_length, encoder_tokens.shape[1])
  step = _model_step(model, params, encoder_tokens, encoded)
  ids = dict(eos_id=config.eos_token_id, pad_id=config.pad_token_id,
             start_id=config.decoder_start_token_id)
  if cfg.method == "beam":
    return beam_search(step, cache, batch, cfg, **ids)
  out = sample_loop(step, cache, batch * copies, rng, cfg, **ids)
  return DecodeOutput(out.tokens.reshape(batch, copies, -1), out.scores.reshape(batch, copies))


def decode(params, config: T5Config, encoder_input_tokens, cfg: DecodeConfig = DecodeConfig(),
           rng=None, *, mesh=None, rules: str = "1d",
           quantize: str | None = None) -> DecodeOutput:
  """Decodes a batch of (padded) encoder inputs; see DecodeConfig for the options.

  `params`: the model's params (a scanned model's are unscanned here: the cache is
  per layer), or `prepare_params(params, config)` made once for many calls. With a `mesh`
  (t5jax.partitioning.make_mesh), params and
  inputs are sharded as in training (rule set `rules`) and the decode loop runs
  under the mesh: rows over the data axis, heads / mlp / vocab over the model axis.
  `quantize='int8'`: int8 weights and matmuls (`prepare_params`), on one device or a mesh.
  """
  tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  if tokens.ndim != 2 or tokens.shape[1] == 0:
    raise UsageError(f"encoder_input_tokens must be [batch, length>0], got {tokens.shape}.")
  if rng is None:
    rng = jax.random.PRNGKey(0)
  config = config.replace(dropout_rate=0.0)
  if isinstance(params, DecodeParams):
    config = config.replace(scan_layers=False)
  else:
    config, params = unscan_params(config, params)
  quantize = quantize or cfg.quantize
  if mesh is None:
    return _decode_jit(prepare_params(params, config, quantize), tokens, rng, config, cfg)
  if isinstance(params, DecodeParams):
    # sharded by the logical shapes; the [out, in] layout is for one device
    if params.out_in or params.quantize:
      raise ValueError("decode(mesh=...) takes the plain params, not prepare_params' "
                       f"{params.dtype} layout: pass the params you prepared from.")
    params = params.tree
  from t5jax import partitioning  # only needed when sharding
  rule_set = partitioning.rules(rules)
  shards = partitioning.batch_divisor(mesh, rule_set)
  if tokens.shape[0] % shards:
    raise UsageError(f"batch of {tokens.shape[0]} inputs is not divisible by the {shards} "
                     f"batch shards of mesh {dict(mesh.shape)}.")
  params = jax.device_put(params, partitioning.param_shardings(mesh, config, rule_set))
  tokens = jax.device_put(tokens, partitioning.batch_sharding(mesh, rule_set))
  with partitioning.activate(mesh, rule_set):  # the plain layout: shardings follow it
    prepared = DecodeParams(params, jnp.dtype(config.dtype).name, False)
    if quantize is not None:  # quantised where the weights lie: the shardings carry over
      prepared = prepare_params(params, config, quantize)
    return _decode_jit(prepared, tokens, rng, config, cfg)


def score_targets(params, config: T5Config, encoder_input_tokens, decoder_target_tokens):
  """Sum of log p(target token) per sequence, up to and including EOS (0 = padding)."""
  targets = jnp.asarray(decoder_target_tokens, jnp.int32)
  inputs = jnp.concatenate(
      [jnp.full_like(targets[:, :1], config.decoder_start_token_id), targets[:, :-1]], axis=1)
  logits = T5(config).apply({"params": params}, jnp.asarray(encoder_input_tokens), inputs)
  log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  return jnp.sum(jnp.where(targets > 0, log_probs, 0.0), axis=-1)


__all__ = ["DecodeConfig", "DecodeOutput", "DecodeParams", "decode", "prepare_params",
           "score_targets", "brevity_penalty", "banned_ngram_mask", "top_k_top_p"]
