"""GLUE and SuperGLUE as T5 text-to-text tasks, and their mixtures.

Formats follow T5 (paper appendix D, t5.data.glue_utils): the inputs are
"<benchmark> <key1>: <value1> <key2>: <value2> ..." with the TFDS feature
keys in sorted order unless a task fixes them, and the target is the TFDS
label name ("positive", "not_entailment", "True", ...) or "<unk>" for the
hidden test labels. The exceptions are T5's too:
  - stsb: the target is the score rounded to the nearest 0.2, "%.1f";
  - mnli_matched/mismatched and ax are read as "mnli", axb/axg as "rte";
  - multirc: fields question, answer, paragraph; HTML tags removed;
  - wic: fields sentence1, sentence2, word;
  - record: "record query: ... entities: e1, e2 passage: ..." with the
    "@highlight" markers joined into sentences, one example per answer;
  - wsc (wsc.fixed, T5's "simple" form): "wsc: ... *pronoun* ..." ->
    the referent text, trained on the correct referents only; wsc_eval scores
    whether the predicted referent matches the candidate (label True/False).
TFDS names are glue/<task> and super_glue/<task>; the data_dir comes from
make_batch_iterator(data_dir=...).

Mixtures (T5's glue_v002_proportional / super_glue_v102_proportional): the
training tasks at examples-proportional rates (or equal / temperature-scaled:
t5jax.data.mixing, DataConfig.mixing), plus the tasks that are only
evaluated: MNLI's two dev sets (mnli_matched, mnli_mismatched; glue_mnli's
own splits are train / validation_matched / ...), SuperGLUE's wsc_eval, and
the diagnostics (ax, axb, axg; test split only). `scoring_note` says which
(task, split) pairs cannot be scored and why (hidden labels), and
`benchmark_average` is the GLUE / SuperGLUE score T5 reports.
"""

import collections
import functools
import re

import numpy as np
import seqio
import tensorflow as tf

from t5jax.data import metrics
from t5jax.data import mixing as mixing_lib
from t5jax.data import tasks as tasks_lib

NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
BOOL = ("False", "True")

# name -> (tfds name, benchmark word, input keys, label names, metric fns,
#          TFDS split mapping or None)
_GLUE = {
    "cola": ("glue/cola", "cola", ("sentence",),
             ("unacceptable", "acceptable"), [metrics.matthews_corrcoef]),
    "sst2": ("glue/sst2", "sst2", ("sentence",), ("negative", "positive"),
             [metrics.accuracy]),
    "mrpc": ("glue/mrpc", "mrpc", ("sentence1", "sentence2"),
             ("not_equivalent", "equivalent"), [metrics.f1_and_accuracy]),
    "qqp": ("glue/qqp", "qqp", ("question1", "question2"),
            ("not_duplicate", "duplicate"), [metrics.f1_and_accuracy]),
    "mnli": ("glue/mnli", "mnli", ("hypothesis", "premise"), NLI3,
             [metrics.accuracy]),
    "mnli_matched": ("glue/mnli", "mnli", ("hypothesis", "premise"), NLI3,
                     [metrics.accuracy],
                     {"validation": "validation_matched",
                      "test": "test_matched"}),
    "mnli_mismatched": ("glue/mnli", "mnli", ("hypothesis", "premise"), NLI3,
                        [metrics.accuracy],
                        {"validation": "validation_mismatched",
                         "test": "test_mismatched"}),
    "qnli": ("glue/qnli", "qnli", ("question", "sentence"), NLI2,
             [metrics.accuracy]),
    "rte": ("glue/rte", "rte", ("sentence1", "sentence2"), NLI2,
            [metrics.accuracy]),
    "wnli": ("glue/wnli", "wnli", ("sentence1", "sentence2"),
             ("not_entailment", "entailment"), [metrics.accuracy]),
    # AX has only a test split with hidden labels; MCC is what GLUE reports.
    "ax": ("glue/ax", "mnli", ("hypothesis", "premise"), NLI3,
           [metrics.matthews_corrcoef]),
}
_SUPER_GLUE = {
    "boolq": ("super_glue/boolq", "boolq", ("passage", "question"), BOOL,
              [metrics.accuracy]),
    "cb": ("super_glue/cb", "cb", ("hypothesis", "premise"),
           ("entailment", "contradiction", "neutral"),
           [metrics.accuracy, metrics.mean_multiclass_f1(3)]),
    "copa": ("super_glue/copa", "copa",
             ("choice1", "choice2", "premise", "question"),
             ("choice1", "choice2"), [metrics.accuracy]),
    "multirc": ("super_glue/multirc", "multirc",
                ("question", "answer", "paragraph"), BOOL,
                [metrics.multirc_f1a_and_em]),
    "rte": ("super_glue/rte", "rte", ("hypothesis", "premise"), NLI2,
            [metrics.accuracy]),
    "wic": ("super_glue/wic", "wic", ("sentence1", "sentence2", "word"), BOOL,
            [metrics.accuracy]),
    "axb": ("super_glue/axb", "rte", ("sentence1", "sentence2"), NLI2,
            [metrics.matthews_corrcoef]),
    "axg": ("super_glue/axg", "rte", ("hypothesis", "premise"), NLI2,
            [metrics.accuracy]),
}

