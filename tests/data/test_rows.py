"""The TensorFlow-free data core: t5jax.data.rows makes exactly seqio's model features
(packed and padded), t5jax.data.noise cuts exactly tf.data's segments, and its span
corruption has T5's lengths, sentinels and law, whichever pipeline runs it. Neither
module imports TensorFlow."""

import os
import subprocess
import sys

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5jax.data import noise, objectives, rows

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _examples(n, seed, max_in, max_tg):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    # Lengths from 1 (EOS alone would be 1 token) up to past the packed length.
    yield {"inputs": rng.integers(3, 50, rng.integers(1, max_in)).astype(np.int32),
           "targets": rng.integers(3, 50, rng.integers(0, max_tg)).astype(np.int32)}


def _seqio_rows(examples, lengths, pack):
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  return list(seqio.EncDecFeatureConverter(pack=pack)(ds, lengths).as_numpy_iterator())


@pytest.mark.parametrize("pack", [True, False])
@pytest.mark.parametrize("lengths,n", [({"inputs": 16, "targets": 8}, 70),
                                       ({"inputs": 32, "targets": 6}, 75)])
def test_rows_equal_seqio_feature_converter(lengths, n, pack):
  """Every feature of every row, packed (over more than one packing group) or padded."""
  examples = [{k: rows.append_eos_after_trim(v, lengths[k]) for k, v in e.items()}
              for e in _examples(n, 0, lengths["inputs"] + 4, lengths["targets"] + 4)]
  ours, ref = list(rows.to_rows(examples, lengths, pack)), _seqio_rows(examples, lengths, pack)
  assert len(ours) == len(ref) and (len(ref) < n) == pack
  for a, b in zip(ours, ref):
    assert sorted(a) == sorted(b)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  batches = list(rows.to_batches(examples, lengths, 4, pack))
  assert len(batches) == len(ref) // 4
  np.testing.assert_array_equal(batches[1]["decoder_input_tokens"],
                                np.stack([r["decoder_input_tokens"] for r in ref[4:8]]))


def test_eos_after_trim_matches_seqio():
  for tokens in ([5, 6, 7, 8, 9], [5], []):
    ours = rows.append_eos_after_trim(tokens, 4)
    ref = seqio.preprocessors.append_eos_after_trim(
        tf.data.Dataset.from_tensors({"targets": tf.constant(tokens, tf.int32)}),
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(100, eos_id=1),
                                                  add_eos=True)},
        sequence_length={"targets": 4})
    np.testing.assert_array_equal(ours, next(ref.as_numpy_iterator())["targets"])


def test_segments_equal_the_tf_data_steps():
  """Chunking (documents past MAX_CHUNK_TOKENS: one aligned chunk), groups of 128
  documents concatenated, split into raw-length segments: the same segments as
  objectives.segment_stream. Documents short of the chunk size make it deterministic
  there; the long one checks the chunk's alignment and length."""
  rng = np.random.default_rng(1)
  docs = [rng.integers(3, 1000, rng.integers(1, 400)).astype(np.int32) for _ in range(300)]
  ds = tf.data.Dataset.from_generator(lambda: ({"targets": d} for d in docs),
                                      output_signature={"targets": tf.TensorSpec([None],
                                                                                 tf.int32)})
  ref = [x["targets"] for x in objectives.segment_stream(ds, 568).as_numpy_iterator()]
  ours = list(noise.segments(docs, 568, np.random.default_rng(0)))
  assert len(ours) == len(ref) > 100
  for a, b in zip(ours, ref):
    np.testing.assert_array_equal(a, b)
  # A long document keeps one aligned chunk of MAX_CHUNK_TOKENS.
  long = np.arange(3 * noise.MAX_CHUNK_TOKENS + 10, dtype=np.int32)
  chunk = noise.chunk_and_concat([long], np.random.default_rng(2))
  assert len(chunk) in (noise.MAX_CHUNK_TOKENS, 10) and chunk[0] % noise.MAX_CHUNK_TOKENS == 0


class _Vocab:
  vocab_size, extra_ids = 32100, 100


def test_span_corruption_lengths_sentinels_and_law():
  """512-token inputs: raw 568, targets 114, 28 spans; inputs fill 512 exactly with EOS;
  sentinels count down from <extra_id_0>; over many rows the noise density and the span
  lengths follow T5's law (85 noise tokens in 28 spans of mean 85/28)."""
  raw, targets_length = noise.random_spans_helper(512)
  assert (raw, targets_length) == (568, 114)
  make_pair = noise.make_pair_fn("span_corruption", _Vocab())
  rng = np.random.default_rng(0)
  span_lengths = []
  for _ in range(300):
    tokens = rng.integers(3, 32000, raw).astype(np.int32)
    inputs, targets = make_pair(tokens, rng, _Vocab.vocab_size)
    assert len(inputs) + 1 == 512 and len(targets) + 1 == 114
    sentinels = targets[targets >= 32000]
    np.testing.assert_array_equal(sentinels, 32099 - np.arange(28))
    np.testing.assert_array_equal(inputs[inputs >= 32000], sentinels)
    starts = np.flatnonzero(targets >= 32000)
    span_lengths += list(np.diff(np.append(starts, len(targets))) - 1)
  span_lengths = np.array(span_lengths)
  assert span_lengths.min() >= 1 and span_lengths.sum() == 300 * 85
  # Noise span lengths of a uniformly random composition of 85 into 28 parts:
  # P(length = 1) = C(83, 26) / C(84, 27) = 27/84.
  assert abs(np.mean(span_lengths == 1) - 27 / 84) < 0.02


@pytest.mark.parametrize("module", ["t5jax.data.noise", "t5jax.data.rows", "t5jax.data.pairs",
                                    "t5jax.data.grain_pipeline", "t5jax.data.vocab"])
def test_imports_no_tensorflow(module):
  """With tensorflow and seqio unimportable, the module imports and runs."""
  code = ("import sys\n"
          "class Block:\n"
          "  def find_spec(self, name, path=None, target=None):\n"
          "    if name.split('.')[0] in ('tensorflow', 'seqio', 'tensorflow_datasets'):\n"
          "      raise ImportError('blocked: ' + name)\n"
          "sys.meta_path.insert(0, Block())\n"
          f"import {module} as m\n"
          "import numpy as np\n"
          "from t5jax.data import noise, rows\n"
          "pair = noise.make_pair_fn('span_corruption', type('V', (), {'vocab_size': 32100, "
          "'extra_ids': 100})())\n"
          "x = pair(np.arange(3, 571), np.random.default_rng(0), 32100)\n"
          "print(len(list(rows.to_rows([{'inputs': x[0], 'targets': x[1]}], "
          "{'inputs': 512, 'targets': 114}))))\n"
          "assert not any(k.split('.')[0] in ('tensorflow', 'seqio') for k in sys.modules)\n")
  proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": REPO},
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-2000:]
