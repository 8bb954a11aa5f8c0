"""Fixtures for the data tests: a corpus the tests write, a tiny vocabulary.

Nothing is downloaded: the corpus is generated text, the SentencePiece model
(300 pieces) is trained on it once per session.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

_WORDS = ("the a model text of to and in is that for on with as data token "
          "span sentence train test corpus vocabulary piece noise target "
          "input length word example batch step seed shard process mixture "
          "task language transfer learning unified encoder decoder").split()


_SYLLABLES = "ka to ri mu sen la dor pi ve nu tra ol is em qu ba".split()


def _lexicon(rng, n=1500):
  """Common words plus pseudo-words, so a 300-piece vocabulary is trainable."""
  made = {"".join(rng.choice(_SYLLABLES, rng.integers(1, 4)))
          for _ in range(n)}
  return np.array(_WORDS + sorted(made))


def write_corpus(path, num_docs, seed=0, min_words=5, max_words=60):
  """Writes num_docs lines of random English-like words; returns path."""
  rng = np.random.default_rng(seed)
  lexicon = _lexicon(rng)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(num_docs):
      n = rng.integers(min_words, max_words)
      words = rng.choice(lexicon, n)
      f.write(" ".join(words).capitalize() + ".\n")
  return str(path)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.txt", 400)


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="session")
def vocabulary(corpus_file, vocab_dir):
  from t5jax import data
  path = data.train_vocab([corpus_file], vocab_dir, vocab_size=300)
  return data.get_vocabulary(path)


@pytest.fixture(scope="session")
def local_task(corpus_file, vocabulary):
  from t5jax import data
  name = "test_local_span_corruption"
  # A small shuffle buffer: the default 1000 would span several epochs of
  # this tiny corpus and make every iterator slow to start.
  data.register_local_corpus_task(name, [corpus_file], vocabulary,
                                  shuffle_buffer_size=64)
  return name