# Training-set sizes, for the examples-proportional mixtures (fixed here so
# registering a mixture never needs the data).
TRAIN_SIZES = {
    "glue_cola": 8551, "glue_sst2": 67349, "glue_mrpc": 3668,
    "glue_qqp": 363846, "glue_stsb": 5749, "glue_mnli": 392702,
    "glue_qnli": 104743, "glue_rte": 2490, "glue_wnli": 635,
    "super_glue_boolq": 9427, "super_glue_cb": 250, "super_glue_copa": 400,
    "super_glue_multirc": 27243, "super_glue_record": 100730,
    "super_glue_rte": 2490, "super_glue_wic": 5428, "super_glue_wsc": 259,
}
GLUE_TASKS = tuple(f"glue_{n}" for n in (*_GLUE, "stsb"))
SUPER_GLUE_TASKS = tuple(f"super_glue_{n}" for n in (*_SUPER_GLUE, "record",
                                                     "wsc", "wsc_eval"))
GLUE_MIXTURE, SUPER_GLUE_MIXTURE = "glue", "super_glue"
DEFAULT_RATE_CAP = mixing_lib.DEFAULT_CAP
# Tasks in a mixture only to be evaluated (no train split, or one not to train
# on): T5 gives them rate 0. MNLI's dev sets get half of MNLI's rate each
# instead, so the mixture's validation loss covers MNLI as training does.
EVAL_ONLY = {
    GLUE_MIXTURE: ("glue_mnli_matched", "glue_mnli_mismatched", "glue_ax"),
    SUPER_GLUE_MIXTURE: ("super_glue_wsc_eval", "super_glue_axb",
                         "super_glue_axg"),
}
# The only GLUE/SuperGLUE tasks whose test split TFDS has labels for (the
# diagnostics AX-b and AX-g); every other test split has label -1 (hidden).
LABELLED_TEST = ("super_glue_axb", "super_glue_axg")

# The benchmark score T5 reports (t5/evaluation/eval_utils.py compute_avg_glue):
# each task's metrics are averaged first (MRPC (F1 + accuracy) / 2; MNLI is
# one task: (matched + mismatched accuracy) / 2), then the tasks are averaged.
# WNLI and the diagnostics (AX, AX-b, AX-g) are reported but not averaged, as
# in T5 (and the benchmarks, for the diagnostics).
AVERAGE_GROUPS = {
    GLUE_MIXTURE: {
        "glue_cola": "cola", "glue_sst2": "sst2", "glue_mrpc": "mrpc",
        "glue_stsb": "stsb", "glue_qqp": "qqp", "glue_mnli_matched": "mnli",
        "glue_mnli_mismatched": "mnli", "glue_qnli": "qnli",
        "glue_rte": "rte"},
    SUPER_GLUE_MIXTURE: {
        "super_glue_boolq": "boolq", "super_glue_cb": "cb",
        "super_glue_copa": "copa", "super_glue_multirc": "multirc",
        "super_glue_record": "record", "super_glue_rte": "rte",
        "super_glue_wic": "wic", "super_glue_wsc_eval": "wsc"},
}


def benchmark_average(mixture: str, results: dict) -> float | None:
  """The mixture's average score from {task: {metric: value}}; None if empty.

  GLUE and SuperGLUE as T5 reports them (AVERAGE_GROUPS), over the tasks
  present; any other mixture: the mean over its tasks of each task's mean
  metric. A non-finite metric counts as 0.
  """
  groups = AVERAGE_GROUPS.get(mixture)
  grouped = collections.defaultdict(list)
  for task, task_metrics in results.items():
    if groups is None or task in groups:
      # An undefined value (STS-B's correlations of constant predictions, as
      # early in finetuning) counts as 0, so one task cannot make the score NaN.
      grouped[task if groups is None else groups[task]].extend(
          float(v) if np.isfinite(v) else 0.0 for v in task_metrics.values())
  means = [np.mean(v) for v in grouped.values() if v]
  return float(np.mean(means)) if means else None


