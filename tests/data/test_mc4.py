"""mT5's mC4: a span corruption task per language and the temperature-scaled `mc4` mixture."""

import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

from t5jax.data import mc4_languages, mc4_task_name, register_mc4_tasks
from t5jax.data import tasks as tasks_lib
from t5jax.errors import UsageError


def test_languages_are_mt5s():
  languages = mc4_languages()
  assert {"en", "de", "ko", "sw", "zh"} <= set(languages) and len(languages) >= 101
  assert mc4_task_name("bg-Latn") == "mc4_bg_Latn"


def test_language_task_reads_its_split_and_corrupts_spans(vocabulary):
  register_mc4_tasks(vocabulary, languages=("de", "bg-Latn"))
  task = seqio.get_mixture_or_task("mc4_bg_Latn")
  assert task.source.tfds_dataset.name == "c4/multilingual:3.*.*"
  assert dict(task.source.tfds_dataset._split_map) == {
      "train": "bg-Latn", "validation": "bg-Latn-validation"}
  with tfds.testing.mock_data(num_examples=4):
    ds = task.get_dataset({"inputs": 64, "targets": 16}, split="train", shuffle=False)
    ex = next(iter(tfds.as_numpy(ds)))
  sentinel = vocabulary.vocab_size - 1
  assert sentinel in ex["inputs"] and sentinel in ex["targets"]
  assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1


def test_mixture_rates_are_size_to_the_power_of_0_3(vocabulary, monkeypatch):
  sizes = {"mc4_de": 1_000_000, "mc4_sw": 1_000}
  monkeypatch.setattr(tasks_lib.TfdsSource, "num_input_examples",
                      lambda self, split: None)
  register_mc4_tasks(vocabulary, languages=("de", "sw"))
  mixture = seqio.get_mixture_or_task("mc4")
  with pytest.raises(UsageError, match="tfds build c4/multilingual"):
    mixture.get_rate(mixture.tasks[0])
  for name, size in sizes.items():
    task = seqio.get_mixture_or_task(name)
    monkeypatch.setattr(task, "num_input_examples", lambda split, n=size: n)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  np.testing.assert_allclose(rates["mc4_de"] / rates["mc4_sw"], 1000 ** 0.3)
  assert tasks_lib.MC4_TEMPERATURE == pytest.approx(1 / 0.3)
