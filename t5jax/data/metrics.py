"""The metrics T5 reports: GLUE and SuperGLUE (numpy/scipy), SQuAD, and the
generation metrics ROUGE (rouge-score) and BLEU (sacreBLEU) with T5's settings.

Each metric has seqio's signature metric(targets, predictions) -> {name:
value} with values in percent, as T5 reports them. Targets and predictions
are what the task's postprocessor returns: class ids for classification,
floats for STS-B, {"group": ..., "value": ...} dicts for the grouped
metrics (MultiRC, ReCoRD) so answers can be grouped per question.
"""

import collections
import re
import string

import numpy as np
import scipy.stats


def accuracy(targets, predictions):
  t, p = np.asarray(targets), np.asarray(predictions)
  return {"accuracy": 100.0 * float(np.mean(t == p))}


def _binary_f1(t, p, positive=1):
  tp = np.sum((p == positive) & (t == positive))
  fp = np.sum((p == positive) & (t != positive))
  fn = np.sum((p != positive) & (t == positive))
  # No positives predicted nor present: F1 is undefined; 0 like sklearn.
  return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def f1(targets, predictions):
  """Binary F1 of the positive class (1), as for MRPC and QQP."""
  return {"f1": 100.0 * _binary_f1(np.asarray(targets),
                                   np.asarray(predictions))}


def f1_and_accuracy(targets, predictions):
  return {**f1(targets, predictions), **accuracy(targets, predictions)}


def mean_multiclass_f1(num_classes):
  """Unweighted mean of per-class F1 (macro F1), as for CB."""
  def metric(targets, predictions):
    t, p = np.asarray(targets), np.asarray(predictions)
    scores = [_binary_f1(t, p, c) for c in range(num_classes)]
    return {"mean_%dclass_f1" % num_classes: 100.0 * float(np.mean(scores))}
  return metric


def matthews_corrcoef(targets, predictions):
  """MCC over all classes (Gorodkin's multiclass form; binary MCC for 2)."""
  t, p = np.asarray(targets), np.asarray(predictions)
  classes = np.union1d(t, p)
  c = np.array([[np.sum((t == i) & (p == j)) for j in classes]
                for i in classes], dtype=np.float64)
  n, correct = c.sum(), np.trace(c)
  t_sum, p_sum = c.sum(1), c.sum(0)
  cov_tp = correct * n - t_sum @ p_sum
  denom = np.sqrt((n * n - p_sum @ p_sum) * (n * n - t_sum @ t_sum))
  return {"matthews_corrcoef": 100.0 * (0.0 if denom == 0
                                        else float(cov_tp / denom))}


def pearson_and_spearman(targets, predictions):
  t = np.asarray(targets, np.float64)
  p = np.asarray(predictions, np.float64)
  return {"pearson_corrcoef": 100.0 * float(scipy.stats.pearsonr(t, p)[0]),
          "spearman_corrcoef": 100.0 * float(scipy.stats.spearmanr(t, p)[0])}


def _groups(targets, predictions):
  grouped = collections.OrderedDict()
  for t, p in zip(targets, predictions):
    grouped.setdefault(_key(t["group"]), []).append((t["value"], p["value"]))
  return grouped


def _key(group):
  return tuple(np.asarray(group).ravel().tolist())


def multirc_f1a_and_em(targets, predictions):
  """MultiRC: F1 over all answer options (F1a), and exact match = share of
  questions whose every answer option is classified correctly."""
  t = np.array([x["value"] for x in targets])
  p = np.array([x["value"] for x in predictions])
  em = [all(a == b for a, b in g) for g in _groups(targets,
                                                   predictions).values()]
  return {"f1a": 100.0 * _binary_f1(t, p),
          "exact_match": 100.0 * float(np.mean(em))}


