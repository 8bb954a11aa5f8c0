"""Summarisation, translation and SQuAD tasks (T5's formats, under tfds.testing.mock_data),
their metrics against rouge-score / sacreBLEU and hand-computed values, and the mixing
strategies of every mixture."""

import re

import numpy as np
import pytest
import sacrebleu
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from rouge_score import rouge_scorer, scoring

from t5jax import data, run
from t5jax.data import inputs
from t5jax.data import glue, metrics, mixing, text_tasks
from t5jax.errors import UsageError

LENGTHS = {"inputs": 64, "targets": 32}


@pytest.fixture(scope="module")
def registered(vocabulary):
  data.register_text_tasks(vocabulary)


def _pad_punctuation(s):  # T5's rule, restated in Python for the expected strings
  return re.sub(r"\s+", " ", re.sub(r"([!-/:-@\[-`{-~])", r" \1 ", s))


def _expected(name, raw):
  """(inputs, targets) T5 makes of a raw TFDS example of task `name`."""
  text = lambda k: raw[k].decode()  # noqa: E731
  if name in text_tasks.SUMMARIZATION:
    _, article, summary = text_tasks.SUMMARIZATION[name]
    return "summarize: " + text(article), text(summary)
  if name in text_tasks.TRANSLATION:
    _, src, tgt = text_tasks.TRANSLATION[name]
    return f"translate English to {text_tasks.LANGUAGES[tgt]}: " + text(src), text(tgt)
  inputs = re.sub(r"\s+", " ", "question: " + _pad_punctuation(text("question")) +
                  " context: " + _pad_punctuation(text("context")))
  return inputs, _pad_punctuation(raw["answers"]["text"][0].decode())


def test_every_text_task_formats_mock_examples_exactly(registered):
  with tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE):
    for name in text_tasks.TEXT_TASKS:
      task = seqio.get_mixture_or_task(name)
      examples = list(task.get_dataset(LENGTHS, split="validation", shuffle=False)
                      .as_numpy_iterator())
      raws = list(tfds.load(task.source.tfds_dataset.name, split="validation")
                  .as_numpy_iterator())
      assert len(examples) == len(raws) == 2, name
      for ex, raw in zip(examples, raws):
        inputs, targets = _expected(name, raw)
        assert ex["inputs_pretokenized"].decode() == inputs, name
        assert ex["targets_pretokenized"].decode() == targets, name
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS
        if name == "squad":  # every answer travels with the example, for the metric
          assert [a.decode() for a in ex["answers"]] == [
              _pad_punctuation(a.decode()) for a in raw["answers"]["text"]]
  assert seqio.get_mixture_or_task("squad").source.splits == ("train", "validation")


def _one(fn, **features):
  out = fn(tf.nest.map_structure(tf.constant, features))
  return {k: v.numpy() for k, v in out.items()}


def test_t5_formats_on_handwritten_examples():
  ex = _one(lambda x: text_tasks.summarize_text(x, "article", "highlights"),
            article="The cat sat. It purred.", highlights="Cat sat .\nCat purred .")
  assert ex["inputs"] == b"summarize: The cat sat. It purred."
  assert ex["targets"] == b"Cat sat .\nCat purred ."
  ex = _one(lambda x: text_tasks.translate_text(x, "en", "ro"), en="Good day.", ro="Bună ziua.")
  assert ex["inputs"].decode() == "translate English to Romanian: Good day."
  assert ex["targets"].decode() == "Bună ziua."
  ex = _one(text_tasks.squad_text, question="Who won Super Bowl 50?",
            context="The Denver Broncos (AFC) won,  24-10.", id="q1",
            answers={"text": ["Denver Broncos", "the Broncos."], "answer_start": [4, 0]})
  # T5's squad preprocessor: spaces around punctuation, whitespace runs collapsed (a
  # trailing space stays, as in T5).
  assert ex["inputs"].decode() == ("question: Who won Super Bowl 50 ? context: The Denver "
                                   "Broncos ( AFC ) won , 24 - 10 . ")
  assert ex["targets"] == b"Denver Broncos"
  assert ex["answers"].tolist() == [b"Denver Broncos", b"the Broncos . "]
  assert text_tasks.qa_postprocess(b"x", {"answers": ex["answers"]}, is_target=True) == [
      "Denver Broncos", "the Broncos . "]
  assert text_tasks.qa_postprocess(b"Denver", {}) == "Denver"


# ---------------------------------------------------------------------------
# Metrics.


def test_rouge_is_t5s_and_rouge_scores():
  # Hand-computed: unigrams 2/3 shared, bigrams 1/2, LCS 2 of 3 -> F 66.67 / 50 / 66.67.
  got = metrics.rouge(["the cat sat"], ["the cat ran"])
  assert got == pytest.approx({"rouge1": 200 / 3, "rouge2": 50.0, "rougeLsum": 200 / 3})
  # rougeLsum sees sentences at " . " (T5 adds the newlines): the two sentences of the
  # prediction, swapped, still match; plain LCS over the whole text matches half.
  swapped = metrics.rouge(["a b . c d ."], ["c d . a b ."], score_keys=("rougeLsum", "rougeL"))
  assert swapped == pytest.approx({"rougeLsum": 100.0, "rougeL": 50.0})
  # Against rouge-score directly: same scorer, bootstrap and seed.
  targets = ["the quick brown fox . it jumped over the dog .", "a b c d", "one two three"]
  preds = ["a quick brown fox . jumped over a dog .", "a b d c", "four five"]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
  aggregator = scoring.BootstrapAggregator()
  for t, p in zip(targets, preds):
    aggregator.add_scores(scorer.score(t.replace(" . ", " .\n"), p.replace(" . ", " .\n")))
  np.random.seed(0)
  reference = {k: 100 * v.mid.fmeasure for k, v in aggregator.aggregate().items()}
  state = np.random.get_state()
  assert metrics.rouge(targets, preds) == pytest.approx(reference)
  assert np.array_equal(np.random.get_state()[1], state[1])  # global generator untouched


