"""Entry functions behind `t5jax train | eval | infer`: gin-configurable, plain Python too.

    from t5jax import run
    run.train(model=get_config("tiny", vocab_size=8192), data=run.DataConfig(...),
              trainer=TrainConfig(run_dir="runs/x", num_steps=300, batch_size=16))

Each function reads top to bottom in stages. TensorFlow/seqio are imported
inside the functions (through t5jax.data), never at module import, so the
command line starts fast and the core stays TF-free.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import sys

import gin
import jax
import numpy as np

from t5jax import trainer as trainer_lib
from t5jax.config import ARCHITECTURE_FIELDS, T5Config, get_config
from t5jax.decoding import DecodeConfig
from t5jax.errors import UsageError
from t5jax.model import prompt_length, unscan_params

DEFAULT_TASK = "default_corpus_span_corruption"
LOCAL_CORPUS_TASK = "local_corpus"
LOCAL_PAIRS_TASK = "local_pairs"


@gin.configurable(module="t5jax")
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


@gin.configurable(module="t5jax")
def model_config(preset: str = "tiny", **overrides) -> T5Config:
  """A preset (t5jax.config.PRESETS) with any T5Config field overridden."""
  return get_config(preset, **overrides)


def _register_library_configs() -> None:
  """The config dataclasses of the library modules, configurable by their class names."""
  from t5jax import checkpoints, losses, optim, partitioning
  from t5jax.config import AdapterConfig
  for cls in (trainer_lib.TrainConfig, optim.OptimizerConfig, losses.LossConfig,
              partitioning.MeshConfig, checkpoints.CheckpointConfig, DecodeConfig,
              AdapterConfig):
    _CONFIGURABLES[cls] = gin.external_configurable(cls, module="t5jax")


_CONFIGURABLES = {DataConfig: DataConfig}  # class -> callable that applies its gin bindings
_register_library_configs()

# The default config arguments of the entry functions. Like the sub-config
# defaults of TrainConfig (`mesh: MeshConfig = MeshConfig()`) they are made at
# import, before any gin file is parsed; `with_bindings` rebuilds them.
DEFAULT_DATA = DataConfig()
DEFAULT_DECODE = DecodeConfig()


def with_bindings(config, default=None):
  """`config`, with what is still an import-time default rebuilt from its gin bindings.

  Without this, `MeshConfig.model = 2` would reach a run only through a line
  `TrainConfig.mesh = @MeshConfig()` (and `DataConfig.task = ...` only through
  `train.data = @DataConfig()`): a default instance is made before gin has any
  bindings. Here `config` itself, when it is `default`, and each of its fields
  that is still the very instance its dataclass declares as default, is built
  again by calling its class's gin configurable, so bindings apply whether or
  not a file wires the sub-config in, and gin's operative config records them.
  Anything set explicitly (a new instance, in Python or by `@MeshConfig()`) is
  kept; with no bindings the rebuilt value equals the default.
  """
  if default is not None and config is default:
    config = _CONFIGURABLES[type(config)]()
  if not dataclasses.is_dataclass(config):
    return config
  rebuilt = {f.name: _CONFIGURABLES[type(f.default)]() for f in dataclasses.fields(config)
             if type(f.default) in _CONFIGURABLES and getattr(config, f.name) is f.default}
  return dataclasses.replace(config, **rebuilt) if rebuilt else config


# ----------------------------------------------------------------------------
# Shared stages.

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


def _pair_split(data: DataConfig, split: str) -> tuple[list[str], list[str]]:
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
    inputs, targets = _pair_split(data, split)
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


def load_params(path: str, model: T5Config | None = None, step: int | str | None = None):
  """(config, params) from a run directory or any checkpoint format; checks it fits `model`.

  Params come in `model`'s layer layout (scan_layers), or per layer without a
  model: evaluate/infer decode, which needs per-layer params. step: which
  checkpoint of a run directory, 'latest', 'best' or a number (default: best
  when the run has a best.json, else latest; see t5jax.conversion.load_run_step).
  """
  config, params, _ = _load_params_step(path, model, step)
  return config, params


def _load_params_step(path: str, model: T5Config | None, step: int | str | None):
  """load_params, plus the step loaded (None for checkpoints that are not run directories)."""
  from t5jax.conversion import load_checkpoint_step
  config, params, info = load_checkpoint_step(
      path, step=step, scan_layers=bool(model and model.scan_layers))
  if model is not None:
    diff = {k: (getattr(config, k), getattr(model, k)) for k in ARCHITECTURE_FIELDS
            if getattr(config, k) != getattr(model, k)}
    if diff:
      raise UsageError(f"Checkpoint {path} does not fit the configured model: " + ", ".join(
          f"{k}={a!r} in the checkpoint vs {b!r} configured" for k, (a, b) in diff.items()))
    config = model
  return config, params, (info.step if info else None)


def write_config(run_dir: str, name: str = "config.gin") -> None:
  if jax.process_index() == 0:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, name), "w") as f:
      f.write(gin.operative_config_str() or gin.config_str())


# ----------------------------------------------------------------------------
# train

@gin.configurable(module="t5jax")
def train(model: T5Config = gin.REQUIRED, trainer: trainer_lib.TrainConfig = gin.REQUIRED,
          data: DataConfig = DEFAULT_DATA, init_checkpoint: str | None = None,
          show_examples: int = 3) -> trainer_lib.TrainResult:
  """Pretrains or finetunes `model` on `data.task`, resuming from trainer.run_dir."""
  trainer, data = with_bindings(trainer), with_bindings(data, DEFAULT_DATA)
  # 1. Processes, then the task (trains the vocabulary on first use).
  trainer_lib.initialize_distributed()
  vocabulary, task = prepare_task(data)
  check_vocabulary(model, vocabulary)

  # 2. Starting point: pretrained params to finetune from, if any. With an adapter
  # (model_config.adapter, gin_configs/peft/) they are its frozen base, loaded on
  # every start: the run's checkpoints hold the adapter only.
  init_params, init_step = (_load_params_step(init_checkpoint, model, None)[1:]
                            if init_checkpoint else (None, None))
  adapter = model.adapter
  prompt_ids = None
  if adapter is not None and adapter.method == "prompt" and adapter.prompt_init == "text":
    prompt_ids = vocabulary.encode(adapter.prompt_init_text)

  # 3. Input: training batches from any step (resume), a fixed eval slice.
  def data_fn(start_step):
    return batches(data, task, "train", trainer.batch_size, start_step=start_step,
                   vocabulary=vocabulary, prompt_slots=prompt_length(model))

  def eval_data_fn():
    return itertools.islice(batches(data, task, data.eval_split, trainer.batch_size,
                                    train=False, vocabulary=vocabulary,
                                    prompt_slots=prompt_length(model)), data.eval_batches)

  # Tasks with metrics (GLUE, SuperGLUE) are also decoded and scored at each eval.
  eval_hook = None
  if trainer.eval_every and _has_metrics(task, data):
    if jax.process_count() > 1:
      print("Decoding evals during training run on one process only; use `t5jax eval`.")
    else:
      # Decoding needs per-layer params (a no-op unless model.scan_layers).
      eval_hook = lambda step, params: decoded_metrics(
          *unscan_params(model, params), data, task, trainer.batch_size,
          DecodeConfig(max_decode_length=data.targets_length), data.eval_examples, vocabulary)

  # 4. Train; the config is written first so a crashed run still records it.
  write_config(trainer.run_dir)
  result = trainer_lib.train(model, trainer, data_fn, init_params=init_params,
                             eval_data_fn=eval_data_fn if trainer.eval_every else None,
                             eval_hook=eval_hook, base_checkpoint=init_checkpoint,
                             base_step=init_step, prompt_ids=prompt_ids)
  write_config(trainer.run_dir)  # now the operative config (what was actually used)
  if jax.process_index() != 0:
    return result

  # 5. Outputs a researcher looks at: curves and a few predictions.
  from t5jax import plots
  plot = plots.plot_run(trainer.run_dir)
  if plot:
    print(f"Curves: {plot}")
  if show_examples and result.stopped == "done":
    params = jax.device_get(result.params)  # with an adapter: base + adapter
    print_examples(model, params, vocabulary, data, task, show_examples)
  return result


def print_examples(model: T5Config, params, vocabulary, data: DataConfig, task: str,
                   count: int) -> None:
  """Held-out examples: input (with sentinels), target, and the model's greedy output."""
  from t5jax.decoding import decode
  model, params = unscan_params(model, params)  # decoding needs per-layer params
  # Decodes a batch of at least 32 rows so the span count means something; prints `count`.
  batch = next(batches(data, task, data.eval_split, max(count, 32), train=False, pack=False,
                       vocabulary=vocabulary))
  out = decode(params, model, batch["encoder_input_tokens"],
               DecodeConfig(max_decode_length=data.targets_length))
  text = lambda ids: vocabulary.decode([int(t) for t in ids if t > 0])
  predictions = np.asarray(out.tokens[:, 0])
  for i in range(min(count, len(predictions))):
    print(f"\n--- example {i} ---")
    print(f"input:      {_clip(text(batch['encoder_input_tokens'][i]))}")
    print(f"target:     {_clip(text(batch['decoder_target_tokens'][i]))}")
    print(f"prediction: {_clip(text(predictions[i]))}")
  extra_ids = getattr(vocabulary, "extra_ids", 0)
  if extra_ids:
    fills = span_fills(batch["decoder_target_tokens"], predictions,
                       vocabulary.vocab_size - extra_ids, vocabulary.vocab_size)
    if fills["spans"]:
      print(f"\nSpans filled exactly over these {len(predictions)} held-out rows: "
            f"{fills['exact']} of {fills['spans']} ({fills['exact_multi']} of "
            f"{fills['spans_multi']} longer than one token)")


