"""The offline downstream task (t5jax/data/downstream.py): labels, masking, balance, and
splits disjoint from the pretraining corpus's train split.

The sources are a fake installation the test writes: a stdlib-like root and a
site-packages-like root, each with packages whose docstrings carry a marker word, so
every text's true package is known.
"""

import collections
import re

import pytest

from t5jax.data import corpus as corpus_lib
from t5jax.data import downstream
from t5jax.errors import UsageError

WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river "
         "mountain forest ocean window garden letter number").split()
PACKAGES = {"stdlib": ["email", "argparse"], "site": ["flask", "numpy", "scipy", "tiny"]}


def _doc(package, i):
  body = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12))
  # the reversed name keeps masked texts of two packages apart
  return (f"Marker {package} number {i} ({package[::-1]}): {body} in {package}.core and "
          f"{package}_thing.")


def _write_sources(root):
  roots = []
  for kind, packages in PACKAGES.items():
    base = root / kind
    for package in packages:
      count = 3 if package == "tiny" else 120
      if package == "argparse":  # a single-module package: argparse.py
        files = {base / "argparse.py": range(count)}
      else:
        files = {base / package / "a.py": range(0, count, 2),
                 base / package / "sub" / "b.py": range(1, count, 2)}
      for path, indices in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        funcs = "".join(f"def f{i}():\n  \"\"\"{_doc(package, i)}\"\"\"\n\n" for i in indices)
        path.write_text(funcs)
    # a vendored copy: the same docstring under two packages, and metadata to skip
    if kind == "site":
      (base / "flask" / "vendored.py").write_text(
          f"def v():\n  \"\"\"{_doc('shared', 0)} copied text here\"\"\"\n")
      (base / "numpy" / "vendored.py").write_text(
          f"def v():\n  \"\"\"{_doc('shared', 0)} copied text here\"\"\"\n")
      meta = base / "numpy-1.0.dist-info"
      meta.mkdir()
      (meta / "README.md").write_text(_doc("meta", 0) + "\n")
    roots.append(str(base))
  return roots


@pytest.fixture()
def fake_sources(tmp_path, monkeypatch):
  roots = _write_sources(tmp_path / "src")
  monkeypatch.setattr(corpus_lib, "_source_roots", lambda: roots)
  # A corpus cut mid-way (in bytes), as the default one is at 10 MB.
  corpus = corpus_lib.default_corpus(str(tmp_path / "cache"), max_bytes=40_000)
  return corpus, tmp_path


def test_labels_come_from_the_package_of_each_file(fake_sources):
  labelled = list(corpus_lib.iter_labelled_default_documents())
  labels = collections.Counter(p for p, _ in labelled)
  assert labels == {"email": 120, "argparse": 120, "flask": 121, "numpy": 121, "scipy": 120,
                    "tiny": 3, None: 1}
  for package, text in labelled:
    if package is not None and "shared" not in text:
      assert text.startswith(f"Marker {package} ")


