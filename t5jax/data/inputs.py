"""What a run reads: `DataConfig`, the task it names, and its batches.

    vocabulary, task = prepare_task(data)        # trains/loads the vocabulary, registers
    it = batches(data, task, "train", 128, vocabulary=vocabulary)

`prepare_task` checks the task name, the vocabulary and a pairs file before
anything is trained; `batches` hands back either pipeline's batches, seqio's
(t5jax.data.batches, tf.data) or grain's (t5jax.data.grain_pipeline, no
TensorFlow); `list_tasks` is what `t5jax tasks` prints; `read_inputs` is what
`t5jax infer` decodes. TensorFlow and seqio are imported inside the functions
that need them, never at module import, so the command line and the grain path
stay TensorFlow-free. `t5jax.run` registers `DataConfig` with gin as
`t5jax.DataConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os

import jax
import numpy as np

from t5jax.config import T5Config
from t5jax.errors import UsageError

DEFAULT_TASK = "default_corpus_span_corruption"
LOCAL_CORPUS_TASK = "local_corpus"
LOCAL_PAIRS_TASK = "local_pairs"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Which task, its vocabulary, and how examples become batches."""

  task: str = DEFAULT_TASK  # a seqio task or mixture (see `t5jax tasks`)
  # 'seqio' (tf.data; every task) or 'grain' (no TensorFlow: the default and local corpus
  # tasks, t5jax.data.grain_pipeline; its position resumes on any process count).
  pipeline: str = "seqio"
  grain_shards: int = 8  # the grain pipeline's virtual shards (divide the batch size)
  # grain worker processes making training rows (0: the trainer's prefetch thread makes
  # them; more where idle cores can outpace the accelerator: benchmarks/bench_data.py)
  grain_workers: int = 0
  inputs_length: int = 512
  targets_length: int = 114  # 114 is span corruption's target length for 512 inputs
  pack: bool = True
  seed: int = 0
  data_dir: str | None = None  # TFDS data_dir for C4 / GLUE / SuperGLUE
  # A SentencePiece model; None: trained on the default corpus; 'byte': ByT5's byte vocabulary
  # (ids 3..258 are UTF-8 bytes, 125 sentinels, vocab_size 384; ByT5 pretrained with
  # mean_noise_span_length=20, which is not set for you).
  vocabulary: str | None = None
  vocab_size: int = 32000  # pieces of the vocabulary trained when `vocabulary` is None
  cache_dir: str | None = None  # default corpus + trained vocabulary cache
  corpus: tuple[str, ...] = ()  # files/folders for task='local_corpus'
  doc_per: str = "line"  # local corpus: one document per 'line' or per 'file'
  # Local / default corpus objective (ablations): objectives.OBJECTIVES, e.g. 'prefix_lm', or
  # 'ul2' (UL2's mixture of denoisers with mode tokens; it ignores the two settings below).
  objective: str = "span_corruption"
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  eval_split: str = "validation"
  eval_batches: int = 4  # batches of the eval split per evaluation
  eval_examples: int | None = 256  # examples decoded per evaluation (tasks with metrics)
  # How the mixtures (glue, super_glue, large_supervised, ...) sample their tasks
  # (t5jax.data.mixing): 'proportional' = min(n, cap), 'equal', or 'temperature' =
  # min(n, cap) ** (1 / mixing_temperature); n: a task's training examples.
  mixing: str = "proportional"
  mixing_cap: int = 2 ** 19
  mixing_temperature: float = 1.0
  # task='local_pairs': (input, target) pairs in a .tsv (input<TAB>target) or .jsonl file
  # (the two pairs_keys of an object a line); without pairs_validation every 100th pair is
  # held out. pairs_prefix (e.g. 'summarize:') is put before each input with a space;
  # pairs_metric: 'exact_match', 'rouge', 'bleu', 'squad' or 'none' (t5jax.data.PAIRS_METRICS).
  pairs_train: str | None = None
  pairs_validation: str | None = None
  pairs_prefix: str = ""
  pairs_metric: str = "exact_match"
  pairs_keys: tuple[str, str] = ("inputs", "targets")


