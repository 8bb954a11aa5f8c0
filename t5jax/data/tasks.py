"""seqio Tasks for pretraining: local text corpora and C4.

Local corpus tasks tokenise the whole corpus once, in Python with
SentencePiece's multi-threaded encoder (about 10 MB/s on 2 cores), and feed
token ids to tf.data. This keeps tokenisation out of the per-epoch pipeline:
repeating the corpus, or skipping ahead to resume, never re-tokenises. It
suits corpora of up to a few GB; real pretraining data goes through C4/TFDS.

C4 follows T5: TFDS c4/en (version 3.*), text -> targets, tokenise, objective,
EOS. Its data_dir is set per call through make_batch_iterator(data_dir=...).
mC4 follows mT5: one task per language of TFDS c4/multilingual (3.*), the same
steps, and the `mc4` mixture over all of them.
"""

import functools
import hashlib
from typing import Sequence

import seqio
import tensorflow as tf

from t5jax.data import corpus as corpus_lib
from t5jax.data import objectives
from t5jax.data import vocab as vocab_lib
from t5jax.errors import UsageError

DEFAULT_CORPUS_TASK = "default_corpus_span_corruption"
C4_TASK = "c4_span_corruption"
C4_TFDS_NAME = "c4/en:3.*.*"
MC4_TFDS_NAME = "c4/multilingual:3.*.*"
MC4_MIXTURE = "mc4"
# mT5 samples language L with probability proportional to |L| ** 0.3 (alpha = 0.3), i.e.
# temperature 1 / 0.3 over the training-set sizes, with no cap: gin_configs/tasks/mc4.gin.
MC4_TEMPERATURE = 1 / 0.3
# Every 100th document of a local corpus is held out as "validation".
VALIDATION_EVERY = corpus_lib.VALIDATION_EVERY


class TfdsSource(seqio.TfdsDataSource):
  """seqio's TFDS source, tolerant of datasets without split metadata.

  seqio asks for split sizes and shard files before reading. Under
  tfds.testing.mock_data (the offline tests) split metadata is empty, and
  for an unprepared dataset the lookup fails with a bare KeyError; here both
  answers become "unknown", so mock data is read normally (sharded per
  example), and an unprepared dataset fails in tfds.load with its
  "not found" error, which make_batch_iterator turns into a how-to-prepare
  message.

  It is also read-only: seqio's default would let tfds.load download and
  prepare a missing dataset (C4 is terabytes); here a missing dataset is an
  error that says how to prepare it.
  """

  def __init__(self, tfds_name: str, *,
               known_splits: Sequence[str] = ("train", "validation", "test"),
               **kwargs):
    kwargs.setdefault("read_only", True)
    super().__init__(tfds_name=tfds_name, **kwargs)
    self._known_splits = tuple(known_splits)

  @property
  def splits(self):
    # Mixtures check splits before reading; without metadata, fall back to
    # the splits the dataset is known to have.
    return super().splits or self._known_splits

  def num_input_examples(self, split):
    try:
      return super().num_input_examples(split)
    except KeyError:
      return None

  def list_shards(self, split):
    try:
      return super().list_shards(split)
    except KeyError:
      return []


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {
      "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary, add_eos=True),
  }


