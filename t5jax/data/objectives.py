"""Pretraining objectives: T5 span corruption and the paper's ablations.

Span corruption follows T5 exactly (T5 paper section 3.1.4; docs/t5_facts.md,
"Span corruption"):
  1. select_random_chunk: a document longer than 65536 tokens is cut to one
     randomly chosen aligned chunk of that size;
  2. reduce_concat_tokens: 128 documents are concatenated, no separator;
  3. split_tokens: the stream is cut into segments of the raw length
     (random_spans_helper: 568 tokens for 512 input tokens);
  4. denoise: random_spans_noise_mask marks noise spans; each noise span
     becomes one sentinel in the inputs, each non-noise span one sentinel in
     the targets; the task appends EOS to both.
The other objectives of the paper's Tables 3-4 (prefix LM, BERT-style MLM,
MASS-style, deshuffling, i.i.d. noise with span replacement, dropped tokens)
reuse the same segment stream and differ only in the mask and in how
inputs/targets are made from it. "ul2" is UL2's mixture of denoisers (Tay
et al. 2022; docs/t5_facts.md, "UL2 mixture of denoisers"): each segment
gets one of seven span-corruption / prefix-LM denoisers, drawn with the
mixture's proportions, and a mode token in front of its inputs.

The per-segment work (masks, sentinels) is numpy, called from tf.data through
tf.numpy_function: a segment needs ~15 small array operations, which numpy
does in ~60 us while the equivalent TF graph costs ~500 us of per-op
overhead, and that difference decides whether 2 cores reach 1,500
examples/s. Document handling (chunking, concatenation, splitting) stays in
tf.data and is vectorised over groups of 128 documents.

Every per-segment function takes a numpy Generator; the pipeline seeds it
from the per-example seed seqio derives from the task seed, so the output is
a pure function of (data, seed): deterministic and resumable.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import numpy as np
import seqio
import tensorflow as tf

from t5jax.errors import UsageError

# T5 caps each document at this many tokens before concatenation.
MAX_CHUNK_TOKENS = 65536
# T5 concatenates documents in groups of this many.
CONCAT_BATCH = 128


# ---------------------------------------------------------------------------
# Lengths.


def _span_corruption_lengths(tokens_length: int, noise_density: float,
                             mean_noise_span_length: float) -> tuple[int, int]:
  # Python's round (half to even) matches tf.round in the mask below, so the
  # static lengths agree with what the mask produces at run time.
  num_noise = int(round(tokens_length * noise_density))
  num_nonnoise = tokens_length - num_noise
  num_spans = int(round(num_noise / mean_noise_span_length))
  # +1: the EOS that the task appends to inputs and to targets.
  return num_nonnoise + num_spans + 1, num_noise + num_spans + 1


def random_spans_helper(inputs_length: int = 512, noise_density: float = 0.15,
                        mean_noise_span_length: float = 3.0) -> tuple[int, int]:
  """Raw segment length and targets length for a span-corruption input length.

  Returns (tokens_length, targets_length): tokens_length is the largest raw
  segment whose corrupted inputs (with sentinels and EOS) fit inputs_length.
  512 -> (568, 114); 1024 -> (1137, 229).
  """
  tokens_length = inputs_length
  while _span_corruption_lengths(tokens_length + 1, noise_density,
                                 mean_noise_span_length)[0] <= inputs_length:
    tokens_length += 1
  while _span_corruption_lengths(tokens_length, noise_density,
                                 mean_noise_span_length)[0] > inputs_length:
    tokens_length -= 1  # happens only for degenerate densities
  _, targets_length = _span_corruption_lengths(
      tokens_length, noise_density, mean_noise_span_length)
  return tokens_length, targets_length


# ---------------------------------------------------------------------------
# Noise masks: bool [length], True = noise.


def _random_segmentation(num_items: int, num_segments: int,
                         rng: np.random.Generator) -> np.ndarray:
  """Lengths of num_segments non-empty random segments summing to num_items.

  Segment boundaries are a uniformly random subset of the num_items - 1 gaps,
  the same distribution as T5's shuffled start indicator.
  """
  cuts = np.sort(rng.choice(num_items - 1, num_segments - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts + 1, [num_items]]))


def _span_lengths(length: int, noise_density: float,
                  mean_noise_span_length: float, rng: np.random.Generator):
  """(non-noise span lengths, noise span lengths) of T5's span mask."""
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_nonnoise = length - num_noise
  num_spans = max(1, int(round(num_noise / mean_noise_span_length)))
  # Both kinds need num_spans non-empty spans; only binds at density ~ 1.
  num_spans = min(num_spans, num_noise, num_nonnoise)
  return (_random_segmentation(num_nonnoise, num_spans, rng),
          _random_segmentation(num_noise, num_spans, rng))


