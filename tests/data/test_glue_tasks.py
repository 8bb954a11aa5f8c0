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
  assert "glue_ax" not in rates  # eval-only tasks are not trained on
  data.register_glue_tasks(seqio.get_mixture_or_task("glue_cola")
                           .output_features["targets"].vocabulary,
                           rate_cap=10000)
  mix = seqio.get_mixture_or_task(data.GLUE_MIXTURE)
  rates = {t.name: mix.get_rate(t) for t in mix.tasks}
  assert rates["glue_mnli"] == 10000 and rates["glue_cola"] == 8551
  sg = seqio.get_mixture_or_task(data.SUPER_GLUE_MIXTURE)
  assert {t.name for t in sg.tasks} == {
      "super_glue_" + n for n in ("boolq", "cb", "copa", "multirc", "record",
                                  "rte", "wic", "wsc")}


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
