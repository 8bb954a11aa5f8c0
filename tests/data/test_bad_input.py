"""Bad input gives a clear error naming the culprit, or a documented skip."""

import itertools
import os
import time

import pytest

from t5jax import data

from data_test_corpus import write_corpus

LENGTHS = {"inputs": 64, "targets": 16}


def _first_batch(name, **kw):
  args = dict(split="train", sequence_length=LENGTHS, batch_size=2, seed=0,
              start_step=0, process_index=0, process_count=1)
  args.update(kw)
  return next(data.make_batch_iterator(name, **args))


def test_missing_corpus_path(tmp_path, vocabulary):
  missing = str(tmp_path / "nope.txt")
  with pytest.raises(data.CorpusError, match="nope.txt.*does not exist"):
    data.register_local_corpus_task("bad_missing", [missing], vocabulary)


def test_empty_corpus(tmp_path, vocabulary):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n   \n\n")
  with pytest.raises(data.CorpusError, match="empty"):
    data.load_documents([str(empty)])
  data.register_local_corpus_task("bad_empty", [str(empty)], vocabulary)
  with pytest.raises(data.CorpusError, match="empty"):
    _first_batch("bad_empty")
  (tmp_path / "d").mkdir()
  with pytest.raises(data.CorpusError, match="no files"):
    data.load_documents([str(tmp_path / "d")])


def test_non_utf8_line_names_file_and_line(tmp_path):
  path = tmp_path / "latin1.txt"
  path.write_bytes(b"good line\ncaf\xe9 au lait\nanother good line\n")
  with pytest.raises(data.CorpusError, match=r"latin1.txt: line 2 .*UTF-8"):
    data.load_documents([str(path)])
  # The documented alternative: drop the offending lines.
  docs = data.load_documents([str(path)], on_decode_error="skip")
  assert docs == ["good line", "another good line"]


def test_documents_shorter_than_a_span_are_concatenated(tmp_path, vocabulary):
  # One- and two-word documents: span corruption concatenates documents
  # before splitting, so short documents simply join the stream.
  path = write_corpus(tmp_path / "short.txt", 300, min_words=1, max_words=3)
  data.register_local_corpus_task("short_docs", [path], vocabulary,
                                  shuffle_buffer_size=16)
  batch = _first_batch("short_docs")
  assert (batch["encoder_input_tokens"] != 0).sum() > 0


def test_too_small_for_one_batch_is_an_error_not_silence(tmp_path,
                                                         vocabulary):
  path = write_corpus(tmp_path / "tiny.txt", 3, min_words=2, max_words=4)
  data.register_local_corpus_task("tiny_docs", [path], vocabulary)
  with pytest.raises(ValueError, match="too few examples"):
    list(data.make_batch_iterator(
        "tiny_docs", split="train", sequence_length=LENGTHS, batch_size=64,
        seed=0, start_step=0, repeat=False, pack=False, process_index=0,
        process_count=1))
  with pytest.raises(data.CorpusError, match="validation.*empty"):
    _first_batch("tiny_docs", split="validation")


def test_c4_missing_data_dir(tmp_path, vocabulary):
  data.register_c4_task(vocabulary)
  with pytest.raises(data.DataNotPreparedError,
                     match=r"does not exist.*tfds build c4/en --data_dir"):
    _first_batch(data.C4_TASK, data_dir=str(tmp_path / "missing"))


def test_c4_unprepared_data_dir(tmp_path, vocabulary):
  data.register_c4_task(vocabulary)
  with pytest.raises(data.DataNotPreparedError,
                     match=r"not found.*tfds build c4/en --data_dir"):
    _first_batch(data.C4_TASK, data_dir=str(tmp_path))


def test_vocabulary_errors(tmp_path, corpus_file):
  with pytest.raises(FileNotFoundError, match="missing.model"):
    data.get_vocabulary(str(tmp_path / "missing.model"))
  with pytest.raises(data.CorpusError, match="vocab_size=100000"):
    data.train_vocab([corpus_file], str(tmp_path), vocab_size=100000)
  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(data.CorpusError, match="empty"):
    data.train_vocab([str(empty)], str(tmp_path))


def test_train_vocab_is_cached(corpus_file, vocab_dir):
  path = data.train_vocab([corpus_file], vocab_dir, vocab_size=300)
  mtime = os.path.getmtime(path)
  start = time.perf_counter()
  assert data.train_vocab([corpus_file], vocab_dir, vocab_size=300) == path
  assert time.perf_counter() - start < 1.0
  assert os.path.getmtime(path) == mtime
  # A different size is a different model.
  other = data.train_vocab([corpus_file], vocab_dir, vocab_size=250)
  assert other != path and os.path.exists(other)


def test_default_corpus_is_deterministic_and_cached(tmp_path):
  a = data.default_corpus(str(tmp_path / "a"), max_bytes=200_000)
  b = data.default_corpus(str(tmp_path / "b"), max_bytes=200_000)
  text = open(a[0], encoding="utf-8").read()
  assert text == open(b[0], encoding="utf-8").read()
  assert 150_000 < len(text.encode()) <= 200_000
  lines = text.splitlines()
  assert len(lines) > 100 and all(line.strip() for line in lines)
  assert data.default_corpus(str(tmp_path / "a"), max_bytes=200_000) == a
  assert list(itertools.islice(data.load_documents(a), 3))