def span_fills(targets, predictions, first_sentinel: int, end: int) -> dict[str, int]:
  """How many target spans (the tokens after each sentinel) a prediction fills exactly.

  targets, predictions: [rows, length] ids, 0 = padding, 1 = EOS (ends the row).
  Ids in [first_sentinel, end) are sentinels; a span runs from one sentinel to the
  next sentinel or EOS. Span k of the target counts as filled when the prediction
  has the same sentinel followed by the same tokens. Rows whose target holds no
  sentinel (not a span-corruption target) count nothing.
  """
  def spans(row):
    out, key = {}, None
    for t in (int(t) for t in row):
      if t in (0, 1):
        break
      if first_sentinel <= t < end:
        key = t
        out.setdefault(key, [])
      elif key is not None:
        out[key].append(t)
    return out

  total = {"spans": 0, "exact": 0, "spans_multi": 0, "exact_multi": 0}
  for target, prediction in zip(np.asarray(targets), np.asarray(predictions)):
    predicted = spans(prediction)
    for key, tokens in spans(target).items():
      if not tokens:
        continue
      hit = predicted.get(key) == tokens
      total["spans"] += 1
      total["exact"] += hit
      if len(tokens) > 1:
        total["spans_multi"] += 1
        total["exact_multi"] += hit
  return total


