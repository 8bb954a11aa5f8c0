"""GLUE / SuperGLUE / C4 tasks under tfds.testing.mock_data (offline), the
exact T5 text formats on hand-written examples, and the mixtures."""

import re

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5jax import data
from t5jax.data import glue

LENGTHS = {"inputs": 128, "targets": 16}
# Task -> input prefix up to the first field, in T5's format.
PREFIX = {
    "glue_cola": "cola sentence: ", "glue_sst2": "sst2 sentence: ",
    "glue_mrpc": "mrpc sentence1: ", "glue_qqp": "qqp question1: ",
    "glue_stsb": "stsb sentence1: ", "glue_mnli": "mnli hypothesis: ",
    "glue_mnli_matched": "mnli hypothesis: ",
    "glue_mnli_mismatched": "mnli hypothesis: ",
    "glue_qnli": "qnli question: ", "glue_rte": "rte sentence1: ",
    "glue_wnli": "wnli sentence1: ", "glue_ax": "mnli hypothesis: ",
    "super_glue_boolq": "boolq passage: ", "super_glue_cb": "cb hypothesis: ",
    "super_glue_copa": "copa choice1: ",
    "super_glue_multirc": "multirc question: ",
    "super_glue_record": "record query: ",
    "super_glue_rte": "rte hypothesis: ", "super_glue_wic": "wic sentence1: ",
    "super_glue_axb": "rte sentence1: ", "super_glue_axg": "rte hypothesis: ",
    "super_glue_wsc": "wsc: ", "super_glue_wsc_eval": "wsc: ",
}
LABELS = {
    "glue_cola": {"acceptable", "unacceptable"},
    "glue_sst2": {"positive", "negative"},
    "glue_mrpc": {"equivalent", "not_equivalent"},
    "glue_qqp": {"duplicate", "not_duplicate"},
    "glue_qnli": {"entailment", "not_entailment"},
    "glue_rte": {"entailment", "not_entailment"},
    "glue_wnli": {"entailment", "not_entailment"},
    "super_glue_copa": {"choice1", "choice2"},
    "super_glue_cb": {"entailment", "contradiction", "neutral"},
}
TEST_ONLY = {"glue_ax", "super_glue_axb", "super_glue_axg"}


@pytest.fixture(scope="module")
def registered(vocabulary):
  data.register_glue_tasks(vocabulary)
  data.register_c4_task(vocabulary)