def prepare_task(data: DataConfig):
  """(vocabulary, task name): trains/loads the vocabulary, registers the task."""
  from absl import logging as absl_logging
  from t5jax import data as data_lib
  # seqio warns that function-backed tasks are not cached; ours are by design.
  absl_logging.set_verbosity(absl_logging.ERROR)
  if data.pipeline == "grain":  # checks its task names itself, without seqio
    return _prepare_grain_task(data)
  _check_task_name(data.task)  # before a vocabulary is trained for a misspelt name
  if data.pipeline != "seqio":
    raise UsageError(f"DataConfig.pipeline={data.pipeline!r}: 'seqio' or 'grain'.")
  if data.vocabulary not in (None, "byte") and not os.path.isfile(data.vocabulary):
    raise UsageError(f"DataConfig.vocabulary={data.vocabulary!r} does not exist: pass a "
                     "SentencePiece .model file (e.g. T5's spiece.model), 'byte' for ByT5's byte "
                     "vocabulary, or None to train one on the default corpus.")
  vocabulary = data_lib.get_vocabulary(data.vocabulary, vocab_size=data.vocab_size,
                                       cache_dir=data.cache_dir)
  objective = dict(objective=data.objective, noise_density=data.noise_density,
                   mean_noise_span_length=data.mean_noise_span_length)
  if data.task == DEFAULT_TASK:
    data_lib.register_default_corpus_task(vocabulary, cache_dir=data.cache_dir, **objective)
  elif data.task == LOCAL_CORPUS_TASK:
    if not data.corpus:
      raise UsageError("DataConfig.task='local_corpus' needs DataConfig.corpus: text files or "
                       "folders, e.g. --gin.DataConfig.corpus=\"('my_corpus/',)\".")
    data_lib.register_local_corpus_task(LOCAL_CORPUS_TASK, list(data.corpus), vocabulary,
                                        doc_per=data.doc_per, **objective)
  elif data.task == LOCAL_PAIRS_TASK:
    _check_pairs_train(data)
    # Reads and checks the files now, so bad rows are reported before training.
    data_lib.register_pairs_task(LOCAL_PAIRS_TASK, vocabulary, data.pairs_train,
                                 data.pairs_validation, prefix=data.pairs_prefix,
                                 metric=data.pairs_metric, keys=tuple(data.pairs_keys))
  else:
    register_tfds_tasks(vocabulary, mixing=data.mixing, mixing_cap=data.mixing_cap,
                        mixing_temperature=data.mixing_temperature)
  return vocabulary, data.task


GRAIN_TASKS = (DEFAULT_TASK, LOCAL_CORPUS_TASK, LOCAL_PAIRS_TASK)


def _prepare_grain_task(data: DataConfig):
  """prepare_task for DataConfig.pipeline='grain': a SentencePiece vocabulary and the
  corpus's files, with no TensorFlow or seqio imported."""
  from t5jax.data import vocab as vocab_lib
  if data.task not in GRAIN_TASKS:
    raise UsageError(f"DataConfig.pipeline='grain' reads {', '.join(GRAIN_TASKS)}; task "
                     f"{data.task!r} needs DataConfig.pipeline='seqio'.")
  if data.task == LOCAL_CORPUS_TASK and not data.corpus:
    raise UsageError("DataConfig.task='local_corpus' needs DataConfig.corpus: text files or "
                     "folders, e.g. --gin.DataConfig.corpus=\"('my_corpus/',)\".")
  if data.task == LOCAL_PAIRS_TASK:
    from t5jax.data import pairs as pairs_lib
    _check_pairs_train(data)
    pairs_lib.check_metric(data.pairs_metric)
    _pair_splits(data)  # reads and checks the files now, before training
  if data.vocabulary not in (None,) and not os.path.isfile(data.vocabulary):
    raise UsageError(f"DataConfig.vocabulary={data.vocabulary!r} does not exist: pass a "
                     "SentencePiece .model file, or None to train one on the default corpus.")
  vocabulary = vocab_lib.get_spm_vocabulary(data.vocabulary, vocab_size=data.vocab_size,
                                            cache_dir=data.cache_dir)
  return vocabulary, data.task