def test_bleu_is_t5s_sacrebleu():
  # Hand-computed: n-gram precisions 5/6, 3/5, 2/4, 1/3, same length (no brevity penalty).
  got = metrics.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])["bleu"]
  assert got == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-4)
  refs = ["Das Haus ist klein.", "Er sagte: «Nein!»", "Guten Morgen, Welt"]
  hyps = ["Das Haus ist klein.", "Er sagte «Nein»!", "Guten Abend Welt"]
  expected = sacrebleu.corpus_bleu(hyps, [refs], smooth_method="exp", tokenize="intl").score
  assert metrics.bleu(refs, hyps)["bleu"] == pytest.approx(expected)
  assert metrics.bleu([[r, r] for r in refs], hyps)["bleu"] == pytest.approx(expected)
  assert metrics.bleu(refs, refs)["bleu"] == pytest.approx(100.0)


def test_squad_and_exact_match():
  got = metrics.squad([["Denver Broncos", "Broncos"], ["Denver Broncos"]],
                      ["the Broncos!", "Denver"])
  # EM: 'broncos' == 'broncos' after normalisation; 0. F1: 1; 2 * (1 * 1/2) / (3/2) = 2/3.
  assert got == pytest.approx({"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
  assert metrics.squad([b"Paris", "red b"], [b"paris.", "b"]) == pytest.approx(
      {"em": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
  assert metrics.exact_match(["cat", b"dog", "bird"], ["cat", "dog", "Bird"]) == pytest.approx(
      {"exact_match": 200 / 3})


# ---------------------------------------------------------------------------
# Mixing strategies.


@pytest.mark.parametrize("strategy,cap,temperature,rate", [
    ("proportional", 2 ** 19, 1.0, lambda n: min(n, 2 ** 19)),
    ("proportional", 1000, 1.0, lambda n: min(n, 1000)),
    ("equal", 2 ** 19, 1.0, lambda n: 1.0),
    ("temperature", 2 ** 19, 2.0, lambda n: min(n, 2 ** 19) ** 0.5),
    ("temperature", 10 ** 5, 8.0, lambda n: min(n, 10 ** 5) ** (1 / 8)),
])
def test_every_mixture_under_every_strategy(vocabulary, strategy, cap, temperature, rate):
  inputs.register_tfds_tasks(vocabulary, mixing=strategy, mixing_cap=cap,
                          mixing_temperature=temperature)
  sizes = {**glue.TRAIN_SIZES, **text_tasks.TRAIN_SIZES}
  for name in (glue.GLUE_MIXTURE, glue.SUPER_GLUE_MIXTURE, *text_tasks.MIXTURES):
    mix = seqio.get_mixture_or_task(name)
    rates = {t.name: mix.get_rate(t) for t in mix.tasks}
    for task, value in rates.items():
      if task in sizes:
        assert value == pytest.approx(rate(sizes[task])), (name, task)
      elif task.startswith("glue_mnli_"):  # MNLI's dev sets: half MNLI's rate
        assert value == pytest.approx(rate(sizes["glue_mnli"]) / 2)
      else:  # only evaluated
        assert value == 0 and task in glue.EVAL_ONLY[name], task
  assert set(rates) == set(text_tasks.MIXTURES["large_translation"])
  inputs.register_tfds_tasks(vocabulary)  # the defaults again, for other tests


def test_temperature_mixture_samples_at_its_rates():
  """A mixture of two tasks of 9000 and 1000 examples at T=2 samples them 3:1
  (sqrt(9000) : sqrt(1000)); examples-proportional would be 9:1, equal 1:1."""
  vocabulary = seqio.PassThroughVocabulary(size=10)
  features = {"targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32)}
  for i in (0, 1):
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None, i=i: tf.data.Dataset.from_tensors(
            {"targets": tf.constant([i], tf.int32)}).repeat(), splits=("train",))
    data.tasks.register_task(f"test_mix_{i}", source=source, output_features=features)
  for strategy, share in (("temperature", 0.75),):
    mixing.add_mixture("test_mix", mixing.mixture_rates(
        {"test_mix_0": 9000, "test_mix_1": 1000}, strategy=strategy, temperature=2.0))
    ds = seqio.get_mixture_or_task("test_mix").get_dataset(
        {"targets": 1}, split="train", shuffle=False, seed=0)
    drawn = np.array([ex["targets"][0] for ex in ds.take(2000).as_numpy_iterator()])
    assert np.mean(drawn == 0) == pytest.approx(share, abs=0.03), strategy
  seqio.MixtureRegistry.remove("test_mix")


def test_bad_mixing_settings_name_the_field(vocabulary):
  with pytest.raises(UsageError, match="DataConfig.mixing='tempreature'"):
    mixing.check_mixing("tempreature", 10, 1.0)
  with pytest.raises(UsageError, match="mixing_temperature=0"):
    run.prepare_task(run.DataConfig(task="glue", vocabulary=vocabulary.sentencepiece_model_file,
                                    mixing="temperature", mixing_temperature=0))


def test_tasks_lists_the_text_tasks_and_mixtures():
  entries = {e["name"]: e for e in run.list_tasks()}
  for name in (*text_tasks.TEXT_TASKS, "local_pairs"):
    assert entries[name]["kind"] == "task", name
  assert entries["squad"]["source"].startswith("TFDS squad/v1.1")
  assert sorted(entries["large_supervised"]["tasks"]) == ["cnn_dailymail", "wmt15_enfr",
                                                          "wmt_t2t_ende"]
