"""T5's text-to-text generation tasks over TFDS: summarisation, translation,
question answering, and T5's mixtures of them.

Formats follow T5 (t5.data.preprocessors summarize / translate / squad):
  - summarize: "summarize: <article>" -> the summary. CNN/DailyMail
    (cnn_dailymail 3.*: article -> highlights, which TFDS joins with
    newlines) as T5; XSum (xsum 1.*: document -> summary, one sentence) in
    the same format (not a T5 task; a common second benchmark);
  - translate: "translate English to German: <en>" -> <de>, the language
    names in English; TFDS wmt_t2t_translate/de-en (T5's En-De: the
    Transformer paper's data, newstest2013 validation), wmt15_translate/fr-en
    (the En-Fr of the T5 paper; wmt14 fr-en is registered too), and
    wmt16_translate/ro-en;
  - squad (squad/v1.1 3.*): "question: <q> context: <c>" -> the first
    answer, with T5's spaces around every ASCII punctuation mark (in the
    question, context and answers) and runs of whitespace collapsed; the
    eval target is every gold answer, scored by EM and F1 maxed over them.
Metrics (t5jax.data.metrics): ROUGE-1/2/Lsum, sacreBLEU, SQuAD EM/F1, with
T5's settings.

Mixtures (T5's, t5.data.mixtures): `large_supervised` = En-De, En-Fr and
CNN/DailyMail; `large_translation` = En-De and En-Fr. T5 registered each
as *_equal and/or *_proportional; here the strategy is DataConfig.mixing
(t5jax.data.mixing) over the training sizes in TRAIN_SIZES.
"""

import functools

import seqio
import tensorflow as tf

from t5jax.data import metrics
from t5jax.data import mixing as mixing_lib
from t5jax.data import tasks as tasks_lib

# English names of the languages, as T5 takes them from babel.
LANGUAGES = {"en": "English", "de": "German", "fr": "French",
             "ro": "Romanian"}

# name -> (TFDS name with version pattern, kind, kind's arguments)
SUMMARIZATION = {
    "cnn_dailymail": ("cnn_dailymail:3.*.*", "article", "highlights"),
    "xsum": ("xsum:1.*.*", "document", "summary"),
}
TRANSLATION = {  # name -> (TFDS name, source language, target language)
    "wmt_t2t_ende": ("wmt_t2t_translate/de-en:1.*.*", "en", "de"),
    "wmt14_enfr": ("wmt14_translate/fr-en:1.*.*", "en", "fr"),
    "wmt15_enfr": ("wmt15_translate/fr-en:1.*.*", "en", "fr"),
    "wmt16_enro": ("wmt16_translate/ro-en:1.*.*", "en", "ro"),
}
SQUAD_TASK, SQUAD_TFDS = "squad", "squad/v1.1:3.*.*"
TEXT_TASKS = (*SUMMARIZATION, *TRANSLATION, SQUAD_TASK)

# Training-set sizes TFDS records, for the mixing rates (never read at
# registration).
TRAIN_SIZES = {
    "cnn_dailymail": 287113, "xsum": 203577, "wmt_t2t_ende": 4592289,
    "wmt14_enfr": 40836715, "wmt15_enfr": 40853298, "wmt16_enro": 610320,
    "squad": 87599,
}
MIXTURES = {
    "large_supervised": ("wmt_t2t_ende", "wmt15_enfr", "cnn_dailymail"),
    "large_translation": ("wmt_t2t_ende", "wmt15_enfr"),
}


# ---------------------------------------------------------------------------
# Text formats (tf.data maps over raw TFDS examples).


def summarize_text(x, article_key, summary_key):
  return {"inputs": tf.strings.join(["summarize:", x[article_key]], " "),
          "targets": x[summary_key]}


def translate_text(x, source, target):
  prefix = f"translate {LANGUAGES[source]} to {LANGUAGES[target]}: "
  return {"inputs": tf.strings.join([prefix, x[source]]),
          "targets": x[target]}


def pad_punctuation(text):
  """T5's _pad_punctuation: a space either side of each ASCII punctuation
  mark, then every run of whitespace made one space (ends keep theirs)."""
  text = tf.strings.regex_replace(text, r"([[:punct:]])", r" \1 ")
  return tf.strings.regex_replace(text, r"\s+", " ")


def squad_text(x):
  answers = pad_punctuation(x["answers"]["text"])
  question, context = pad_punctuation(x["question"]), pad_punctuation(
      x["context"])
  inputs = tf.strings.regex_replace(tf.strings.join(
      ["question:", question, "context:", context], " "), r"\s+", " ")
  return {"inputs": inputs, "targets": answers[0], "answers": answers,
          "id": x["id"]}


def _has_answer(x):
  return tf.size(x["answers"]["text"]) > 0


def squad_examples(dataset):
  # T5 takes answers[0] unguarded; a question without answers (none in
  # SQuAD v1.1) could be neither trained on nor scored, so it is dropped.
  return dataset.filter(_has_answer).map(
      squad_text, num_parallel_calls=tf.data.AUTOTUNE)


def qa_postprocess(output, example=None, is_target=False):
  """T5's postprocessors.qa: the prediction text; for a target every gold
  answer, so the metric can take the max over them."""
  if is_target:
    return [metrics._text(a) for a in example["answers"]]
  return metrics._text(output)


# ---------------------------------------------------------------------------
# Registration.


def _known_splits(tfds_name):
  return (("train", "validation") if tfds_name.startswith("squad")
          else ("train", "validation", "test"))


def _register(name, vocabulary, tfds_name, steps, metric_fns,
              postprocess_fn=None):
  tasks_lib.register_text_task(
      name, vocabulary,
      tasks_lib.TfdsSource(tfds_name=tfds_name, known_splits=_known_splits(tfds_name)),
      steps, metric_fns, postprocess_fn)


def register_text_tasks(vocabulary: seqio.Vocabulary, *,
                        mixing: str = mixing_lib.DEFAULT_STRATEGY,
                        cap: int = mixing_lib.DEFAULT_CAP,
                        temperature: float = mixing_lib.DEFAULT_TEMPERATURE
                        ) -> None:
  """Registers the summarisation, translation and SQuAD tasks (TEXT_TASKS)
  and T5's mixtures of them (MIXTURES) at the `mixing` strategy's rates."""
  mixing_lib.check_mixing(mixing, cap, temperature)
  for name, (tfds_name, article, summary) in SUMMARIZATION.items():
    _register(name, vocabulary, tfds_name, [seqio.map_over_dataset(
        functools.partial(summarize_text, article_key=article,
                          summary_key=summary))], [metrics.rouge])
  for name, (tfds_name, source, target) in TRANSLATION.items():
    _register(name, vocabulary, tfds_name, [seqio.map_over_dataset(
        functools.partial(translate_text, source=source, target=target))],
              [metrics.bleu])
  _register(SQUAD_TASK, vocabulary, SQUAD_TFDS, [squad_examples],
            [metrics.squad], qa_postprocess)
  for mixture, names in MIXTURES.items():
    mixing_lib.add_mixture(mixture, mixing_lib.mixture_rates(
        {n: TRAIN_SIZES[n] for n in names}, strategy=mixing, cap=cap,
        temperature=temperature))