def _check_pairs_train(data: DataConfig) -> None:
  if not data.pairs_train:
    raise UsageError("DataConfig.task='local_pairs' needs DataConfig.pairs_train: a .tsv "
                     "(input<TAB>target) or .jsonl file, e.g. "
                     "--gin.DataConfig.pairs_train=\"'train.tsv'\".")


def _pair_splits(data: DataConfig) -> dict[str, tuple[list[str], list[str]]]:
  """{split: (inputs, targets)} of the local_pairs files, read once per file version."""
  files = [f for f in (data.pairs_train, data.pairs_validation) if f]
  stamp = tuple((f, os.path.getmtime(f), os.path.getsize(f)) if os.path.isfile(f) else (f,)
                for f in files)
  return _read_pair_splits(stamp, data.pairs_train, data.pairs_validation, data.pairs_prefix,
                           tuple(data.pairs_keys))


@functools.lru_cache(maxsize=4)
def _read_pair_splits(stamp, train, validation, prefix, keys):
  from t5jax.data import pairs as pairs_lib
  return pairs_lib.pair_splits(train, validation, prefix=prefix, keys=keys)


def pair_split(data: DataConfig, split: str) -> tuple[list[str], list[str]]:
  splits = _pair_splits(data)
  if split not in splits:
    raise UsageError(f"task 'local_pairs' has the splits {', '.join(map(repr, splits))}, not "
                     f"{split!r} (DataConfig.eval_split).")
  return splits[split]


def _grain_stream(data: DataConfig, task: str, split: str, vocabulary, train: bool,
                  pack: bool, prompt_slots: int = 0):
  """The grain pipeline's stream of one split (the corpus or pairs tokenised once)."""
  from t5jax.data import corpus as corpus_lib, grain_pipeline
  spec = grain_pipeline.StreamSpec(
      inputs_length=data.inputs_length, targets_length=data.targets_length,
      objective=data.objective, noise_density=data.noise_density,
      mean_noise_span_length=data.mean_noise_span_length, pack=pack, seed=data.seed,
      shuffle=train, prompt_slots=prompt_slots)
  if task == LOCAL_PAIRS_TASK:
    inputs, targets = pair_split(data, split)
    return grain_pipeline.PairsStream(grain_pipeline.tokenize_texts(vocabulary, inputs),
                                      grain_pipeline.tokenize_texts(vocabulary, targets),
                                      spec, num_shards=data.grain_shards)
  paths = (corpus_lib.default_corpus(data.cache_dir) if task == DEFAULT_TASK
           else list(data.corpus))
  files = tuple(corpus_lib.list_corpus_files(paths))
  key = corpus_lib.fingerprint_files(files, data.doc_per, vocabulary.sentencepiece_model_file)
  flat, splits = corpus_lib.tokenized_corpus(files, vocabulary.sentencepiece_model_file,
                                             data.doc_per, "raise", key)
  return grain_pipeline.CorpusStream(flat, splits,
                                     corpus_lib.split_indices(len(splits) - 1, split, files),
                                     spec, vocabulary.vocab_size, vocabulary.extra_ids,
                                     num_shards=data.grain_shards)


def register_tfds_tasks(vocabulary, *, mixing: str = "proportional", mixing_cap: int = 2 ** 19,
                        mixing_temperature: float = 1.0) -> None:
  """C4 span corruption, every GLUE / SuperGLUE task, the summarisation, translation and
  SQuAD tasks, mC4's languages, and their mixtures at the `mixing` strategy's rates, over
  `vocabulary`."""
  from t5jax import data as data_lib
  data_lib.register_c4_task(vocabulary)
  data_lib.register_glue_tasks(vocabulary, rate_cap=mixing_cap, mixing=mixing,
                               temperature=mixing_temperature)
  data_lib.register_text_tasks(vocabulary, mixing=mixing, cap=mixing_cap,
                               temperature=mixing_temperature)
  data_lib.register_mc4_tasks(vocabulary, mixing=mixing, cap=mixing_cap,
                              temperature=mixing_temperature)


