"""The fast packer gives exactly seqio's EncDecFeatureConverter output."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5jax.data import packing


def _examples(n, seed, max_in, max_tg):
  rng = np.random.default_rng(seed)
  for _ in range(n):
    # Lengths from 0 (an empty target) up to the full packed length.
    yield {"inputs": rng.integers(3, 50, rng.integers(1, max_in)),
           "targets": rng.integers(3, 50, rng.integers(0, max_tg))}


@pytest.mark.parametrize("lengths,n", [({"inputs": 16, "targets": 8}, 40),
                                       ({"inputs": 32, "targets": 6}, 75)])
def test_matches_seqio_packing(lengths, n):
  examples = list(_examples(n, 0, lengths["inputs"] + 1,
                            lengths["targets"] + 1))
  ds = tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int64)
                        for k in ("inputs", "targets")})
  ds = ds.map(lambda x: {k: tf.cast(v, tf.int32) for k, v in x.items()})
  ours = packing.FastPackEncDecFeatureConverter(pack=True)(ds, lengths)
  ref = seqio.EncDecFeatureConverter(pack=True)(ds, lengths)
  ours, ref = list(ours.as_numpy_iterator()), list(ref.as_numpy_iterator())
  assert len(ours) == len(ref) and len(ref) < n  # rows were packed
  for a, b in zip(ours, ref):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