def register_task(name: str, **kwargs) -> seqio.Task:
  """TaskRegistry.add that replaces an existing task of the same name, so
  that re-registering (tests, notebooks) is not an error."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  return seqio.TaskRegistry.add(name, **kwargs)


def register_text_task(name: str, vocabulary: seqio.Vocabulary, source: seqio.DataSource,
                       text_steps, metric_fns, postprocess_fn=None) -> seqio.Task:
  """A supervised text-to-text task: `text_steps` make the 'inputs' / 'targets' strings,
  then tokenise and append EOS (GLUE, SuperGLUE, summarisation, translation, QA)."""
  return register_task(
      name, source=source,
      preprocessors=[*text_steps, seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(vocabulary),
      postprocess_fn=postprocess_fn, metric_fns=metric_fns)


def _spm_digest(vocabulary) -> str:
  if vocab_lib.is_byte_vocabulary(vocabulary):
    return vocab_lib.BYTE_VOCABULARY
  return hashlib.sha256(vocabulary.sp_model).hexdigest()[:16]


def _tokenizer_key(vocabulary) -> str:
  """What _tokenized_corpus tokenises with: a .model path or "byte"."""
  if vocab_lib.is_byte_vocabulary(vocabulary):
    return vocab_lib.BYTE_VOCABULARY
  return vocabulary.sentencepiece_model_file


def local_corpus_source(corpus_paths: str | Sequence[str],
                        vocabulary: seqio.SentencePieceVocabulary, *,
                        doc_per: str = "line",
                        on_decode_error: str = "raise") -> seqio.DataSource:
  """A seqio source of {"targets": token ids}, one example per document.

  Splits: "train" and "validation" (every VALIDATION_EVERY-th document).
  Documents are shuffled with the seed (and reshuffled each epoch) when the
  task is read with shuffle=True.
  """
  files = tuple(corpus_lib.list_corpus_files(corpus_paths))  # fail early

  def dataset_fn(split, shuffle_files, seed=None):
    fingerprint = corpus_lib.fingerprint_files(
        files, doc_per, on_decode_error, _spm_digest(vocabulary))
    flat, splits = corpus_lib.tokenized_corpus(files, _tokenizer_key(vocabulary),
                                               doc_per, on_decode_error, fingerprint)
    index = corpus_lib.split_indices(len(splits) - 1, split, files)
    docs = tf.gather(tf.RaggedTensor.from_row_splits(flat, splits), index)
    # Slicing a ragged tensor in tf.data is ~4x faster than a per-document
    # map, and the whole-corpus shuffle buffer only holds views of it.
    ds = tf.data.Dataset.from_tensor_slices({"targets": docs})
    if shuffle_files:
      ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    return ds

  return seqio.FunctionDataSource(dataset_fn, splits=("train", "validation"))


def _objective_steps(vocabulary, objective, noise_density,
                     mean_noise_span_length):
  return [
      objectives.objective_preprocessor(
          objective, vocabulary, noise_density=noise_density,
          mean_noise_span_length=mean_noise_span_length),
      seqio.preprocessors.append_eos_after_trim,
  ]


def register_local_corpus_task(
    name: str, corpus_paths: str | Sequence[str],
    vocabulary: seqio.SentencePieceVocabulary, *,
    objective: str = "span_corruption", noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0, doc_per: str = "line",
    on_decode_error: str = "raise",
    shuffle_buffer_size: int = 1000) -> seqio.Task:
  """Registers a pretraining task over local text files.

  Args:
    name: seqio task name.
    corpus_paths: text files and/or directories (read recursively, sorted).
    vocabulary: a vocabulary from get_vocabulary (T5 layout, extra ids).
    objective: one of objectives.OBJECTIVES.
    noise_density, mean_noise_span_length: corruption rate and span length.
    doc_per: "line" (one document per line) or "file".
    on_decode_error: "raise" or "skip" for lines that are not UTF-8.
    shuffle_buffer_size: example-level shuffle buffer after the objective.
  """
  if objective not in objectives.OBJECTIVES:
    raise UsageError(f"unknown objective {objective!r}; choose one of "
                     f"{objectives.OBJECTIVES}")
  return register_task(
      name,
      source=local_corpus_source(corpus_paths, vocabulary, doc_per=doc_per,
                                 on_decode_error=on_decode_error),
      preprocessors=_objective_steps(vocabulary, objective, noise_density,
                                     mean_noise_span_length),
      output_features=output_features(vocabulary),
      shuffle_buffer_size=shuffle_buffer_size)


def register_default_corpus_task(vocabulary=None, *,
                                 name: str = DEFAULT_CORPUS_TASK,
                                 cache_dir: str | None = None,
                                 **kwargs) -> seqio.Task:
  """Span corruption over the built-in default corpus (corpus.default_corpus)
  with, unless given, the vocabulary trained on it (vocab.get_vocabulary)."""
  if vocabulary is None:
    vocabulary = vocab_lib.get_vocabulary(cache_dir=cache_dir)
  return register_local_corpus_task(
      name, corpus_lib.default_corpus(cache_dir), vocabulary, **kwargs)


def register_c4_task(vocabulary: seqio.Vocabulary, *, name: str = C4_TASK,
                     objective: str = "span_corruption",
                     noise_density: float = 0.15,
                     mean_noise_span_length: float = 3.0,
                     tfds_name: str = C4_TFDS_NAME) -> seqio.Task:
  """T5's C4 pretraining task over TFDS c4/en 3.*.

  The TFDS data_dir is not fixed here: pass make_batch_iterator(data_dir=...)
  (or seqio.utils.set_tfds_data_dir_override), so one registration serves
  any machine.
  """
  return register_task(
      name,
      source=TfdsSource(tfds_name=tfds_name),
      preprocessors=[
          functools.partial(seqio.preprocessors.rekey,
                            key_map={"inputs": None, "targets": "text"}),
          seqio.preprocessors.tokenize,
          *_objective_steps(vocabulary, objective, noise_density,
                            mean_noise_span_length),
      ],
      output_features=output_features(vocabulary))


def mc4_languages() -> tuple[str, ...]:
  """The languages of TFDS c4/multilingual (mT5's 101, plus romanised variants and 'und')."""
  from tensorflow_datasets.text import c4  # noqa: PLC0415 (the TFDS code only, no data)
  return tuple(c4.MC4_LANGUAGES)


def mc4_task_name(language: str) -> str:
  return "mc4_" + language.replace("-", "_")


def _mc4_rate(task, *, strategy, cap, temperature):
  """A language's rate, from the training-set size TFDS records for it in the data_dir."""
  from t5jax.data import mixing  # noqa: PLC0415
  size = task.num_input_examples("train")
  if size is None:
    raise UsageError(
        f"the mc4 mixture weights languages by their sizes, and TFDS has none for "
        f"{task.name}: prepare {MC4_TFDS_NAME.split(':')[0]} in DataConfig.data_dir "
        "(tfds build c4/multilingual --data_dir=DIR; very large, see the TFDS catalog), or "
        "train on one language's task (e.g. DataConfig.task='mc4_de').")
  return mixing.task_rate(size, strategy, cap, temperature)


def register_mc4_tasks(vocabulary: seqio.Vocabulary, *, languages=None,
                       mixing: str = "temperature", cap: int | float = 2 ** 62,
                       temperature: float = MC4_TEMPERATURE, **objective) -> None:
  """mT5's pretraining data: a span corruption task `mc4_<lang>` per mC4 language (train:
  the language's split, validation: '<lang>-validation'), and the `mc4` mixture of all of
  them at `mixing`'s rates over each language's training-set size (mT5: temperature 1/0.3,
  no cap). The sizes are read from the prepared dataset when the mixture is first used, so
  registering reads no data."""
  from t5jax.data import mixing as mixing_lib  # noqa: PLC0415
  mixing_lib.check_mixing(mixing, cap, temperature)
  languages = mc4_languages() if languages is None else tuple(languages)
  for language in languages:
    register_task(
        mc4_task_name(language),
        source=TfdsSource(tfds_name=MC4_TFDS_NAME,
                          splits={"train": language, "validation": f"{language}-validation"},
                          known_splits=("train", "validation")),
        preprocessors=[
            functools.partial(seqio.preprocessors.rekey,
                              key_map={"inputs": None, "targets": "text"}),
            seqio.preprocessors.tokenize,
            *_objective_steps(vocabulary, objective.get("objective", "span_corruption"),
                              objective.get("noise_density", 0.15),
                              objective.get("mean_noise_span_length", 3.0)),
        ],
        output_features=output_features(vocabulary))
  rate = functools.partial(_mc4_rate, strategy=mixing, cap=cap, temperature=temperature)
  mixing_lib.add_mixture(MC4_MIXTURE, [(mc4_task_name(lang), rate) for lang in languages])