def random_spans_noise_mask(length: int, noise_density: float,
                            rng: np.random.Generator,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
  """T5's span mask: equal numbers of noise and non-noise spans.

  num_noise = round(length * noise_density) clamped to [1, length - 1];
  num_spans = max(1, round(num_noise / mean_noise_span_length)); noise and
  non-noise tokens are each split into num_spans non-empty random spans and
  interleaved, starting with non-noise (so the mask ends with noise).
  Rounding is half-to-even, as in T5 (Python/TF round).
  """
  # A 1-token segment cannot hold a noise and a non-noise span; like T5, build
  # the mask for length 2 and cut it back (the token stays non-noise).
  nonnoise, noise = _span_lengths(max(length, 2), noise_density,
                                  mean_noise_span_length, rng)
  interleaved = np.stack([nonnoise, noise], 1).reshape(-1)
  kinds = np.tile(np.array([False, True]), len(noise))
  return np.repeat(kinds, interleaved)[:length]


def iid_noise_mask(length: int, noise_density: float,
                   rng: np.random.Generator) -> np.ndarray:
  """Each token independently is noise with probability noise_density."""
  return rng.random(length) < noise_density


# ---------------------------------------------------------------------------
# Turning (tokens, mask) into inputs or targets. `vocab_size` counts the
# extra ids (32100 for T5), so sentinel i is vocab_size - 1 - i.


def sentinel_id(vocabulary, i: int = 0) -> int:
  """Sentinel for span i: vocab_size - 1 - i (32099 = <extra_id_0>)."""
  return vocabulary.vocab_size - 1 - i


def noise_span_to_unique_sentinel(tokens, noise_mask, vocab_size: int,
                                  rng=None) -> np.ndarray:
  """Replaces each noise span by one sentinel, numbered from the left."""
  del rng
  prev_is_noise = np.concatenate([[False], noise_mask[:-1]])
  first_noise = noise_mask & ~prev_is_noise
  sentinels = vocab_size - np.cumsum(first_noise)
  out = np.where(first_noise, sentinels, tokens)
  return out[~(noise_mask & prev_is_noise)]


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocab_size: int,
                                     rng=None) -> np.ndarray:
  return noise_span_to_unique_sentinel(tokens, ~noise_mask, vocab_size, rng)


def drop_noise_tokens(tokens, noise_mask, vocab_size, rng=None):
  return tokens[~noise_mask]


def drop_nonnoise_tokens(tokens, noise_mask, vocab_size, rng=None):
  return tokens[noise_mask]


def keep_tokens(tokens, noise_mask, vocab_size, rng=None):
  return tokens


def noise_token_to_mask_or_random(tokens, noise_mask, vocab_size, rng,
                                  random_prob: float = 0.1,
                                  extra_ids: int = 100):
  """BERT-style as in the T5 paper: each noise token becomes the mask token
  (<extra_id_0>) with probability 1 - random_prob, else a random piece."""
  use_random = rng.random(len(tokens)) < random_prob
  # Random replacements are ordinary pieces (not pad/eos/unk, not sentinels),
  # so a "random" token never looks like structure.
  random_tokens = rng.integers(3, vocab_size - extra_ids, len(tokens))
  replaced = np.where(use_random, random_tokens, vocab_size - 1)
  return np.where(noise_mask, replaced, tokens)


def noise_token_to_mask(tokens, noise_mask, vocab_size, rng=None):
  """MASS-style as in the T5 paper (Table 5): like BERT-style, but every noise
  token becomes the mask token (<extra_id_0>); no random or kept tokens."""
  del rng
  return np.where(noise_mask, vocab_size - 1, tokens)


def permute_all_tokens(tokens, noise_mask, vocab_size, rng):
  """Deshuffling: the inputs are a random permutation of the segment."""
  return rng.permutation(tokens)