def _clip(s: str, n: int = 400) -> str:
  return s if len(s) <= n else s[:n] + " ..."


# ----------------------------------------------------------------------------
# eval

@gin.configurable(module="t5jax")
def evaluate(checkpoint: str = gin.REQUIRED, data: DataConfig = DEFAULT_DATA,
             batch_size: int = 16, decode_config: DecodeConfig = DEFAULT_DECODE,
             max_examples: int | None = None, output_dir: str | None = None,
             step: int | str | None = None) -> dict:
  """Metrics of a checkpoint on data.task's eval split.

  Tasks with seqio metrics (GLUE, SuperGLUE) are decoded and scored by their
  metric functions (mixtures add eval/<mixture>/average); pretraining tasks
  report teacher-forced loss and token accuracy over data.eval_batches
  batches. step: which checkpoint of a run directory (see load_params).
  """
  data = with_bindings(data, DEFAULT_DATA)
  decode_config = with_bindings(decode_config, DEFAULT_DECODE)
  vocabulary, task = prepare_task(data)
  config, params, loaded_step = _load_params_step(checkpoint, None, step)
  check_vocabulary(config, vocabulary)
  if _has_metrics(task, data):
    metrics = decoded_metrics(config, params, data, task, batch_size, decode_config,
                              max_examples, vocabulary)
    if not metrics:
      raise UsageError(f"Nothing in {task!r} can be scored on split {data.eval_split!r} (see "
                       "the lines above); set DataConfig.eval_split to a labelled split.")
  else:
    metrics = teacher_forced_metrics(config, params, data, task, batch_size)
  output_dir = output_dir or (checkpoint if os.path.isdir(checkpoint) else ".")
  if jax.process_index() == 0:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "eval.jsonl"), "a") as f:
      record = {"checkpoint": checkpoint, "task": task, **metrics}
      if loaded_step is not None:
        record["step"] = loaded_step
      f.write(json.dumps(record) + "\n")
    print(json.dumps(metrics, indent=2, sort_keys=True))
  return metrics


