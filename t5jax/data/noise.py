"""The pretraining objectives in numpy: T5 span corruption, the paper's ablations, UL2.

TensorFlow-free (numpy only), so the seqio pipeline (`t5jax.data.objectives`, which runs
these through tf.numpy_function) and a TF-free input pipeline share one definition of
every objective: the same lengths, masks, sentinels and random draws for the same numpy
Generator.

Per segment: `make_pair_fn(objective, vocabulary)` gives (tokens, rng, vocab_size) ->
(inputs, targets) without EOS. Per stream of documents, T5's steps:
  1. select_random_chunk: a document longer than 65536 tokens is cut to one randomly
     chosen aligned chunk of that size;
  2. reduce_concat_tokens: 128 documents are concatenated, no separator;
  3. split_tokens: the stream is cut into segments of the raw length
     (random_spans_helper: 568 tokens for 512 input tokens);
  4. denoise: random_spans_noise_mask marks noise spans; each noise span becomes one
     sentinel in the inputs, each non-noise span one sentinel in the targets; the task
     appends EOS to both.
`segments` is steps 1-3 on numpy arrays (`objectives.segment_stream` is the same in
tf.data). `vocabulary` arguments need only `vocab_size` and `extra_ids`.
"""

import dataclasses
import functools
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

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
# Streams of documents (numpy): T5's chunking, concatenation and splitting.


def chunk_and_concat(documents: Sequence[np.ndarray], rng: np.random.Generator,
                     max_length: int = None) -> np.ndarray:
  """One group of documents (CONCAT_BATCH of them in T5) -> one token stream.

  Each document longer than max_length (MAX_CHUNK_TOKENS) is cut to one uniformly
  chosen aligned chunk of max_length tokens, one uniform draw per document (as
  `objectives._chunk_and_concat`); then the group is concatenated, no separator.
  """
  max_length = MAX_CHUNK_TOKENS if max_length is None else max_length
  picks = rng.random(len(documents))
  parts = []
  for doc, pick in zip(documents, picks):
    doc = np.asarray(doc)
    chunks = max(-(-len(doc) // max_length), 1)
    start = min(int(pick * chunks), chunks - 1) * max_length
    parts.append(doc[start:start + max_length])
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def split_tokens(stream: np.ndarray, max_tokens_per_segment: int) -> list[np.ndarray]:
  """Cuts a stream into segments of max_tokens_per_segment (the last one shorter);
  an empty stream gives none."""
  return [stream[i:i + max_tokens_per_segment]
          for i in range(0, len(stream), max_tokens_per_segment)]


def segments(documents: Iterable[np.ndarray], raw_length: int, rng: np.random.Generator,
             group: int = None) -> Iterator[np.ndarray]:
  """T5's segment stream: groups of `group` (CONCAT_BATCH) documents, each chunked,
  concatenated and split into raw_length segments, in order."""
  group = CONCAT_BATCH if group is None else group
  batch = []
  for doc in documents:
    batch.append(doc)
    if len(batch) == group:
      yield from split_tokens(chunk_and_concat(batch, rng), raw_length)
      batch = []
  if batch:
    yield from split_tokens(chunk_and_concat(batch, rng), raw_length)