def span_corrupt(tokens, rng, vocab_size: int, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0):
  """One segment -> (inputs, targets) without EOS; exactly T5's denoise.

  Same result as noise_span_to_unique_sentinel / nonnoise_span_to_unique_
  sentinel on random_spans_noise_mask, built from the span lengths directly
  (half the numpy calls; this function is the pipeline's hot loop).
  """
  tokens = np.asarray(tokens)
  if len(tokens) < 2:
    mask = random_spans_noise_mask(len(tokens), noise_density, rng,
                                   mean_noise_span_length)
    return (noise_span_to_unique_sentinel(tokens, mask, vocab_size),
            nonnoise_span_to_unique_sentinel(tokens, mask, vocab_size))
  nonnoise, noise = _span_lengths(len(tokens), noise_density,
                                  mean_noise_span_length, rng)
  kinds = np.tile(np.array([False, True]), len(noise))
  mask = np.repeat(kinds, np.stack([nonnoise, noise], 1).reshape(-1))
  sentinels = vocab_size - 1 - np.arange(len(noise))
  # Sentinel k goes after non-noise span k in the inputs, and before noise
  # span k in the targets.
  inputs = np.insert(tokens[~mask], np.cumsum(nonnoise), sentinels)
  targets = np.insert(tokens[mask], np.cumsum(noise) - noise, sentinels)
  return inputs, targets


def _mask_then(mask_fn, inputs_fn, targets_fn):
  """(tokens, rng, vocab_size) -> (inputs, targets) from a mask and views."""
  def make_pair(tokens, rng, vocab_size):
    mask = mask_fn(len(tokens), rng=rng)
    return (inputs_fn(tokens, mask, vocab_size, rng),
            targets_fn(tokens, mask, vocab_size, rng))
  return make_pair


def prefix_lm(tokens, rng, vocab_size=None):
  """Prefix LM: a uniformly random split point (1..n-1) into inputs/targets."""
  split = int(rng.integers(1, max(len(tokens), 2)))
  return tokens[:split], tokens[split:]


