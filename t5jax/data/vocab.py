"""SentencePiece vocabularies: T5's layout, training one, caching it.

T5's vocabulary is a SentencePiece unigram model with pad=0, eos=1, unk=2 and
no BOS, wrapped by seqio with 100 extra ids <extra_id_0..99> appended after
the pieces, so that <extra_id_0> is the LAST id (32099 for 32000 pieces).
The official spiece.model has exactly this layout, so a user can point
get_vocabulary at it and everything downstream is unchanged.

get_vocabulary("byte") is ByT5's byte-level vocabulary instead (seqio's
ByteVocabulary): pad=0, eos=1, unk=2, UTF-8 byte b is id b + 3 (ids 3..258),
then ByT5's 125 extra ids, so vocab_size is 384 and the sentinels count down
from the top as for T5: <extra_id_0> = 383, <extra_id_1> = 382 (as in HF's
ByT5 tokenizer). See docs/t5_facts.md, "ByT5 byte vocabulary".
"""

import os
import tempfile
from typing import Sequence

import sentencepiece as spm

from t5jax.data import corpus as corpus_lib
from t5jax.errors import MissingFileError, UsageError

T5_EXTRA_IDS = 100
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
# get_vocabulary("byte"): ByT5's byte vocabulary with its 125 extra ids.
BYTE_VOCABULARY = corpus_lib.BYTE_VOCABULARY  # "byte"
BYT5_EXTRA_IDS = 125
BYTE_OFFSET = corpus_lib.BYTE_OFFSET  # 3: UTF-8 byte b is id b + 3 (after pad/eos/unk)


def is_byte_vocabulary(vocabulary) -> bool:
  import seqio
  return isinstance(vocabulary, seqio.ByteVocabulary)


def get_byte_vocabulary(extra_ids: int = BYT5_EXTRA_IDS):
  """ByT5's vocabulary: 3 special ids, 256 bytes, extra_ids sentinels.

  With the default 125 extra ids vocab_size is 384 (ByT5's embedding size),
  and sentinel i is 383 - i.
  """
  import seqio  # this module imports seqio (TensorFlow) only where it builds its vocabularies
  return seqio.ByteVocabulary(extra_ids=extra_ids)


def train_vocab(corpus_files: str | Sequence[str], output_dir: str,
                vocab_size: int = 32000, *, character_coverage: float = 0.9995,
                input_sentence_size: int = 2_000_000, seed: int = 0,
                num_threads: int | None = None) -> str:
  """Trains a T5-layout SentencePiece unigram model; returns its .model path.

  The result is cached in output_dir under a key made of the corpus content
  and the training options, so a second call with the same inputs returns at
  once without retraining.

  Args:
    corpus_files: text files or directories, one sentence/document per line.
    output_dir: where the model is written (and looked up on later calls).
    vocab_size: number of SentencePiece pieces, without the 100 extra ids.
    character_coverage: fraction of characters covered by single pieces.
    input_sentence_size: lines sampled for training (caps time and memory).
    seed: SentencePiece's sampling seed, for reproducible models.
    num_threads: training threads (default: all cores).
  """
  files = corpus_lib.list_corpus_files(corpus_files)
  key = corpus_lib.fingerprint_files(
      files, vocab_size, character_coverage, input_sentence_size, seed)
  prefix = os.path.join(output_dir, f"spm_unigram_{vocab_size}_{key}")
  if os.path.exists(prefix + ".model"):
    return prefix + ".model"
  if all(os.path.getsize(f) == 0 for f in files):
    raise corpus_lib.CorpusError(
        f"cannot train a vocabulary on an empty corpus: {files}")
  os.makedirs(output_dir, exist_ok=True)
  spm.set_random_generator_seed(seed)
  # Train into a temporary prefix and rename, so a crash mid-training never
  # leaves a truncated model that a later run would mistake for a cache hit.
  with tempfile.TemporaryDirectory(dir=output_dir) as tmp:
    tmp_prefix = os.path.join(tmp, "spm")
    try:
      spm.SentencePieceTrainer.train(
          input=files, model_prefix=tmp_prefix, vocab_size=vocab_size,
          model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID,
          bos_id=-1, character_coverage=character_coverage,
          input_sentence_size=input_sentence_size,
          shuffle_input_sentence=True, max_sentence_length=1 << 14,
          num_threads=num_threads or os.cpu_count() or 1,
          minloglevel=2)
    except RuntimeError as e:
      # Typically "Vocabulary size is too high" on a small corpus.
      raise corpus_lib.CorpusError(
          f"SentencePiece training on {files} with vocab_size={vocab_size} "
          f"failed: {e}. Use a larger corpus or a smaller vocab_size.") from e
    os.replace(tmp_prefix + ".model", prefix + ".model")
    os.replace(tmp_prefix + ".vocab", prefix + ".vocab")
  return prefix + ".model"


