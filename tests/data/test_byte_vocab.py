"""ByT5's byte vocabulary: ids, decoding, span corruption, local corpus."""

import itertools

import numpy as np
import pytest
import seqio

from t5jax import data
from t5jax.config import get_config
from t5jax.data import corpus, objectives
from t5jax.data import vocab as vocab_lib
from t5jax.errors import UsageError


@pytest.fixture(scope="module")
def byte_vocab():
  return data.get_vocabulary("byte")


def test_layout_is_byt5s(byte_vocab):
  assert isinstance(byte_vocab, seqio.ByteVocabulary)
  assert (byte_vocab.pad_id, byte_vocab.eos_id, byte_vocab.unk_id) == (0, 1, 2)
  assert byte_vocab.extra_ids == 125
  assert byte_vocab.vocab_size == 3 + 256 + 125 == 384


def test_ids_of_a_known_string(byte_vocab):
  # UTF-8 bytes + 3: "h" = 0x68, "i" = 0x69, " " = 0x20, "é" = 0xc3 0xa9.
  assert byte_vocab.encode("hi é") == [0x68 + 3, 0x69 + 3, 0x20 + 3,
                                       0xc3 + 3, 0xa9 + 3]
  assert byte_vocab.encode("\x00\xff") == [3, 0xc3 + 3, 0xbf + 3]


@pytest.mark.parametrize("text", ["plain ascii.", "naïve café – ☃ 日本語 🙂",
                                  ""])
def test_round_trip(byte_vocab, text):
  ids = byte_vocab.encode(text)
  assert all(3 <= i < 259 for i in ids)
  assert byte_vocab.decode(ids) == text
  # Special ids and sentinels are dropped by decode, as in seqio.
  assert byte_vocab.decode([0] + ids + [1, 383]) == text


def test_span_corruption_sentinels_are_the_top_ids(byte_vocab):
  tokens = np.array(byte_vocab.encode("The quick brown fox jumps over " * 8))
  rng = np.random.default_rng(0)
  inputs, targets = objectives.span_corrupt(
      tokens, rng, byte_vocab.vocab_size, noise_density=0.15,
      mean_noise_span_length=20.0)
  sentinels = [t for t in targets if t >= 259]
  assert sentinels[0] == 383 == objectives.sentinel_id(byte_vocab, 0)
  assert sentinels == list(range(383, 383 - len(sentinels), -1))
  assert [t for t in inputs if t >= 259] == sentinels
  assert all(3 <= t < 259 for t in inputs if t < 259)
  assert byte_vocab.decode([383, 382]) == ""  # sentinels decode to nothing


def test_tokenized_corpus_matches_the_vocabulary(corpus_file, byte_vocab):
  flat, splits = corpus.tokenized_corpus(
      (corpus_file,), vocab_lib.BYTE_VOCABULARY, "line", "raise", "k")
  docs = [line.rstrip("\n") for line in open(corpus_file, encoding="utf-8")]
  assert len(splits) - 1 == len(docs)
  for i in (0, 1, len(docs) - 1):
    doc = flat[splits[i]:splits[i + 1]].tolist()
    assert doc == byte_vocab.encode(docs[i])
    assert byte_vocab.decode(doc) == docs[i]


def test_local_corpus_task_with_bytes(corpus_file, byte_vocab):
  name = "test_byte_span_corruption"
  data.register_local_corpus_task(name, [corpus_file], byte_vocab,
                                  mean_noise_span_length=20.0,
                                  shuffle_buffer_size=16)
  lengths = {"inputs": 128, "targets": 32}
  ds = seqio.get_mixture_or_task(name).get_dataset(
      lengths, split="train", shuffle=False, seed=0)
  raw, targets_length = objectives.random_spans_helper(128, 0.15, 20.0)
  for ex in itertools.islice(ds.as_numpy_iterator(), 5):
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert len(inputs) == 128 and len(targets) == targets_length <= 32
    assert inputs[-1] == 1 and targets[-1] == 1
    assert targets[0] == 383
    assert all(t >= 3 for t in inputs[:-1] + targets[:-1])


def test_prepare_task_and_size_hint(corpus_file):
  from t5jax import run
  cfg = run.DataConfig(task="local_corpus", corpus=(corpus_file,),
                       vocabulary="byte")
  vocabulary, task = run.prepare_task(cfg)
  assert isinstance(vocabulary, seqio.ByteVocabulary) and task == "local_corpus"
  run.check_vocabulary(get_config("tiny", vocab_size=384), vocabulary)
  with pytest.raises(UsageError, match="vocab_size=384"):
    run.check_vocabulary(get_config("tiny", vocab_size=256), vocabulary)