# ---------------------------------------------------------------------------
# UL2: mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language
# Learning Paradigms", section 3.1; docs/t5_facts.md, "UL2 mixture of
# denoisers").


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One UL2 denoiser.

  Attributes:
    name: a short label ("R1", "X3", "S").
    mode: its mode token, one of UL2_MODES.
    noise_density: corruption rate r; for the S-denoiser the fraction of the
      segment that is the target suffix.
    mean_noise_span_length: mean span length mu; None for the S-denoiser
      (prefix LM: one span, the suffix).
    weight: its share of the mixture (weights are normalised).
  """
  name: str
  mode: str
  noise_density: float
  mean_noise_span_length: float | None
  weight: float


# Mode tokens, in the order of their reserved ids (see mode_token_id).
UL2_MODES = ("[NLU]", "[NLG]", "[S2S]")

# The paper's seven denoisers: R (regular span corruption), X (extreme: long
# spans or high rates), S (sequential: prefix LM, the last 25% is the
# target). Rates: S 20%, and R and X 40% each, split equally within the group
# (R 20% each, X 10% each), the split UL2-style configs give UL2's published
# `ul2_objective` preprocessor (it takes one rate per denoiser).
UL2_DENOISERS = (
    Denoiser("R1", "[NLU]", 0.15, 3.0, 0.4 / 2),
    Denoiser("R2", "[NLU]", 0.15, 8.0, 0.4 / 2),
    Denoiser("X1", "[NLG]", 0.5, 3.0, 0.4 / 4),
    Denoiser("X2", "[NLG]", 0.5, 8.0, 0.4 / 4),
    Denoiser("X3", "[NLG]", 0.15, 64.0, 0.4 / 4),
    Denoiser("X4", "[NLG]", 0.5, 64.0, 0.4 / 4),
    Denoiser("S", "[S2S]", 0.25, None, 0.2),
)


def mode_token_id(vocabulary, mode: str) -> int:
  """Reserved id of a UL2 mode token: the lowest extra ids.

  [NLU], [NLG], [S2S] are the first three ids after the pieces (T5: 32000,
  32001, 32002 = <extra_id_99>, <extra_id_98>, <extra_id_97>), so sentinels
  count down from the top as in T5 and at most extra_ids - 3 are used.
  """
  return (vocabulary.vocab_size - vocabulary.extra_ids
          + UL2_MODES.index(mode))


def _denoiser_lengths(length: int, denoiser: Denoiser) -> tuple[int, int, int]:
  """(inputs, targets, sentinels) of a segment of length >= 2, with the mode
  token and EOS; mirrors _span_lengths (R/X) and _suffix_length (S)."""
  if denoiser.mean_noise_span_length is None:
    suffix = _suffix_length(length, denoiser.noise_density)
    return length - suffix + 2, suffix + 1, 0
  num_noise = min(max(int(round(length * denoiser.noise_density)), 1),
                  length - 1)
  num_nonnoise = length - num_noise
  num_spans = max(1, int(round(num_noise / denoiser.mean_noise_span_length)))
  num_spans = min(num_spans, num_noise, num_nonnoise)
  return num_nonnoise + num_spans + 2, num_noise + num_spans + 1, num_spans


def _suffix_length(length: int, fraction: float) -> int:
  """Target tokens of the S-denoiser: round(length * fraction) in
  [1, length - 1] (0 for a 1-token segment)."""
  if length < 2:
    return 0
  return min(max(int(round(length * fraction)), 1), length - 1)


def ul2_lengths(inputs_length: int, targets_length: int,
                denoisers: Sequence[Denoiser] = UL2_DENOISERS,
                max_sentinels: int = 97) -> tuple[int, ...]:
  """Raw segment length for each denoiser, as random_spans_helper for T5.

  For each denoiser, the largest raw length whose inputs (mode token,
  sentinels and EOS included) fit inputs_length, whose targets (sentinels
  and EOS) fit targets_length, and that needs at most max_sentinels
  sentinels. Inputs and targets grow with the raw length, so every shorter
  segment fits too: nothing is ever trimmed.
  """
  out = []
  for d in denoisers:
    fits = lambda n: (  # noqa: E731
        _denoiser_lengths(n, d)[0] <= inputs_length
        and _denoiser_lengths(n, d)[1] <= targets_length
        and _denoiser_lengths(n, d)[2] <= max_sentinels)
    if not fits(2):
      raise UsageError(
          f"UL2 denoiser {d.name} does not fit inputs_length={inputs_length}"
          f", targets_length={targets_length}; use longer lengths")
    n = 2
    while fits(n + 1):
      n += 1
    out.append(n)
  return tuple(out)


def ul2_denoise(tokens, rng, vocab_size: int, denoiser: Denoiser,
                mode_id: int):
  """One segment -> (inputs, targets) without EOS for one UL2 denoiser.

  R/X: T5 span corruption with the denoiser's rate and mean span length.
  S: inputs are the prefix, targets the last round(r * n) tokens.
  The mode token's id comes first in the inputs.
  """
  tokens = np.asarray(tokens)
  if denoiser.mean_noise_span_length is None:
    split = len(tokens) - _suffix_length(len(tokens), denoiser.noise_density)
    inputs, targets = tokens[:split], tokens[split:]
  else:
    inputs, targets = span_corrupt(
        tokens, rng, vocab_size, noise_density=denoiser.noise_density,
        mean_noise_span_length=denoiser.mean_noise_span_length)
  return np.concatenate([[mode_id], inputs]).astype(tokens.dtype), targets


def make_ul2_pair_fn(vocabulary, inputs_length: int, targets_length: int,
                     denoisers: Sequence[Denoiser] = UL2_DENOISERS
                     ) -> Callable:
  """(tokens, rng, vocab_size) -> (inputs, targets): UL2's mixture.

  Per segment, a denoiser is drawn from the seeded rng with the mixture's
  weights; the segment is cut to that denoiser's raw length (ul2_lengths;
  segments are made at the longest one, the rest of a segment is dropped)
  and denoised.
  """
  if vocabulary.extra_ids < len(UL2_MODES) + 1:
    raise UsageError(
        f"UL2 needs {len(UL2_MODES)} mode tokens and sentinels among the "
        f"extra ids; the vocabulary has {vocabulary.extra_ids}")
  raw = ul2_lengths(inputs_length, targets_length, denoisers,
                    vocabulary.extra_ids - len(UL2_MODES))
  mode_ids = [mode_token_id(vocabulary, d.mode) for d in denoisers]
  weights = np.array([d.weight for d in denoisers], np.float64)
  weights /= weights.sum()

  def make_pair(tokens, rng, vocab_size):
    k = int(rng.choice(len(denoisers), p=weights))
    return ul2_denoise(tokens[:raw[k]], rng, vocab_size, denoisers[k],
                       mode_ids[k])

  make_pair.raw_length = max(raw)
  make_pair.raw_lengths = raw
  return make_pair


def make_pair_fn(objective: str, vocabulary, *, noise_density: float = 0.15,
                 mean_noise_span_length: float = 3.0,
                 random_prob: float = 0.1,
                 sequence_length: dict[str, int] | None = None) -> Callable:
  """(tokens, rng, vocab_size) -> (inputs, targets) for an objective name.

  Objectives (T5 paper Tables 3-4): "span_corruption" (the T5 default),
  "iid_denoising" (i.i.d. mask, each corrupted span -> one sentinel; as in
  T5, more than extra_ids spans run into ordinary ids, so keep the rate low),
  "drop_tokens" (i.i.d. mask, inputs drop the noise, targets are the noise),
  "bert_mlm" (i.i.d. mask, noise -> <extra_id_0> 90% / random piece 10%,
  targets are the original text), "mass" (MASS-style: i.i.d. mask, every
  noise token -> <extra_id_0>, targets are the original text), "deshuffling"
  (inputs shuffled, targets original), "prefix_lm" (random split point),
  and "ul2" (UL2's mixture of denoisers, make_ul2_pair_fn; it needs
  sequence_length and ignores noise_density / mean_noise_span_length).
  """
  iid = functools.partial(iid_noise_mask, noise_density=noise_density)
  if objective == "span_corruption":
    return functools.partial(span_corrupt, noise_density=noise_density,
                             mean_noise_span_length=mean_noise_span_length)
  if objective == "iid_denoising":
    return _mask_then(iid, noise_span_to_unique_sentinel,
                      nonnoise_span_to_unique_sentinel)
  if objective == "drop_tokens":
    return _mask_then(iid, drop_noise_tokens, drop_nonnoise_tokens)
  if objective == "bert_mlm":
    return _mask_then(iid, functools.partial(
        noise_token_to_mask_or_random, random_prob=random_prob,
        extra_ids=vocabulary.extra_ids), keep_tokens)
  if objective == "mass":
    return _mask_then(iid, noise_token_to_mask, keep_tokens)
  if objective == "deshuffling":
    return _mask_then(lambda n, rng: np.zeros(n, bool), permute_all_tokens,
                      keep_tokens)
  if objective == "prefix_lm":
    return prefix_lm
  if objective == "ul2":
    if sequence_length is None:
      raise UsageError("objective 'ul2' needs the sequence_length")
    return make_ul2_pair_fn(vocabulary, sequence_length["inputs"],
                            sequence_length["targets"])
  raise UsageError(f"unknown objective {objective!r}; choose one of "
                   f"{OBJECTIVES}")


OBJECTIVES = ("span_corruption", "iid_denoising", "drop_tokens", "bert_mlm",
              "mass", "deshuffling", "prefix_lm", "ul2")


# ---------------------------------------------------------------------------
# Dataset-level steps (seqio preprocessors). Examples carry "targets" tokens.


def _chunk_and_concat(dataset, max_length: int, batch_size: int):
  """T5's select_random_chunk + reduce_concat_tokens, vectorised per group.

  Each document longer than max_length is cut to one uniformly chosen
  aligned chunk of max_length tokens; groups of batch_size documents are
  then concatenated, without separators, into one stream.
  """
  dataset = dataset.map(lambda x: x["targets"]).ragged_batch(batch_size)

  @seqio.map_over_dataset(num_seeds=1)
  def chunk(docs, seed):
    lengths = docs.row_lengths()
    num_chunks = tf.maximum((lengths + max_length - 1) // max_length, 1)
    pick = tf.random.stateless_uniform(tf.shape(lengths), seed)
    start = tf.cast(pick * tf.cast(num_chunks, tf.float32), tf.int64)
    start = tf.minimum(start, num_chunks - 1) * max_length
    pos = tf.ragged.range(lengths)
    keep = (pos >= start[:, None]) & (pos < start[:, None] + max_length)
    return {"targets": tf.boolean_mask(docs.flat_values, keep.flat_values)}

  return chunk(dataset)


def split_tokens(dataset, max_tokens_per_segment: int):
  """Cuts each token stream into segments of max_tokens_per_segment (the
  last one shorter); empty streams give no segments."""
  def segments(x):
    tokens = x["targets"]
    n = tf.size(tokens, out_type=tf.int64)
    splits = tf.concat(
        [tf.range(0, n, max_tokens_per_segment, dtype=tf.int64), [n]], 0)
    splits = tf.cond(n > 0, lambda: splits, lambda: tf.zeros([1], tf.int64))
    ragged = tf.RaggedTensor.from_row_splits(tokens, splits)
    return tf.data.Dataset.from_tensor_slices({"targets": ragged})
  return dataset.flat_map(segments)


def segment_stream(dataset, raw_length: int):
  """T5's chunk selection, concatenation across documents, and splitting."""
  dataset = _chunk_and_concat(dataset, MAX_CHUNK_TOKENS, CONCAT_BATCH)
  return split_tokens(dataset, raw_length)


