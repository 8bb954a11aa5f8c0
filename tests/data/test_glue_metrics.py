"""GLUE/SuperGLUE metrics on hand-computed cases (values in percent)."""

import pytest

from t5jax.data import metrics


def test_accuracy_and_f1():
  assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == {"accuracy": 50.0}
  # tp=2, fp=1, fn=1 -> F1 = 2*2 / (2*2 + 1 + 1) = 2/3.
  out = metrics.f1_and_accuracy([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
  assert out["f1"] == pytest.approx(200 / 3)
  assert out["accuracy"] == pytest.approx(60.0)


def test_matthews_corrcoef():
  # tp=1 tn=2 fp=0 fn=1: (1*2 - 0*1) / sqrt(1 * 2 * 2 * 3) = 2 / sqrt(12).
  out = metrics.matthews_corrcoef([1, 1, 0, 0, 0], [1, 0, 0, 0, 0])
  assert out["matthews_corrcoef"] == pytest.approx(
      100 * (1 * 3 - 0 * 1) / (1 * 2 * 3 * 4) ** 0.5)
  assert metrics.matthews_corrcoef([0, 1, 2], [0, 1, 2]) == {
      "matthews_corrcoef": 100.0}
  assert metrics.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == {
      "matthews_corrcoef": 0.0}  # constant predictions


def test_mean_multiclass_f1():
  # class 0: F1 1; class 1: tp 1 fp 1 -> 2/3; class 2: 0.
  out = metrics.mean_multiclass_f1(3)([0, 1, 2, 0], [0, 1, 1, 0])
  assert out["mean_3class_f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_pearson_and_spearman():
  out = metrics.pearson_and_spearman([1, 2, 3, 4], [1, 3, 2, 4])
  # Deviations (-1.5,-.5,.5,1.5) vs (-1.5,.5,-.5,1.5): cov 4, var 5 -> 0.8;
  # ranks differ by (0,1,-1,0): 1 - 6*2 / (4*15) = 0.8.
  assert out["pearson_corrcoef"] == pytest.approx(80.0)
  assert out["spearman_corrcoef"] == pytest.approx(80.0)


def test_multirc_f1a_and_exact_match():
  group = lambda q: {"group": (0, q)}  # noqa: E731
  targets = [{**group(1), "value": 1}, {**group(1), "value": 0},
             {**group(2), "value": 1}, {**group(2), "value": 0}]
  preds = [{**group(1), "value": 1}, {**group(1), "value": 0},
           {**group(2), "value": 0}, {**group(2), "value": 0}]
  out = metrics.multirc_f1a_and_em(targets, preds)
  assert out["exact_match"] == 50.0  # question 1 all right, question 2 not
  assert out["f1a"] == pytest.approx(200 / 3)  # tp 1, fn 1


def test_record_em_f1_takes_best_answer_and_merges_duplicates():
  gold = {"group": (0, 0), "answers": ["Obama", "Barack Obama"]}
  # The same query twice (one copy per answer): scored once.
  targets = [gold, gold]
  out = metrics.record_em_f1(targets, [{"group": (0, 0), "value": "the "
                                         "Barack Obama!"}] * 2)
  assert out == {"em": 100.0, "f1": 100.0}
  out = metrics.record_em_f1([gold], [{"group": (0, 0),
                                       "value": "Obama president"}])
  # vs "Obama": P 1/2, R 1 -> 2/3; vs "Barack Obama": 1/2. Max 2/3.
  assert out["em"] == 0.0 and out["f1"] == pytest.approx(200 / 3)


def test_squad_normalisation():
  assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
