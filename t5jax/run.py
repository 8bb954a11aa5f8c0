"""Entry functions behind `t5jax train | eval | infer`: gin-configurable, plain Python too.

    from t5jax import run
    run.train(model=get_config("tiny", vocab_size=8192), data=run.DataConfig(...),
              trainer=TrainConfig(run_dir="runs/x", num_steps=300, batch_size=16))

Each function reads top to bottom in stages. What a run reads (`DataConfig`, the
task, batches) is `t5jax.data.inputs`; how it is scored is `t5jax.scoring`.
TensorFlow/seqio are imported inside the functions (through t5jax.data), never
at module import, so the command line starts fast and the core stays TF-free.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys

import gin
import jax
import numpy as np

from t5jax import scoring, trainer as trainer_lib
from t5jax.config import ARCHITECTURE_FIELDS, T5Config, get_config
from t5jax.data.inputs import (DEFAULT_TASK, LOCAL_CORPUS_TASK, LOCAL_PAIRS_TASK,  # noqa: F401
                               DataConfig, batches, check_vocabulary, list_tasks, pad_rows,
                               prepare_task, read_inputs)
from t5jax.decoding import DecodeConfig
from t5jax.errors import UsageError
from t5jax.model import prompt_length, unscan_params


@gin.configurable(module="t5jax")
def model_config(preset: str = "tiny", **overrides) -> T5Config:
  """A preset (t5jax.config.PRESETS) with any T5Config field overridden."""
  return get_config(preset, **overrides)


def _register_library_configs() -> None:
  """The config dataclasses of the library modules, configurable by their class names."""
  from t5jax import checkpoints, losses, optim, partitioning
  from t5jax.config import AdapterConfig
  for cls in (DataConfig, trainer_lib.TrainConfig, optim.OptimizerConfig, losses.LossConfig,
              partitioning.MeshConfig, checkpoints.CheckpointConfig, DecodeConfig,
              AdapterConfig):
    _CONFIGURABLES[cls] = gin.external_configurable(cls, module="t5jax")


_CONFIGURABLES = {}  # class -> callable that applies its gin bindings
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
  if trainer.eval_every and scoring.has_metrics(task, data):
    if jax.process_count() > 1:
      print("Decoding evals during training run on one process only; use `t5jax eval`.")
    else:
      # Decoding needs per-layer params (a no-op unless model.scan_layers).
      eval_hook = lambda step, params: scoring.decoded_metrics(
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
    scoring.print_examples(model, params, vocabulary, data, task, show_examples)
  return result


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
  if scoring.has_metrics(task, data):
    metrics = scoring.decoded_metrics(config, params, data, task, batch_size, decode_config,
                              max_examples, vocabulary)
    if not metrics:
      raise UsageError(f"Nothing in {task!r} can be scored on split {data.eval_split!r} (see "
                       "the lines above); set DataConfig.eval_split to a labelled split.")
  else:
    metrics = scoring.teacher_forced_metrics(config, params, data, task, batch_size)
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
      enc, n = pad_rows([vocabulary.encode(e["inputs"]) + [1] for e in chunk],
                         data.inputs_length)
      truncated += n
      if mode == "score":
        if any("targets" not in e for e in chunk):
          raise UsageError("infer mode='score' needs a 'targets' field in every input.")
        dec, _ = pad_rows([vocabulary.encode(e["targets"]) + [1] for e in chunk],
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