# Segments per numpy call: amortises tf.numpy_function's fixed cost (GIL
# hand-over, tensor conversion), which exceeds the work for one segment.
DENOISE_GROUP = 64


def _denoise(dataset, make_pair: Callable, vocab_size: int):
  """Applies make_pair to every segment, in groups of DENOISE_GROUP.

  Each group gets one seed from seqio, and one numpy Generator made from it
  serves the group's segments in order, so results stay a pure function of
  (data, task seed).
  """
  def np_fn(values, row_splits, seed):
    rng = np.random.default_rng(seed.astype(np.int64).view(np.uint64))
    pairs = [make_pair(values[a:b], rng, vocab_size)
             for a, b in zip(row_splits[:-1], row_splits[1:])]
    out = []
    for part in (0, 1):
      out.append(np.concatenate([p[part] for p in pairs]).astype(np.int32))
      out.append(np.array([len(p[part]) for p in pairs], np.int64))
    return out

  @seqio.map_over_dataset(num_seeds=1)
  def fn(segments, seed):
    inputs, inputs_len, targets, targets_len = tf.numpy_function(
        np_fn, [segments.flat_values, segments.row_splits, seed],
        [tf.int32, tf.int64, tf.int32, tf.int64], stateful=False)
    ragged = lambda v, n: tf.RaggedTensor.from_row_lengths(  # noqa: E731
        tf.ensure_shape(v, [None]), tf.ensure_shape(n, [None]))
    return {"inputs": ragged(inputs, inputs_len),
            "targets": ragged(targets, targets_len)}

  dataset = dataset.map(lambda x: x["targets"]).ragged_batch(DENOISE_GROUP)
  return fn(dataset).unbatch()


