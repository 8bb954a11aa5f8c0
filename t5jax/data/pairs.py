"""A seqio task over your own (input, target) pairs: TSV or JSONL files.

  TSV:   one pair a line, "input<TAB>target" (exactly two fields).
  JSONL: one JSON object a line, the input and target under `keys`
         (default "inputs", "targets").
Blank lines are skipped. The files are read and checked here, in Python,
when the task is registered: a row without two fields, an empty field, a
byte that is not UTF-8, a JSONL line that is not an object with both keys,
or a file with no pairs is a PairsError naming the file and line, before any
training starts (not a TF error from inside tf.data later).

Reading and splitting (`pair_splits`) is plain Python, shared by the seqio task here and
the TensorFlow-free pipeline (t5jax.data.grain_pipeline.PairsStream); seqio and
TensorFlow are imported only by the seqio task's functions.

The input is `prefix` + " " + the input when a prefix is given (T5's task
prefixes: "summarize:", "translate English to Korean:"). Without a
validation file every 100th pair is held out as "validation" (so the file
needs 100 pairs). The task is scored by a metric named in PAIRS_METRICS.
"""

from __future__ import annotations

import json
import os

import numpy as np

from t5jax.data import metrics
from t5jax.errors import UsageError

VALIDATION_EVERY = 100
PAIRS_METRICS = {
    "exact_match": [metrics.exact_match],  # T5's sequence_accuracy
    "rouge": [metrics.rouge],  # ROUGE-1/2/Lsum as T5
    "bleu": [metrics.bleu],  # sacreBLEU as T5
    "squad": [metrics.squad],  # SQuAD EM / F1 against the one target
    "none": [],  # no decoding evals: teacher-forced loss only
}


class PairsError(UsageError):
  """A pairs file is unusable; the message names the file, line and fix."""


def _format(path: str) -> str:
  if path.endswith((".tsv", ".tsv.txt")):
    return "tsv"
  if path.endswith((".jsonl", ".json")):
    return "jsonl"
  raise PairsError(f"{path}: a pairs file ends in .tsv (input<TAB>target a "
                   "line) or .jsonl (a JSON object a line).")


def read_pairs(path: str, keys: tuple[str, str] = ("inputs", "targets")
               ) -> list[tuple[str, str]]:
  """The (input, target) pairs of a TSV or JSONL file (module docstring)."""
  if not os.path.isfile(path):
    raise PairsError(f"pairs file {path!r} does not exist.")
  kind = _format(path)
  if len(keys) != 2:
    raise PairsError(f"DataConfig.pairs_keys={keys!r}: two JSON keys, the "
                     "input's and the target's.")
  pairs = []
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise PairsError(
            f"{path}: line {lineno} is not valid UTF-8 ({e.reason} at byte "
            f"{e.start}); re-encode the file as UTF-8.") from None
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      if kind == "tsv":
        fields = line.split("\t")
        if len(fields) != 2:
          raise PairsError(
              f"{path}: line {lineno} has {len(fields)} tab-separated "
              "field(s); each line needs exactly two, input<TAB>target: "
              f"{line[:80]!r}")
      else:
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise PairsError(f"{path}: line {lineno} is not JSON ({e.msg}): "
                           f"{line[:80]!r}") from None
        if not isinstance(record, dict) or any(k not in record for k in keys):
          raise PairsError(
              f"{path}: line {lineno} must be a JSON object with keys "
              f"{keys[0]!r} and {keys[1]!r} (DataConfig.pairs_keys): "
              f"{line[:80]!r}")
        fields = [record[k] for k in keys]
        if not all(isinstance(v, str) for v in fields):
          raise PairsError(f"{path}: line {lineno}: {keys[0]!r} and "
                           f"{keys[1]!r} must be strings: {line[:80]!r}")
      if not all(v.strip() for v in fields):
        raise PairsError(f"{path}: line {lineno} has an empty input or "
                         f"target: {line[:80]!r}")
      pairs.append((fields[0], fields[1]))
  if not pairs:
    raise PairsError(f"pairs file {path} is empty: no (input, target) pairs.")
  return pairs


def pair_splits(train: str, validation: str | None = None, *, prefix: str = "",
                keys: tuple[str, str] = ("inputs", "targets")
                ) -> dict[str, tuple[list[str], list[str]]]:
  """{"train": (inputs, targets), "validation": (inputs, targets)} as the model reads them
  (the prefix before each input); without `validation` every VALIDATION_EVERY-th training
  pair is held out instead. The files are read and checked now."""
  rows = read_pairs(train, keys)
  if validation:
    splits = {"train": rows, "validation": read_pairs(validation, keys)}
  elif len(rows) >= VALIDATION_EVERY:
    held = [i % VALIDATION_EVERY == VALIDATION_EVERY - 1
            for i in range(len(rows))]
    splits = {"train": [r for r, h in zip(rows, held) if not h],
              "validation": [r for r, h in zip(rows, held) if h]}
  else:
    raise PairsError(
        f"{train} has {len(rows)} pairs and no validation file: set "
        "DataConfig.pairs_validation, or give at least "
        f"{VALIDATION_EVERY} pairs (every {VALIDATION_EVERY}th is held out).")
  prefix = prefix.strip()
  return {split: ([f"{prefix} {i}" if prefix else i for i, _ in split_rows],
                  [t for _, t in split_rows])
          for split, split_rows in splits.items()}


def check_metric(metric: str) -> None:
  if metric not in PAIRS_METRICS:
    raise UsageError(f"DataConfig.pairs_metric={metric!r}: choose one of "
                     f"{', '.join(map(repr, PAIRS_METRICS))}.")


def pairs_source(train: str, validation: str | None = None, *,
                 prefix: str = "", keys: tuple[str, str] = ("inputs", "targets")):
  """A seqio source of {"inputs", "targets"} text; splits train and validation
  (pair_splits)."""
  import seqio
  import tensorflow as tf
  columns = {split: (np.array(inputs, dtype=object), np.array(targets, dtype=object))
             for split, (inputs, targets) in pair_splits(
                 train, validation, prefix=prefix, keys=keys).items()}

  def dataset_fn(split, shuffle_files, seed=None):
    if split not in columns:
      raise UsageError(f"local pairs split must be 'train' or 'validation', "
                       f"got {split!r}")
    inputs, targets = columns[split]
    ds = tf.data.Dataset.from_tensor_slices(
        {"inputs": tf.constant(inputs, tf.string),
         "targets": tf.constant(targets, tf.string)})
    if shuffle_files:
      ds = ds.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    return ds

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(columns))


def register_pairs_task(name: str, vocabulary, train: str,
                        validation: str | None = None, *, prefix: str = "",
                        metric: str = "exact_match",
                        keys: tuple[str, str] = ("inputs", "targets")):
  """Registers `name` (a seqio.Task): finetuning on the pairs of `train`, scored by
  `metric` (a PAIRS_METRICS name) on `validation` (module docstring)."""
  import seqio
  from t5jax.data import tasks as tasks_lib
  check_metric(metric)
  return tasks_lib.register_task(
      name, source=pairs_source(train, validation, prefix=prefix,
                                keys=tuple(keys)),
      preprocessors=[seqio.preprocessors.tokenize,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=tasks_lib.output_features(vocabulary),
      metric_fns=PAIRS_METRICS[metric])
