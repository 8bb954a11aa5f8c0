"""Fixtures for the data tests: a corpus the tests write, a tiny vocabulary.

Nothing is downloaded: the corpus is generated text, the SentencePiece model
(300 pieces) is trained on it once per session.
"""

import os

import pytest

from data_test_corpus import write_corpus

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


@pytest.fixture(scope="session")
def spm(vocabulary):
  """The path of the tests' SentencePiece model."""
  return vocabulary.sentencepiece_model_file


@pytest.fixture
def no_gin_bindings():
  """The command line leaves its gin bindings, which DataConfig(...) would pick up: a
  module that runs `t5jax` in process uses this around each test (pytestmark)."""
  import gin
  gin.clear_config()
  yield
  gin.clear_config()