def objective_preprocessor(objective: str, vocabulary: seqio.Vocabulary, *,
                           noise_density: float = 0.15,
                           mean_noise_span_length: float = 3.0,
                           random_prob: float = 0.1):
  """A seqio preprocessor(dataset, sequence_length) for one objective.

  Segment lengths: span corruption uses random_spans_helper so corrupted
  inputs fill inputs_length exactly; UL2 uses ul2_lengths (inputs and
  targets of every denoiser fit); the other objectives use segments of
  inputs_length - 1 tokens (EOS fills the last slot), and targets longer
  than targets_length are trimmed by the feature converter, as in T5.
  """
  make_pair = None  # UL2's depends on the sequence lengths: made below
  if objective != "ul2":  # fail early on an unknown name
    make_pair = make_pair_fn(objective, vocabulary,
                             noise_density=noise_density,
                             mean_noise_span_length=mean_noise_span_length,
                             random_prob=random_prob)

  def preprocess(dataset, sequence_length):
    inputs_length = sequence_length["inputs"]
    if objective == "ul2":
      ul2_pair = make_pair_fn(objective, vocabulary,
                              sequence_length=sequence_length)
      dataset = segment_stream(dataset, ul2_pair.raw_length)
      return _denoise(dataset, ul2_pair, vocabulary.vocab_size)
    if objective == "span_corruption":
      raw_length, _ = random_spans_helper(inputs_length, noise_density,
                                          mean_noise_span_length)
      num_spans = round(round(raw_length * noise_density)
                        / mean_noise_span_length)
      if num_spans > vocabulary.extra_ids:
        raise UsageError(
            f"span corruption of {raw_length} tokens needs {num_spans} "
            f"sentinels but the vocabulary has {vocabulary.extra_ids} extra "
            "ids; use a longer mean_noise_span_length or shorter inputs")
    else:
      raw_length = inputs_length - 1
    dataset = segment_stream(dataset, raw_length)
    return _denoise(dataset, make_pair, vocabulary.vocab_size)

  preprocess.__name__ = f"{objective}_preprocessor"
  return preprocess