# SQuAD-style answer normalisation, as T5 (and the ReCoRD script) uses.
def normalize_answer(text: str) -> str:
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(gold: str, pred: str) -> float:
  g, p = normalize_answer(gold).split(), normalize_answer(pred).split()
  common = collections.Counter(g) & collections.Counter(p)
  same = sum(common.values())
  if same == 0:
    return 0.0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(golds: list[list[str]], preds: list[str]) -> dict:
  """Max over gold answers of exact match and token F1, averaged."""
  em = [max(float(normalize_answer(g) == normalize_answer(p)) for g in gs)
        for gs, p in zip(golds, preds)]
  f = [max(_token_f1(g, p) for g in gs) for gs, p in zip(golds, preds)]
  return {"em": 100.0 * float(np.mean(em)), "f1": 100.0 * float(np.mean(f))}


def record_em_f1(targets, predictions):
  """ReCoRD: one prediction per query (duplicates of a query made for its
  several answers are merged), scored against all its gold answers."""
  golds, preds = collections.OrderedDict(), {}
  for t, p in zip(targets, predictions):
    key = _key(t["group"])
    golds.setdefault(key, set()).update(t["answers"])
    preds.setdefault(key, p["value"])
  keys = list(golds)
  return squad_em_f1([sorted(golds[k]) for k in keys], [preds[k] for k in keys])


def squad(targets, predictions):
  """SQuAD v1.1 (T5's metrics.squad): {"em", "f1"} in percent, each the max
  over a question's gold answers (targets: lists of strings), with SQuAD's
  answer normalisation (normalize_answer)."""
  return squad_em_f1([[_text(t)] if isinstance(t, (str, bytes)) else
                      [_text(a) for a in t] for t in targets],
                     [_text(p) for p in predictions])


def exact_match(targets, predictions):
  """Percent of predictions equal to their target string (T5's
  sequence_accuracy): for free-text tasks whose answer is one exact string."""
  same = [_text(t) == _text(p) for t, p in zip(targets, predictions)]
  return {"exact_match": 100.0 * float(np.mean(same)) if same else 0.0}


ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum")


def _rouge_sentences(summary: str) -> str:
  # As T5 (_prepare_summary_rouge): a newline after each " . " so rougeLsum,
  # which splits summaries on newlines, sees sentences in space-tokenised text.
  return summary.replace(" . ", " .\n")


def rouge(targets, predictions, score_keys=ROUGE_KEYS, seed: int = 0):
  """ROUGE F-measures in percent as T5 reports them (t5.evaluation.metrics.rouge):
  rouge-score's RougeScorer (no stemming), sentences split at " . " for
  rougeLsum, and the middle (median) of a 1000-sample BootstrapAggregator.

  T5's bootstrap draws from numpy's global generator, so its numbers vary
  from run to run in the last digits; here the draw is seeded (`seed`) and
  the global generator's state restored, so an eval is reproducible.
  """
  from rouge_score import rouge_scorer, scoring  # noqa: PLC0415
  scorer = rouge_scorer.RougeScorer(rouge_types=list(score_keys))
  aggregator = scoring.BootstrapAggregator()
  for target, prediction in zip(targets, predictions):
    aggregator.add_scores(scorer.score(
        target=_rouge_sentences(_text(target)),
        prediction=_rouge_sentences(_text(prediction))))
  state = np.random.get_state()
  np.random.seed(seed)
  try:
    result = aggregator.aggregate()
  finally:
    np.random.set_state(state)
  return {key: 100.0 * float(result[key].mid.fmeasure) for key in score_keys}


def bleu(targets, predictions, tokenize: str = "intl"):
  """Corpus BLEU as T5 computes it (t5.evaluation.metrics.bleu): sacreBLEU's
  corpus_bleu with exponential smoothing, the "intl" (Unicode-aware
  punctuation) tokeniser, case-sensitive, no effective order. targets: one
  reference string per prediction, or a list of references each."""
  import sacrebleu  # noqa: PLC0415
  if targets and isinstance(targets[0], (list, tuple)):
    refs = [[_text(r) for r in t] for t in targets]
    # sacreBLEU wants one stream per reference position.
    refs = [list(stream) for stream in zip(*refs)]
  else:
    refs = [[_text(t) for t in targets]]
  score = sacrebleu.corpus_bleu(
      [_text(p) for p in predictions], refs, smooth_method="exp",
      smooth_value=0.0, force=False, lowercase=False, tokenize=tokenize,
      use_effective_order=False)
  return {"bleu": float(score.score)}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