def _has_metrics(task: str, data: DataConfig | None = None) -> bool:
  if data is not None and data.pipeline == "grain":  # corpora: teacher-forced loss only
    return task == LOCAL_PAIRS_TASK and data.pairs_metric != "none"
  import seqio
  provider = seqio.get_mixture_or_task(task)
  return any(t.metric_fns for t in getattr(provider, "tasks", [provider]))


def decoded_metrics(config, params, data, task, batch_size, decode_config, max_examples,
                    vocabulary) -> dict:
  """The task's metrics of decoded predictions: seqio's evaluator, or on the grain pipeline
  (task 'local_pairs') pairs_metrics."""
  if data.pipeline == "grain":
    return pairs_metrics(config, params, data, batch_size, decode_config, max_examples,
                         vocabulary)
  return seqio_metrics(config, params, data, task, batch_size, decode_config, max_examples)


def pairs_metrics(config, params, data, batch_size, decode_config, max_examples,
                  vocabulary) -> dict:
  """eval/local_pairs/<metric> without seqio: what seqio's Evaluator computes for the pairs
  task. The first `max_examples` pairs of data.eval_split in file order, each input
  trimmed to inputs_length with EOS, decoded greedily (or by decode_config) in batches of
  `batch_size` (the last one padded, so one compile serves all), the prediction's text
  up to its EOS scored against the target text by the DataConfig.pairs_metric functions."""
  from t5jax.data import pairs as pairs_lib, rows as rows_lib
  from t5jax.decoding import decode, prepare_params
  inputs, targets = _pair_split(data, data.eval_split)
  if max_examples:
    inputs, targets = inputs[:max_examples], targets[:max_examples]
  from t5jax.data.grain_pipeline import tokenize_texts
  encoded = [rows_lib.append_eos_after_trim(ids, data.inputs_length)
             for ids in tokenize_texts(vocabulary, inputs)]
  params = prepare_params(params, config)  # once for all batches
  predictions = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    rows = np.zeros((batch_size, data.inputs_length), np.int32)
    for i, ids in enumerate(chunk):
      rows[i, :len(ids)] = ids
    tokens = np.asarray(decode(params, config, rows, decode_config).tokens[:, 0])
    predictions += [vocabulary.decode([int(t) for t in row]) for row in tokens[:len(chunk)]]
  metrics = {}
  for metric_fn in pairs_lib.PAIRS_METRICS[data.pairs_metric]:
    metrics.update(metric_fn(targets, predictions))
  out = {f"eval/{LOCAL_PAIRS_TASK}/{name}": float(value) for name, value in metrics.items()}
  if len(metrics) > 1:  # as seqio_metrics: their mean (a non-finite one counts 0)
    out[f"eval/{LOCAL_PAIRS_TASK}/average"] = float(np.mean(
        [v if np.isfinite(v) else 0.0 for v in map(float, metrics.values())]))
  return out