def scoring_note(task: str, split: str, splits) -> str | None:
  """Why `task` cannot be scored on `split`, or None if it can.

  splits: the task's splits. GLUE/SuperGLUE test labels are hidden (TFDS
  writes -1) except for AX-b and AX-g, whose test split is their labelled
  data; glue_mnli's dev sets are the tasks glue_mnli_(mis)matched.
  """
  if task == "glue_mnli" and split not in splits:
    return (f"no {split!r} split; MNLI's dev sets are scored as "
            "glue_mnli_matched and glue_mnli_mismatched")
  if task in LABELLED_TEST and split not in splits:
    return (f"no {split!r} split; its labelled examples are its test split "
            f"(DataConfig.task='{task}', DataConfig.eval_split='test')")
  benchmark = task in GLUE_TASKS or task in SUPER_GLUE_TASKS
  if benchmark and split.startswith("test") and task not in LABELLED_TEST \
      and split in splits:
    return (f"TFDS hides the labels of its {split!r} split (label -1); "
            "`t5jax infer` writes predictions to submit to the benchmark")
  if task == "glue_ax" and split not in splits:
    return (f"no {split!r} split; its only split, test, has hidden labels "
            "(label -1)")
  return None


# ---------------------------------------------------------------------------
# Text formats (tf.data maps over raw TFDS examples).


def _label_text(label, label_names):
  # Hidden test labels are -1: T5 writes "<unk>".
  return tf.cond(label < 0, lambda: tf.constant("<unk>"),
                 lambda: tf.gather(list(label_names), label))


def glue_text(x, benchmark, keys, label_names):
  parts = [benchmark]
  for key in keys:
    parts += [f"{key}:", x[key]]
  inputs = tf.strings.join(parts, separator=" ")
  out = {"targets": _label_text(x["label"], label_names)}
  if benchmark == "multirc":
    inputs = tf.strings.regex_replace(inputs, "<br>", " ")
    inputs = tf.strings.regex_replace(inputs, "<(/)?b>", "")
    for k in ("paragraph", "question", "answer"):
      out[f"idx/{k}"] = x["idx"][k]
  else:
    out["idx"] = x["idx"]
  out["inputs"] = inputs
  return out


def stsb_text(x):
  score = tf.round(tf.cast(x["label"], tf.float32) * 5) / 5
  return {"inputs": tf.strings.join(["stsb sentence1:", x["sentence1"],
                                     "sentence2:", x["sentence2"]], " "),
          "targets": tf.strings.as_string(score, precision=1),
          "idx": x["idx"]}