def _library_task_names() -> set[str]:
  """What prepare_task can register, known without registering anything."""
  from t5jax import data as data_lib
  return {DEFAULT_TASK, LOCAL_CORPUS_TASK, LOCAL_PAIRS_TASK, data_lib.C4_TASK,
          *data_lib.GLUE_TASKS, *data_lib.SUPER_GLUE_TASKS, data_lib.GLUE_MIXTURE,
          data_lib.SUPER_GLUE_MIXTURE, *data_lib.TEXT_TASKS, *data_lib.TEXT_MIXTURES,
          data_lib.MC4_MIXTURE, *map(data_lib.mc4_task_name, data_lib.mc4_languages())}


def _check_task_name(task: str) -> None:
  import seqio
  known = sorted(_library_task_names() | set(seqio.TaskRegistry.names())
                 | set(seqio.MixtureRegistry.names()))
  if task not in known:
    import difflib
    close = difflib.get_close_matches(task, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise UsageError(f"Unknown task or mixture DataConfig.task={task!r}.{hint} "
                     f"Registered: {', '.join(known)} (`t5jax tasks` lists them with splits).")


CORPUS_TASKS = {  # described, not built: building needs the corpus and a vocabulary
    DEFAULT_TASK: "the built-in default corpus (docs of the installed Python packages)",
    LOCAL_CORPUS_TASK: "the text files of DataConfig.corpus (every 100th document: validation)",
    LOCAL_PAIRS_TASK: "the (input, target) pairs of DataConfig.pairs_train (.tsv or .jsonl) "
                      "and pairs_validation",
}


def list_tasks(data_dir: str | None = None) -> list[dict]:
  """The tasks and mixtures DataConfig.task can name, with their splits and sizes.

  Registers what prepare_task registers (C4, GLUE, SuperGLUE) over a placeholder
  vocabulary: names and splits do not depend on it, so nothing is trained,
  tokenised or downloaded, and seqio's registries are restored afterwards. The
  corpus tasks are described, not built. Sizes are the split sizes TFDS records
  for a dataset prepared in `data_dir` (None: TFDS's default folder), else None.

  Returns:
    dicts {name, kind ('task' or 'mixture'), source, splits {split: size or
    None}, tasks (a mixture's task names)}.
  """
  import seqio
  registries = (seqio.TaskRegistry, seqio.MixtureRegistry)
  saved = [{n: r.get(n) for n in list(r.names())} for r in registries]
  try:
    register_tfds_tasks(seqio.PassThroughVocabulary(size=32100))  # T5's size; never used
    out = [dict(name=name, kind="task", source=text,
                splits={"train": None, "validation": None}, tasks=[])
           for name, text in CORPUS_TASKS.items()]
    for name in sorted(set(seqio.TaskRegistry.names()) - set(CORPUS_TASKS)):
      source = seqio.TaskRegistry.get(name).source
      tfds = getattr(source, "tfds_dataset", None)
      if tfds is not None and data_dir:
        tfds.override_data_dir(data_dir)
      out.append(dict(name=name, kind="task", source=f"TFDS {tfds.name}" if tfds else
                      type(source).__name__, tasks=[],
                      splits={s: source.num_input_examples(s) for s in source.splits}))
    for name in sorted(seqio.MixtureRegistry.names()):
      mixture = seqio.MixtureRegistry.get(name)
      out.append(dict(name=name, kind="mixture", source="mixture (DataConfig.mixing)",
                      splits={}, tasks=[t.name for t in mixture.tasks]))
    return out
  finally:
    for registry, providers in zip(registries, saved):
      for name in list(registry.names()):
        registry.remove(name)
      for name, provider in providers.items():
        registry.add_provider(name, provider)


def check_vocabulary(model: T5Config, vocabulary) -> None:
  if model.vocab_size < vocabulary.vocab_size:
    raise UsageError(
        f"The model's vocab_size={model.vocab_size} is smaller than the vocabulary's "
        f"{vocabulary.vocab_size} ids (its pieces or bytes plus its sentinels). Set "
        f"model_config.vocab_size={-(-vocabulary.vocab_size // 128) * 128} (a multiple of 128).")


def batches(data: DataConfig, task: str, split: str, batch_size: int, *, start_step: int = 0,
            train: bool = True, pack: bool | None = None, vocabulary=None,
            prompt_slots: int = 0):
  """Batches of `split`; prompt_slots: the model's prompt_length (prompt tuning), which
  packed rows reserve before each example (t5jax.data.rows.prompt_slot_ids)."""
  pack = data.pack if pack is None else pack
  if data.pipeline == "grain":
    from t5jax.data import grain_pipeline
    vocabulary = vocabulary or _prepare_grain_task(data)[0]
    stream = _grain_stream(data, task, split, vocabulary, train, pack, prompt_slots)
    # Eval batches need not divide into the virtual shards, and read in order: one shard
    # per process.
    if not train:
      stream.num_shards = jax.process_count()
    return grain_pipeline.GrainBatches(stream, batch_size, start_step=start_step,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count(),
                                       read_workers=data.grain_workers if train else 0)
  from t5jax.data import make_batch_iterator
  return make_batch_iterator(
      task, split=split, sequence_length={"inputs": data.inputs_length,
                                          "targets": data.targets_length},
      batch_size=batch_size, seed=data.seed, start_step=start_step,
      pack=pack, shuffle=train, repeat=True,
      data_dir=data.data_dir, prompt_slots=prompt_slots)


def read_inputs(input_file, vocabulary, data, task, split, max_examples):
  """Dicts with 'inputs' (and maybe 'targets') text from a file or a task split.

  For task='local_pairs', DataConfig.pairs_prefix is put before each input of the file too,
  as on the pairs files the model was trained on."""
  if input_file:
    prefix = data.pairs_prefix.strip() if task == LOCAL_PAIRS_TASK else ""
    for record in _read_input_file(input_file, max_examples):
      if prefix:
        record = {**record, "inputs": f"{prefix} {record['inputs']}"}
      yield record
    return
  # A task split: its inputs as the model sees them (a local_pairs prefix included).
  for batch in itertools.islice(batches(data, task, split, 1, train=False, pack=False),
                                max_examples):
    text = lambda key: vocabulary.decode([int(t) for t in batch[key][0] if t > 1])
    yield {"inputs": text("encoder_input_tokens"), "targets": text("decoder_target_tokens")}


def _read_input_file(input_file, max_examples):
  """Dicts with 'inputs' from a text file (one input a line) or JSONL with an 'inputs' field."""
  if not os.path.isfile(input_file):
    raise UsageError(f"infer input_file={input_file!r} does not exist (pass a text file, one "
                     "input per line, or JSONL with an 'inputs' field per line).")
  with open(input_file, encoding="utf-8") as f:
    lines = [line.rstrip("\n") for line in f if line.strip()]
  for line in lines[:max_examples]:
    if input_file.endswith((".jsonl", ".json")):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UsageError(f"{input_file}: not a JSON line ({e}): {line[:80]}") from None
      if not isinstance(record, dict) or "inputs" not in record:
        raise UsageError(f"{input_file}: each JSONL line needs an 'inputs' field: {line[:80]}")
      yield record
    else:
      yield {"inputs": line}


def pad_rows(rows: list[list[int]], length: int) -> tuple[np.ndarray, int]:
  """[len(rows), length] int32, each row cut to `length` ending in EOS (1); and how many were cut."""
  out = np.zeros((len(rows), length), np.int32)
  truncated = 0
  for i, row in enumerate(rows):
    if len(row) > length:
      truncated += 1
      row = row[:length - 1] + [1]
    out[i, :len(row)] = row
  return out, truncated
