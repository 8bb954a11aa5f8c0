"""Scoring a model on a task: decoded metrics (seqio's evaluator, or the pairs metrics
without seqio), teacher-forced loss and accuracy, and the examples a run prints.

    metrics = decoded_metrics(config, params, data, task, 32, DecodeConfig(), 256, vocab)
    metrics = teacher_forced_metrics(config, params, data, task, 32)

`t5jax eval` and a training run's decoded evals (t5jax.run) call these. Decoding
prepares the params once for all batches (t5jax.decoding.prepare_params).
"""

from __future__ import annotations

import itertools

import jax
import numpy as np

from t5jax.config import T5Config
from t5jax.data.inputs import LOCAL_PAIRS_TASK, DataConfig, batches, pair_split
from t5jax.decoding import DecodeConfig
from t5jax.model import prompt_length, unscan_params

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


def has_metrics(task: str, data: DataConfig | None = None) -> bool:
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
  inputs, targets = pair_split(data, data.eval_split)
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
  """eval/loss and eval/accuracy over data.eval_batches batches of data.eval_split, by the
  trainer's own `evaluate` (on one device: no mesh)."""
  from t5jax import losses, train_step, trainer
  eval_step = jax.jit(train_step.make_eval_step(config, losses.LossConfig()))
  return trainer.evaluate(eval_step, params, itertools.islice(
      batches(data, task, data.eval_split, batch_size, train=False,
              prompt_slots=prompt_length(config)), data.eval_batches))


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