def record_examples(dataset):
  """One example per answer (or one "<unk>" example when there is none)."""
  def fn(x):
    passage = tf.strings.regex_replace(
        x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    inputs = tf.strings.join(
        ["record query:", x["query"], "entities:",
         tf.strings.reduce_join(x["entities"], separator=", "), "passage:",
         passage], separator=" ")
    answers = x["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant(["<unk>"]))
    n = tf.size(targets)
    return {"inputs": tf.fill([n], inputs), "targets": targets,
            "idx/passage": tf.fill([n], x["idx"]["passage"]),
            "idx/query": tf.fill([n], x["idx"]["query"]),
            # All gold answers travel with every copy, for ReCoRD's EM/F1.
            "answers": tf.RaggedTensor.from_row_lengths(
                tf.tile(targets, [n]), tf.fill([n], n))}
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def wsc_text(x):
  """T5's simple WSC: mark the pronoun with asterisks, target the referent."""
  words = tf.strings.split(x["text"], sep=" ")
  i = tf.clip_by_value(tf.cast(x["span2_index"], tf.int32), 0,
                       tf.maximum(tf.size(words) - 1, 0))
  word = words[i]
  n = tf.minimum(tf.strings.length(x["span2_text"]), tf.strings.length(word))
  # Keep punctuation glued to the pronoun outside the asterisks ("them.").
  marked = tf.strings.join(["*", tf.strings.substr(word, 0, n), "*",
                            tf.strings.substr(word, n, -1)])
  text = tf.strings.reduce_join(
      tf.concat([words[:i], [marked], words[i + 1:]], 0), separator=" ")
  return {"inputs": tf.strings.join(["wsc:", text], separator=" "),
          "targets": x["span1_text"], "label": x["label"], "idx": x["idx"]}


# ---------------------------------------------------------------------------
# Postprocessors: model text -> what the metrics compare.


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def class_id(label_names):
  def postprocess(output, example=None, is_target=False):
    del example, is_target
    output = _text(output).strip()
    return label_names.index(output) if output in label_names else -1
  return postprocess


def string_to_float(output, example=None, is_target=False):
  del example, is_target
  try:
    return float(_text(output))
  except ValueError:
    return -1.0  # as T5: an unparsable prediction scores as -1


def multirc_postprocess(output, example=None, is_target=False):
  del is_target
  return {"group": (example["idx/paragraph"], example["idx/question"]),
          "value": class_id(BOOL)(output)}


def record_postprocess(output, example=None, is_target=False):
  group = (example["idx/passage"], example["idx/query"])
  if is_target:
    return {"group": group,
            "answers": [_text(a) for a in np.asarray(example["answers"])]}
  return {"group": group, "value": _text(output)}


_DETERMINERS = {"a", "an", "few", "her", "his", "each", "every", "many",
                "much", "my", "our", "some", "that", "the", "their", "these",
                "this", "those", "which", "whose", "your"}


def wsc_referent_match(prediction: str, referent: str) -> bool:
  """Whether a predicted referent names the candidate, as T5 judges it:
  lower-cased, determiners dropped, one word set containing the other."""
  def clean(s):
    s = re.sub(r"[^\w\s']", " ", s.strip().lower())
    return {w for w in s.split() if w not in _DETERMINERS}
  pred, ref = clean(prediction), clean(referent)
  if ("'" in prediction) != ("'" in referent):  # possessives must agree
    return False
  return bool(pred) and bool(ref) and (pred <= ref or ref <= pred)


def wsc_postprocess(output, example=None, is_target=False):
  if is_target:
    return int(example["label"])
  return int(wsc_referent_match(_text(output),
                                _text(example["targets_pretokenized"])))


# ---------------------------------------------------------------------------
# Registration.


def _known_splits(tfds_name):
  if tfds_name == "glue/mnli":
    return ("train", "validation_matched", "validation_mismatched",
            "test_matched", "test_mismatched")
  if tfds_name in ("glue/ax", "super_glue/axb", "super_glue/axg"):
    return ("test",)
  return ("train", "validation", "test")


def _register(name, vocabulary, tfds_name, text_steps, metric_fns,
              postprocess_fn, splits=None):
  tasks_lib.register_text_task(
      name, vocabulary,
      tasks_lib.TfdsSource(tfds_name=f"{tfds_name}:*.*.*", splits=splits,
                           known_splits=_known_splits(tfds_name)),
      text_steps, metric_fns, postprocess_fn)


def register_glue_tasks(vocabulary: seqio.Vocabulary, *,
                        rate_cap: int = DEFAULT_RATE_CAP,
                        mixing: str = mixing_lib.DEFAULT_STRATEGY,
                        temperature: float = mixing_lib.DEFAULT_TEMPERATURE
                        ) -> None:
  """Registers every GLUE/SuperGLUE task and the `glue`, `super_glue`
  mixtures, their training tasks at the rates of the `mixing` strategy
  (t5jax.data.mixing; default examples-proportional, each task's rate capped
  at rate_cap). Eval-only tasks get rate 0, but MNLI's dev sets half of
  MNLI's rate each (EVAL_ONLY)."""
  mixing_lib.check_mixing(mixing, rate_cap, temperature)
  for prefix, table in (("glue", _GLUE), ("super_glue", _SUPER_GLUE)):
    for short, (tfds_name, benchmark, keys, labels, fns, *splits) in \
        table.items():
      step = seqio.map_over_dataset(functools.partial(
          glue_text, benchmark=benchmark, keys=keys, label_names=labels))
      post = (multirc_postprocess if benchmark == "multirc"
              else class_id(labels))
      _register(f"{prefix}_{short}", vocabulary, tfds_name, [step], fns, post,
                splits[0] if splits else None)
  _register("glue_stsb", vocabulary, "glue/stsb",
            [seqio.map_over_dataset(stsb_text)],
            [metrics.pearson_and_spearman], string_to_float)
  _register("super_glue_record", vocabulary, "super_glue/record",
            [record_examples], [metrics.record_em_f1], record_postprocess)
  positives = lambda ds: ds.filter(lambda x: x["label"] == 1)  # noqa: E731
  _register("super_glue_wsc", vocabulary, "super_glue/wsc.fixed",
            [seqio.map_over_dataset(wsc_text), positives], [], None)
  _register("super_glue_wsc_eval", vocabulary, "super_glue/wsc.fixed",
            [seqio.map_over_dataset(wsc_text)], [metrics.accuracy],
            wsc_postprocess)
  for mixture, names in ((GLUE_MIXTURE, GLUE_TASKS),
                         (SUPER_GLUE_MIXTURE, SUPER_GLUE_TASKS)):
    rates = mixing_lib.mixture_rates(
        {n: TRAIN_SIZES[n] for n in names if n in TRAIN_SIZES},
        strategy=mixing, cap=rate_cap, temperature=temperature)
    mnli = mixing_lib.task_rate(TRAIN_SIZES["glue_mnli"], mixing, rate_cap,
                                temperature) / 2
    rates += [(n, mnli if n.startswith("glue_mnli_") else 0.0)
              for n in EVAL_ONLY[mixture]]
    mixing_lib.add_mixture(mixture, rates)
