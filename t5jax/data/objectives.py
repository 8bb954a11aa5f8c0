"""The pretraining objectives as seqio preprocessors (tf.data).

The objectives themselves (T5 span corruption, the paper's ablations, UL2's mixture of
denoisers) are numpy functions in `t5jax.data.noise`, shared with the TensorFlow-free
pipeline; this module runs them inside tf.data: T5's document steps (chunking,
concatenation of 128 documents, splitting into raw-length segments), vectorised over
groups of documents, then each segment's (inputs, targets) through tf.numpy_function.
A segment needs ~15 small array operations, which numpy does in ~60 us while the
equivalent TF graph costs ~500 us of per-op overhead, and that difference decides
whether 2 cores reach 1,500 examples/s.

Every per-segment function takes a numpy Generator; the pipeline seeds it from the
per-example seed seqio derives from the task seed, so the output is a pure function of
(data, seed): deterministic and resumable.
"""

from typing import Callable

import numpy as np
import seqio
import tensorflow as tf

# The objectives themselves live in t5jax.data.noise (numpy, TensorFlow-free); these
# names are re-exported for the tf.data steps below and for callers of this module.
from t5jax.data.noise import (  # noqa: F401
    MAX_CHUNK_TOKENS,
    CONCAT_BATCH,
    _span_corruption_lengths,
    random_spans_helper,
    _random_segmentation,
    _span_lengths,
    random_spans_noise_mask,
    iid_noise_mask,
    sentinel_id,
    noise_span_to_unique_sentinel,
    nonnoise_span_to_unique_sentinel,
    drop_noise_tokens,
    drop_nonnoise_tokens,
    keep_tokens,
    noise_token_to_mask_or_random,
    noise_token_to_mask,
    permute_all_tokens,
    span_corrupt,
    _mask_then,
    prefix_lm,
    Denoiser,
    UL2_MODES,
    UL2_DENOISERS,
    mode_token_id,
    _denoiser_lengths,
    _suffix_length,
    ul2_lengths,
    ul2_denoise,
    make_ul2_pair_fn,
    make_pair_fn,
    OBJECTIVES,
)
from t5jax.errors import UsageError


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