def get_vocabulary(spm_path: str | None = None, *,
                   extra_ids: int = T5_EXTRA_IDS, vocab_size: int = 32000,
                   cache_dir: str | None = None):
  """Returns a seqio SentencePieceVocabulary with T5's 100 extra ids.

  Args:
    spm_path: a SentencePiece .model, e.g. T5's official spiece.model. When
      None, a model with vocab_size pieces is trained (once, then cached) on
      the default corpus, see corpus.default_corpus. "byte": ByT5's byte
      vocabulary (get_byte_vocabulary, 125 extra ids; extra_ids and
      vocab_size are ignored), nothing is trained.
    extra_ids: sentinel ids appended after the pieces.
    vocab_size: pieces to train when spm_path is None.
    cache_dir: cache for the default corpus and trained model.
  """
  if spm_path == BYTE_VOCABULARY:
    return get_byte_vocabulary()
  spm_path = _spm_path(spm_path, vocab_size, cache_dir)
  import seqio
  vocab = seqio.SentencePieceVocabulary(spm_path, extra_ids=extra_ids)
  if vocab.pad_id != PAD_ID or vocab.eos_id != EOS_ID:
    raise UsageError(
        f"{spm_path} has pad={vocab.pad_id} eos={vocab.eos_id}; T5 needs pad=0, "
        "eos=1, unk=2 (train it with train_vocab)")
  return vocab


def _spm_path(spm_path: str | None, vocab_size: int, cache_dir: str | None) -> str:
  """The .model to use: spm_path, or one trained (once, then cached) on the default corpus."""
  if spm_path is None:
    cache_dir = cache_dir or corpus_lib.DEFAULT_CACHE_DIR
    spm_path = train_vocab(corpus_lib.default_corpus(cache_dir), cache_dir,
                           vocab_size=vocab_size)
  if not os.path.isfile(spm_path):
    raise MissingFileError(
        f"SentencePiece model {spm_path!r} not found; pass the path of a "
        ".model file (e.g. T5's spiece.model), \"byte\" for ByT5's byte "
        "vocabulary, or None to train one")
  return spm_path


class SpmVocabulary:
  """T5's SentencePiece layout without seqio (what the TensorFlow-free pipeline uses):
  the model's pieces, then `extra_ids` sentinels, <extra_id_0> the last id. The same ids
  and text as seqio.SentencePieceVocabulary over the same .model."""

  def __init__(self, spm_path: str, extra_ids: int = T5_EXTRA_IDS):
    self.sentencepiece_model_file, self.extra_ids = spm_path, extra_ids
    self._sp = spm.SentencePieceProcessor(model_file=spm_path)
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() != EOS_ID:
      raise UsageError(
          f"{spm_path} has pad={self._sp.pad_id()} eos={self._sp.eos_id()}; T5 needs "
          "pad=0, eos=1, unk=2 (train it with train_vocab)")
    self.pieces = self._sp.get_piece_size()
    self.vocab_size = self.pieces + extra_ids
    self.pad_id, self.eos_id, self.unk_id = PAD_ID, EOS_ID, UNK_ID
    # A piece that decodes to itself and starts no word: decode puts it before text that
    # follows a sentinel, then cuts it off again.
    self._marker = next((i for i in range(self.pieces) if self._sp.is_unknown(i) is False
                         and not self._sp.is_control(i) and not self._sp.is_byte(i)
                         and not self._sp.id_to_piece(i).startswith("\u2581")
                         and self._sp.decode([i]) == self._sp.id_to_piece(i)), None)
    self._marker_text = self._sp.id_to_piece(self._marker) if self._marker is not None else ""

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids) -> str:
    """seqio's text of ids: up to the first EOS, ids past the vocabulary read as UNK, and
    a sentinel as " <extra_id_N>" (seqio adds them to the model as pieces
    "\u2581<extra_id_N>", so only the text's first one loses its space)."""
    out, run = [], []

    def flush():
      if out and self._marker is not None:  # after a sentinel: keep a leading space, as
        # SentencePiece does inside a text (it strips one only at the text's start)
        text = self._sp.decode([self._marker, *run])[len(self._marker_text):]
      else:
        text = self._sp.decode(run)
      if text:
        out.append(text)
      run.clear()

    for i in (int(i) for i in ids):
      if i == EOS_ID:
        break
      if i >= self.vocab_size or i < 0:
        i = UNK_ID
      if i >= self.pieces:
        flush()
        out.append(f"{' ' if out else ''}<extra_id_{self.vocab_size - 1 - i}>")
      else:
        run.append(i)
    flush()
    return "".join(out)


def get_spm_vocabulary(spm_path: str | None = None, *, extra_ids: int = T5_EXTRA_IDS,
                       vocab_size: int = 32000, cache_dir: str | None = None) -> SpmVocabulary:
  """get_vocabulary's SentencePiece vocabulary without seqio or TensorFlow."""
  if spm_path == BYTE_VOCABULARY:
    raise UsageError("DataConfig.pipeline='grain' reads SentencePiece vocabularies; ByT5's "
                     "byte vocabulary needs DataConfig.pipeline='seqio'.")
  return SpmVocabulary(_spm_path(spm_path, vocab_size, cache_dir), extra_ids)