def teacher_forced_metrics(config, params, data, task, batch_size) -> dict:
  from t5jax import losses, train_step
  eval_step = jax.jit(train_step.make_eval_step(config, losses.LossConfig()))
  total = None
  for batch in itertools.islice(batches(data, task, data.eval_split, batch_size, train=False,
                                        prompt_slots=prompt_length(config)),
                                data.eval_batches):
    stats = jax.device_get(eval_step(params, batch))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  return {f"eval/{k}": float(v) for k, v in losses.summarize(total).items()}


def scored_tasks(task: str, split: str) -> tuple[list[str], dict[str, str]]:
  """(tasks of `task` to score on `split`, {task: why not} for its other tasks with metrics).

  Not scored: tasks without the split, and splits whose labels are hidden
  (GLUE/SuperGLUE test splits, but AX-b/AX-g's; t5jax.data.glue.scoring_note).
  """
  import seqio
  from t5jax.data import glue
  provider = seqio.get_mixture_or_task(task)
  scored, skipped = [], {}
  for t in seqio.get_subtasks(provider):
    if not t.metric_fns:
      continue
    splits = tuple(t.splits)
    why = glue.scoring_note(t.name, split, splits) or (
        None if split in splits else f"no {split!r} split")
    if why:
      skipped[t.name] = why
    else:
      scored.append(t.name)
  return scored, skipped


_SKIP_NOTES_PRINTED = set()


def seqio_metrics(config, params, data, task, batch_size, decode_config, max_examples) -> dict:
  """eval/<task>/<metric> for each task of `task` that can be scored on data.eval_split.

  A mixture also gets eval/<mixture>/average: each task's metrics averaged,
  then the tasks (GLUE and SuperGLUE as T5 reports them; see
  t5jax.data.glue.benchmark_average); a task with several metrics (MRPC: F1
  and accuracy) gets eval/<task>/average, their mean. Tasks that cannot be
  scored are skipped with one printed line each (once per process); {} if
  none can be.
  """
  import seqio
  from t5jax.data import glue
  from t5jax.decoding import decode, prepare_params
  scored, skipped = scored_tasks(task, data.eval_split)
  for name, why in skipped.items():
    if (name, data.eval_split) not in _SKIP_NOTES_PRINTED and jax.process_index() == 0:
      print(f"Not scoring {name} on {data.eval_split!r}: {why}.", flush=True)
    _SKIP_NOTES_PRINTED.add((name, data.eval_split))
  if not scored:
    return {}
  provider = seqio.get_mixture_or_task(task)
  eval_name = task
  if skipped and isinstance(provider, seqio.Mixture):
    # seqio would still score hidden-label splits: evaluate the scorable tasks only.
    eval_name = f"{task}__scored_{data.eval_split}"
    if eval_name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(eval_name)
    seqio.MixtureRegistry.add(eval_name, [(name, 1.0) for name in scored])
  params = prepare_params(params, config)  # once for all batches

  def predict_fn(dataset, *_):
    out = []
    for indices, features in dataset.batch(batch_size).as_numpy_iterator():
      tokens = decode(params, config, features["encoder_input_tokens"], decode_config).tokens
      # Whole rows (EOS, then padding): seqio stacks the predictions into one array and
      # its vocabulary's decode stops at the EOS. Rows cut at their EOS would have
      # different lengths, which seqio cannot stack.
      for i, row in zip(indices, np.asarray(tokens[:, 0])):
        out.append((int(i), [int(t) for t in row]))
    return out

  try:
    evaluator = seqio.Evaluator(
        eval_name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
        eval_split=data.eval_split, sequence_length={"inputs": data.inputs_length,
                                                     "targets": data.targets_length},
        num_examples=max_examples)
    all_metrics, *_ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn)
  finally:
    if eval_name != task:
      seqio.MixtureRegistry.remove(eval_name)
  results = all_metrics.result() if hasattr(all_metrics, "result") else all_metrics
  results = {name: {metric: float(np.asarray(value)) for metric, value in task_metrics.items()}
             for name, task_metrics in results.items()}
  metrics = {f"eval/{name}/{metric}": value
             for name, task_metrics in results.items() for metric, value in task_metrics.items()}
  if isinstance(provider, seqio.Mixture) or len(metrics) > 1:
    average = glue.benchmark_average(task, results)
    if average is not None:
      metrics[f"eval/{task}/average"] = average
  return metrics