def test_package_task_is_held_out_balanced_masked_and_disjoint(fake_sources):
  corpus, tmp_path = fake_sources
  info = downstream.build_package_task(str(tmp_path / "task"), num_classes=3,
                                       train_per_class=20, validation_per_class=10,
                                       corpus_files=corpus)
  # The cut leaves email/argparse mostly in the corpus; classes are the 3 largest.
  pretraining = set(corpus_lib.train_split_documents(corpus))
  assert len(pretraining) > 100
  assert info["chance"] == pytest.approx(1 / 3)
  rows = {s: [line.rstrip("\n").split("\t") for line in open(info[s])]
          for s in ("train", "validation")}
  assert {s: len(r) for s, r in rows.items()} == {"train": 60, "validation": 30}
  for split, pairs in rows.items():
    assert collections.Counter(y for _, y in pairs) == {
        c: len(pairs) // 3 for c in info["classes"]}
  originals = {_doc(p, i): p for ps in PACKAGES.values() for p in ps for i in range(120)}
  masked = {downstream.mask_name(t, p): (t, p) for t, p in originals.items()}
  seen_inputs = set()
  for split, pairs in rows.items():
    for x, y in pairs:
      assert x.startswith(downstream.PREFIX + " ")
      text, package = masked[x[len(downstream.PREFIX) + 1:]]
      assert package == y  # the label is the package the text was written in
      assert text not in pretraining  # never read by pretraining
      assert y not in x and "[pkg].core" in x and "[pkg]_thing" in x
      assert x not in seen_inputs  # train and validation are disjoint
      seen_inputs.add(x)
  # the vendored text (two packages) and the metadata file are never used
  assert not any("shared" in x or "meta" in x for pairs in rows.values() for x, _ in pairs)
  # the same settings reuse the folder; another seed gives another sample
  again = downstream.build_package_task(str(tmp_path / "task"), num_classes=3,
                                        train_per_class=20, validation_per_class=10,
                                        corpus_files=corpus)
  assert again == info
  other = downstream.build_package_task(str(tmp_path / "task2"), num_classes=3,
                                        train_per_class=20, validation_per_class=10,
                                        corpus_files=corpus, seed=1)
  assert open(other["train"]).read() != open(info["train"]).read()


def test_package_task_too_few_documents_says_what_to_lower(fake_sources):
  corpus, tmp_path = fake_sources
  with pytest.raises(UsageError,
                     match=r"only 2 packages have 110 held-out.*numpy 120, scipy 120, flask 86.*Lower"):
    downstream.build_package_task(str(tmp_path / "t"), num_classes=3, train_per_class=80,
                                  validation_per_class=30, corpus_files=corpus)


def test_mask_name_only_masks_whole_names():
  assert downstream.mask_name("Numpy arrays: numpy.linalg, numpyish, np", "numpy") == (
      "[pkg] arrays: [pkg].linalg, numpyish, np")


def _story(package, i):
  """A document of four sentences whose order is known: 'S<k> of <package> <i> ...'."""
  return " ".join(f"Sentence {k} of {package} document {i} says {WORDS[(i + k) % len(WORDS)]} "
                  f"and {WORDS[(i * 3 + k) % len(WORDS)]}." for k in range(4))


def _story_sources(tmp_path, held_out_packages):
  """(corpus folder, its train split, labelled documents): 200 numpy stories in the corpus
  and 60 stories of each held-out package."""
  corpus_dir = tmp_path / "corpus"
  corpus_dir.mkdir()
  in_corpus = [_story("numpy", i) for i in range(200)]
  (corpus_dir / "c.txt").write_text("\n".join(in_corpus) + "\n")
  pretraining = set(corpus_lib.train_split_documents([str(corpus_dir)]))
  labelled = [("numpy", t) for t in in_corpus] + [
      (p, _story(p, i)) for p in held_out_packages for i in range(60)]
  return corpus_dir, pretraining, labelled


def test_next_sentence_task_is_held_out_balanced_and_true(tmp_path):
  """next_sentence: the right option is the sentence after the first in its own held-out
  document, the other a sentence of another package's; answers balanced 1 / 2; train and
  validation from different documents; pretraining's train split never used."""
  corpus_dir, pretraining, labelled = _story_sources(tmp_path, ("flask", "scipy", "email"))
  info = downstream.build_next_sentence_task(
      str(tmp_path / "task"), train=16, validation=100, corpus_files=[str(corpus_dir)],
      labelled=labelled)
  assert info["chance"] == 0.5 and info["counts"] == {"validation": 100, "train": 16}
  assert info["answers"] == {"validation": {"1": 50, "2": 50}, "train": {"1": 8, "2": 8}}
  documents = set()
  for split in ("train", "validation"):
    for line in open(info[split]):
      x, y = line.rstrip("\n").split("\t")
      first, rest = x[len(downstream.NEXT_PREFIX) + 1:].split(" option 1: ")
      options = rest.split(" option 2: ")
      right, wrong = options[int(y) - 1], options[2 - int(y)]
      k, package, doc = first.split()[1], first.split()[3], first.split()[5]
      assert right.startswith(f"Sentence {int(k) + 1} of {package} document {doc} ")
      assert wrong.split()[3] != package  # the other option: another package's sentence
      story = _story(package, int(doc))
      assert story not in pretraining  # held out (the in-corpus numpy validation docs may be)
      assert (package, doc) not in documents  # one example per document
      documents.add((package, doc))
  with pytest.raises(UsageError, match="next_sentence: .* are needed"):
    downstream.build_next_sentence_task(str(tmp_path / "t2"), train=16, validation=1000,
                                        corpus_files=[str(corpus_dir)], labelled=labelled)


def test_sentences_keep_4_to_24_words_without_prompts():
  text = ("Too short. This sentence has enough words in it. Then >>> x = 1 is a doctest line. "
          "Another fine sentence follows here!")
  assert downstream.sentences(text) == ["This sentence has enough words in it.",
                                        "Another fine sentence follows here!"]


def test_cloze_task_blanks_a_word_found_nowhere_else(tmp_path):
  """cloze: one blank per example, the target is the word that was there (a content word,
  not elsewhere in the input, so not copyable), from held-out documents only, one per
  document; train and validation disjoint."""
  corpus_dir, pretraining, labelled = _story_sources(tmp_path, ("flask", "scipy"))
  info = downstream.build_cloze_task(str(tmp_path / "task"), train=10, validation=50,
                                     corpus_files=[str(corpus_dir)], labelled=labelled)
  assert info["counts"] == {"validation": 50, "train": 10}
  stories = {s for _, s in labelled} - pretraining
  seen = set()
  for split in ("train", "validation"):
    for line in open(info[split]):
      x, word = line.rstrip("\n").split("\t")
      assert x.startswith(downstream.CLOZE_PREFIX + " ") and x.count(downstream.BLANK) == 1
      filled = x[len(downstream.CLOZE_PREFIX) + 1:].replace(downstream.BLANK, word)
      assert any(filled in s for s in stories)  # a held-out document's two sentences
      assert word.lower() not in x.lower() and len(word) >= 4
      assert word.lower() not in downstream._STOPWORDS
      assert filled not in seen
      seen.add(filled)
  with pytest.raises(UsageError, match="cloze: .* are needed"):
    downstream.build_cloze_task(str(tmp_path / "t2"), train=10, validation=1000,
                                corpus_files=[str(corpus_dir)], labelled=labelled)


def test_context_cloze_blanks_a_word_of_the_sentences_before(tmp_path):
  """context_cloze (LAMBADA / CBT style): the blanked word is a content word that the
  sentences before the blank contain, once in its own sentence; held-out documents only,
  one example per document."""
  corpus_dir, pretraining, labelled = _story_sources(tmp_path, ("flask", "scipy"))
  info = downstream.build_context_cloze_task(str(tmp_path / "task"), train=10, validation=50,
                                             corpus_files=[str(corpus_dir)],
                                             labelled=labelled)
  assert info["task"] == downstream.CONTEXT_CLOZE_TASK
  assert info["counts"] == {"validation": 50, "train": 10}
  stories = {s for _, s in labelled} - pretraining
  documents = set()
  for split in ("train", "validation"):
    for line in open(info[split]):
      x, word = line.rstrip("\n").split("\t")
      assert x.startswith(downstream.CLOZE_PREFIX + " ") and x.count(downstream.BLANK) == 1
      text = x[len(downstream.CLOZE_PREFIX) + 1:]
      filled = text.replace(downstream.BLANK, word)
      *context, sentence = downstream.sentences(filled)
      assert 1 <= len(context) <= 3
      count = lambda t: len(re.findall(rf"(?i)(?<![A-Za-z]){word}(?![A-Za-z])", t))
      assert count(" ".join(context)) >= 1 and count(sentence) == 1  # in the context
      assert len(word) >= 4 and word.lower() not in downstream._STOPWORDS
      story = next(s for s in stories if filled in s)  # consecutive sentences of a story
      assert story not in documents
      documents.add(story)
  with pytest.raises(UsageError, match="context_cloze: .* are needed"):
    downstream.build_context_cloze_task(str(tmp_path / "t2"), train=10, validation=1000,
                                        corpus_files=[str(corpus_dir)], labelled=labelled)