@pytest.fixture
def mock_tfds():
  with tfds.testing.mock_data(num_examples=4,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield


def test_task_names_cover_the_benchmarks():
  assert set(PREFIX) == set(data.GLUE_TASKS + data.SUPER_GLUE_TASKS)


@pytest.mark.parametrize("name", sorted(PREFIX))
def test_every_task_formats_mock_examples(name, registered, mock_tfds):
  task = seqio.get_mixture_or_task(name)
  split = "test" if name in TEST_ONLY else "validation"
  examples = list(task.get_dataset(LENGTHS, split=split, shuffle=False)
                  .take(4).as_numpy_iterator())
  assert examples
  for ex in examples:
    inputs = ex["inputs_pretokenized"].decode()
    targets = ex["targets_pretokenized"].decode()
    assert inputs.startswith(PREFIX[name]), inputs
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS
    if name in LABELS:
      assert targets in LABELS[name]
    elif name == "glue_stsb":
      assert re.fullmatch(r"[0-5]\.[02468]", targets)
    elif name.startswith("glue_mnli") or name == "glue_ax":
      assert targets in glue.NLI3 + ("<unk>",)
    elif name in ("super_glue_wsc", "super_glue_wsc_eval"):
      assert "*" in inputs and targets
    elif name != "super_glue_record":
      assert targets in ("True", "False", "entailment", "not_entailment",
                         "<unk>")


def test_c4_examples_are_span_corrupted(registered, mock_tfds, vocabulary):
  task = seqio.get_mixture_or_task(data.C4_TASK)
  ds = task.get_dataset({"inputs": 64, "targets": 16}, split="train",
                        shuffle=False)
  sentinel = data.sentinel_id(vocabulary)
  examples = list(ds.take(3).as_numpy_iterator())
  assert examples
  for ex in examples:
    inputs, targets = ex["inputs"].tolist(), ex["targets"].tolist()
    assert inputs[-1] == 1 and targets[-1] == 1  # EOS
    assert targets[0] == sentinel and sentinel in inputs
    assert len(inputs) <= 64 and len(targets) <= 16


def test_c4_and_glue_mixture_make_batches(registered, mock_tfds):
  batch = next(data.make_batch_iterator(
      data.C4_TASK, split="train", sequence_length={"inputs": 64,
                                                    "targets": 16},
      batch_size=2, seed=0, start_step=0, process_index=0, process_count=1))
  assert batch["encoder_input_tokens"].shape == (2, 64)
  assert (batch["encoder_segment_ids"] > 0).any()
  batch = next(data.make_batch_iterator(
      data.GLUE_MIXTURE, split="train", sequence_length=LENGTHS,
      batch_size=2, seed=0, start_step=0, process_index=0, process_count=1))
  assert batch["decoder_target_tokens"].shape == (2, 16)


def test_mixture_rates_are_capped_proportional(registered):
  mix = seqio.get_mixture_or_task(data.GLUE_MIXTURE)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates["glue_sst2"] == 67349 and rates["glue_wnli"] == 635
  # Eval-only: MNLI's dev sets (half MNLI's rate each, for the validation loss;
  # they have no train split) and AX (rate 0, as in T5).
  assert rates["glue_mnli"] == 392702 and rates["glue_ax"] == 0
  assert rates["glue_mnli_matched"] == 392702 / 2
  assert rates["glue_mnli_mismatched"] == 392702 / 2
  assert "train" not in seqio.get_mixture_or_task("glue_mnli_matched").splits
  data.register_glue_tasks(seqio.get_mixture_or_task("glue_cola")
                           .output_features["targets"].vocabulary,
                           rate_cap=10000)
  mix = seqio.get_mixture_or_task(data.GLUE_MIXTURE)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates["glue_mnli"] == 10000 and rates["glue_cola"] == 8551
  sg = seqio.get_mixture_or_task(data.SUPER_GLUE_MIXTURE)
  rates = {t.name: sg.get_rate(t) for t in sg.tasks}
  assert set(rates) == {
      "super_glue_" + n for n in ("boolq", "cb", "copa", "multirc", "record",
                                  "rte", "wic", "wsc", "wsc_eval", "axb",
                                  "axg")}
  assert rates["super_glue_wsc_eval"] == rates["super_glue_axb"] == 0


# ---------------------------------------------------------------------------
# What the mixtures score, and T5's benchmark averages.


def _scored(task, split):
  from t5jax import scoring
  return scoring.scored_tasks(task, split)


def test_glue_mixture_scores_both_mnli_dev_sets(registered, mock_tfds):
  scored, skipped = _scored(data.GLUE_MIXTURE, "validation")
  assert set(scored) == {"glue_" + n for n in (
      "cola", "sst2", "mrpc", "qqp", "stsb", "mnli_matched", "mnli_mismatched",
      "qnli", "rte", "wnli")}
  assert set(skipped) == {"glue_mnli", "glue_ax"}
  assert "glue_mnli_matched and glue_mnli_mismatched" in skipped["glue_mnli"]
  assert "hidden labels" in skipped["glue_ax"]


def test_diagnostics_are_scored_only_with_labels(registered, mock_tfds):
  # TFDS glue/ax has only a test split, with labels -1: never scored.
  assert _scored("glue_ax", "test")[0] == []
  assert "hides the labels" in _scored("glue_ax", "test")[1]["glue_ax"]
  # AX-b and AX-g have labels in their test split: scored there, and only
  # they are on SuperGLUE's test split.
  scored, skipped = _scored(data.SUPER_GLUE_MIXTURE, "test")
  assert scored == ["super_glue_axb", "super_glue_axg"]
  assert all("hides the labels" in why for why in skipped.values())
  scored, skipped = _scored(data.SUPER_GLUE_MIXTURE, "validation")
  assert "super_glue_wsc_eval" in scored and "super_glue_axb" not in scored
  assert "eval_split='test'" in skipped["super_glue_axb"]


def test_benchmark_average_is_t5s():
  """Within a task first (MRPC (F1 + acc) / 2, MNLI m + mm), then across tasks;
  WNLI and AX are reported but not averaged."""
  results = {
      "glue_cola": {"matthews_corrcoef": 50.0},
      "glue_sst2": {"accuracy": 90.0},
      "glue_mrpc": {"f1": 90.0, "accuracy": 80.0},
      "glue_qqp": {"f1": 70.0, "accuracy": 90.0},
      "glue_stsb": {"pearson_corrcoef": 88.0, "spearman_corrcoef": 86.0},
      "glue_mnli_matched": {"accuracy": 84.0},
      "glue_mnli_mismatched": {"accuracy": 86.0},
      "glue_qnli": {"accuracy": 91.0},
      "glue_rte": {"accuracy": 71.0},
      "glue_wnli": {"accuracy": 0.0},
      "glue_ax": {"matthews_corrcoef": 0.0},
  }
  tasks = [50, 90, 85, 80, 87, 85, 91, 71]
  assert glue.benchmark_average("glue", results) == pytest.approx(
      np.mean(tasks))
  # Other mixtures: every task counts, each by the mean of its metrics.
  assert glue.benchmark_average("mine", {"a": {"x": 1.0, "y": 3.0},
                                         "b": {"z": 5.0}}) == 3.5
  assert glue.benchmark_average("glue", {}) is None
  results["glue_stsb"] = {"pearson_corrcoef": np.nan,
                          "spearman_corrcoef": np.nan}  # constant predictions
  tasks[4] = 0
  assert glue.benchmark_average("glue", results) == pytest.approx(
      np.mean(tasks))


def test_glue_mixture_eval_reports_tasks_and_average(registered, mock_tfds,
                                                     vocabulary, capsys):
  """scoring.seqio_metrics on the glue mixture (a tiny random model): MNLI's dev
  sets are scored, AX and glue_mnli are skipped with a line each, and
  eval/glue/average is the mixture's score."""
  import jax
  from t5jax import run, scoring
  from t5jax.config import get_config
  from t5jax.decoding import DecodeConfig
  from t5jax.model import init_params
  model = get_config("tiny", vocab_size=512)
  params = init_params(model, jax.random.PRNGKey(0))
  cfg = run.DataConfig(task=data.GLUE_MIXTURE, inputs_length=64,
                       targets_length=4, eval_split="validation")
  metrics = scoring.seqio_metrics(model, params, cfg, data.GLUE_MIXTURE, 4,
                              DecodeConfig(max_decode_length=4), 4)
  assert {"eval/glue_mnli_matched/accuracy",
          "eval/glue_mnli_mismatched/accuracy", "eval/glue_mrpc/f1",
          "eval/glue/average"} <= set(metrics)
  assert np.isfinite(metrics["eval/glue/average"])  # even with STS-B's NaN
  assert not any(k.startswith(("eval/glue_ax/", "eval/glue_mnli/"))
                 for k in metrics)
  out = capsys.readouterr().out
  assert "Not scoring glue_ax on 'validation'" in out
  assert "Not scoring glue_mnli on 'validation'" in out
  assert "glue__scored_validation" not in seqio.MixtureRegistry.names()


# ---------------------------------------------------------------------------
# Exact formats on hand-written examples.


def _one(fn, **features):
  return {k: (v.numpy().decode() if v.dtype == tf.string and v.shape.rank == 0
              else v.numpy())
          for k, v in fn({k: tf.constant(v) for k, v in features.items()})
          .items()}


def test_glue_text_formats():
  ex = _one(lambda x: glue.glue_text(x, "sst2", ("sentence",),
                                     ("negative", "positive")),
            sentence="it is a charming film", label=1, idx=3)
  assert ex["inputs"] == "sst2 sentence: it is a charming film"
  assert ex["targets"] == "positive"
  ex = _one(lambda x: glue.glue_text(x, "mnli", ("hypothesis", "premise"),
                                     glue.NLI3),
            hypothesis="A man sleeps.", premise="A man runs.", label=-1,
            idx=0)
  assert ex["inputs"] == "mnli hypothesis: A man sleeps. premise: A man runs."
  assert ex["targets"] == "<unk>"  # hidden test label


@pytest.mark.parametrize("score,text", [(3.76, "3.8"), (0.0, "0.0"),
                                        (5.0, "5.0"), (1.11, "1.2"),
                                        (2.29, "2.2")])
def test_stsb_rounds_to_nearest_fifth(score, text):
  ex = _one(glue.stsb_text, sentence1="a", sentence2="b", label=score, idx=0)
  assert ex["inputs"] == "stsb sentence1: a sentence2: b"
  assert ex["targets"] == text


def test_multirc_strips_html():
  fn = lambda x: glue.glue_text(  # noqa: E731
      {**x, "idx": {"paragraph": x["p"], "question": x["q"],
                    "answer": x["a"]}},
      "multirc", ("question", "answer", "paragraph"), glue.BOOL)
  ex = _one(fn, question="Who?", answer="Ann", label=1, p=0, q=1, a=2,
            paragraph="<b>Sent 1: </b>Ann ran.<br><b>Sent 2: </b>Bo sat.")
  assert ex["inputs"] == ("multirc question: Who? answer: Ann paragraph: "
                          "Sent 1: Ann ran. Sent 2: Bo sat.")
  assert ex["targets"] == "True" and ex["idx/question"] == 1


def test_record_one_example_per_answer():
  ds = tf.data.Dataset.from_tensors({
      "passage": "Obama visits Paris.\n@highlight\nHe met Macron",
      "query": "@placeholder met Macron", "entities": ["Obama", "Paris"],
      "answers": ["Obama", "Barack Obama"],
      "idx": {"passage": 7, "query": 9}})
  exs = list(glue.record_examples(ds).as_numpy_iterator())
  assert [e["targets"] for e in exs] == [b"Obama", b"Barack Obama"]
  assert exs[0]["inputs"].decode() == (
      "record query: @placeholder met Macron entities: Obama, Paris "
      "passage: Obama visits Paris. He met Macron")
  assert exs[1]["answers"].tolist() == [b"Obama", b"Barack Obama"]


def test_wsc_marks_the_pronoun():
  ex = _one(glue.wsc_text,
            text="The city councilmen refused the demonstrators a permit "
                 "because they feared violence.",
            span1_index=0, span2_index=9, span1_text="The city councilmen",
            span2_text="they", label=1, idx=0)
  assert ex["inputs"] == ("wsc: The city councilmen refused the "
                          "demonstrators a permit because *they* feared "
                          "violence.")
  assert ex["targets"] == "The city councilmen"
  assert glue.wsc_referent_match("the councilmen", "The city councilmen")
  assert not glue.wsc_referent_match("demonstrators", "The city councilmen")


def test_postprocessors():
  assert glue.class_id(("negative", "positive"))(b"positive") == 1
  assert glue.class_id(("negative", "positive"))(b"great") == -1
  assert glue.string_to_float(b"3.8") == pytest.approx(3.8)
  assert glue.string_to_float(b"high") == -1.0
  target = glue.record_postprocess(
      b"Obama", {"idx/passage": 1, "idx/query": 2,
                 "answers": np.array([b"Obama", b"Barack Obama"])},
      is_target=True)
  assert target == {"group": (1, 2), "answers": ["Obama", "Barack Obama"]}