# ----------------------------------------------------------------------------
# infer

@gin.configurable(module="t5jax")
def infer(checkpoint: str = gin.REQUIRED, output: str = gin.REQUIRED,
          input_file: str | None = None, data: DataConfig = DEFAULT_DATA,
          split: str = "validation", max_examples: int = 100, batch_size: int = 16,
          decode_config: DecodeConfig = DEFAULT_DECODE, mode: str = "predict",
          step: int | str | None = None) -> int:
  """Writes JSONL {inputs, prediction, score} (mode 'predict') or {inputs, targets,
  score} (mode 'score') for a text/JSONL file of inputs or a task split.

  Inputs longer than data.inputs_length are truncated, with a warning. step:
  which checkpoint of a run directory (see load_params).
  """
  from t5jax.decoding import decode, prepare_params, score_targets
  data = with_bindings(data, DEFAULT_DATA)
  decode_config = with_bindings(decode_config, DEFAULT_DECODE)
  if mode not in ("predict", "score"):
    raise UsageError(f"infer mode={mode!r}: 'predict' or 'score'.")
  vocabulary, task = prepare_task(data)
  config, params = load_params(checkpoint, step=step)
  check_vocabulary(config, vocabulary)
  examples = list(read_inputs(input_file, vocabulary, data, task, split, max_examples))
  if not examples:
    raise UsageError(f"No inputs to run: {input_file or f'{task}:{split}'} is empty.")
  truncated = 0
  prepared = (prepare_params(params, config, decode_config.quantize)  # once for all
              if mode == "predict" else None)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    for start in range(0, len(examples), batch_size):
      chunk = examples[start:start + batch_size]
      enc, n = _pad_rows([vocabulary.encode(e["inputs"]) + [1] for e in chunk],
                         data.inputs_length)
      truncated += n
      if mode == "score":
        if any("targets" not in e for e in chunk):
          raise UsageError("infer mode='score' needs a 'targets' field in every input.")
        dec, _ = _pad_rows([vocabulary.encode(e["targets"]) + [1] for e in chunk],
                           data.targets_length)
        scores = np.asarray(score_targets(params, config, enc, dec))
        for e, s in zip(chunk, scores):
          f.write(json.dumps({"inputs": e["inputs"], "targets": e["targets"],
                              "score": float(s)}) + "\n")
        continue
      out = decode(prepared, config, enc, decode_config)
      for e, toks, score in zip(chunk, np.asarray(out.tokens), np.asarray(out.scores)):
        preds = [vocabulary.decode([int(t) for t in row if t > 1]) for row in toks]
        record = {"inputs": e["inputs"], "prediction": preds[0], "score": float(score[0])}
        if len(preds) > 1:
          record.update(predictions=preds, scores=[float(s) for s in score])
        if "targets" in e:
          record["targets"] = e["targets"]
        f.write(json.dumps(record) + "\n")
  if truncated:
    print(f"warning: {truncated} inputs were longer than DataConfig.inputs_length="
          f"{data.inputs_length} tokens and were truncated.", file=sys.stderr)
  print(f"Wrote {len(examples)} records to {output}")
  return len(examples)


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


def _pad_rows(rows, length):
  out = np.zeros((len(rows), length), np.int32)
  truncated = 0
  for i, row in enumerate(rows):
    if len(row) > length:
      truncated += 1
      row = row[:length - 1] + [1]
    out[i, :len(row)] = row
  return out, truncated
