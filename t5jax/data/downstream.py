"""Offline downstream tasks: real labels on real text that pretraining never read.

The T5 paper scores each pretraining ablation by finetuning it on GLUE / SuperGLUE.
Where no TFDS data is at hand, `build_package_task` makes a classification task from
the same installed sources the default corpus comes from (corpus.py):

  docstring_package: "package: <a docstring or doc paragraph>" -> the name of the
  top-level package or stdlib module whose files it comes from ("numpy", "email", ...).

- **Held out from pretraining.** A document is a candidate only if its text is not in
  the train split of the pretraining corpus (default: the default corpus file). Since
  the corpus is cut at 10 MB in sorted path order, the candidates are its validation
  documents plus everything past the cut.
- **Real labels.** The label is where the text was written, a fact about the text
  that the span-corruption objective never predicts. Texts found under two packages
  (vendored copies) are dropped, since their label is ambiguous.
- **Not a string match.** The package's own name is replaced by "[pkg]" in the input
  (as a word, and as the prefix of a dotted or underscored name), so the model has to
  read the content.
- **Balanced.** The `num_classes` packages with the most candidates, the same number
  of examples from each, so chance is exactly 1 / num_classes on both splits.
  Train and validation are disjoint (a text is in one of them).

`build_next_sentence_task` makes a second one from the same held-out documents, a task
about the text's meaning rather than its vocabulary:

  next_sentence: "follows: <a sentence> option 1: <s> option 2: <s>" -> "1" or "2": which
  option is the sentence that follows it in its document; the other is a sentence of
  another package's document. Chance is exactly 50% (the answer is "1" for half the
  examples of each split). One example per document, so examples share no text.

`build_cloze_task` makes a third, the cloze over held-out documents:

  cloze: "cloze: <the sentence before> <a sentence with one word as ___>" -> the word.
  The word is a content word (4 to 12 letters, not a stopword, not a section header such
  as "Returns:") that appears nowhere else in the input, so it cannot be copied; scored by
  exact match.

`build_context_cloze_task` makes a fourth, a cloze whose answer is in the context, as in
LAMBADA or the Children's Book Test:

  context_cloze: "cloze: <up to three sentences before> <a sentence with one word as ___>"
  -> the word. The same kind of content word, but one that does appear in the sentences
  before (and only once in its own sentence): the model has to find, among the context's
  words, the one the blank calls for. Scored by exact match.

The task is written as a pairs folder (train.tsv, validation.tsv, info.json) that the
`local_pairs` task reads (gin: tasks/local_pairs.gin, DataConfig.pairs_train, ...), so
finetuning, the eval hook and `t5jax eval` work as for a user's own pairs.
Pure Python, no tf.data: the rules are plain code, tested on a fake installation.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import random
import re
from typing import Iterable

from t5jax.data import corpus as corpus_lib
from t5jax.errors import UsageError

PACKAGE_TASK = "docstring_package"
PREFIX = "package:"
MASK = "[pkg]"
NEXT_SENTENCE_TASK = "next_sentence"
NEXT_PREFIX = "follows:"
# Sentences of 4 to 24 words and at most 120 characters: a 128-token input holds three
# (on the 8k demo vocabulary an example is a median 61 tokens, at most 125 of 2,128).
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_MIN_WORDS, _MAX_WORDS = 4, 24
_MAX_SENTENCE_CHARS = 120  # code-heavy sentences take more tokens per word
CLOZE_TASK = "cloze"
CONTEXT_CLOZE_TASK = "context_cloze"
_CONTEXT_SENTENCES = 3
CLOZE_PREFIX = "cloze:"
BLANK = "___"
# A word of 4 to 12 letters, not part of code (a dotted name, quoted, a call) nor a section
# header ("Returns:"), which a model could guess from the layout alone.
_WORD = re.compile(r"(?<![\w.`'\"])([A-Za-z]{4,12})(?![\w`'\"(:])")
_STOPWORDS = frozenset("""
    this that with from have been were will would could should which their there these those
    then than them they what when where while also into only such each other more most some
    very just over under about after before because between both does done during here must
    same through upon whether your yours being above below again once further nor own
""".split())
# Bump when the rules change, so a stale folder is rebuilt rather than reused.
_FORMAT = 1
_MAX_CHARS = 1200  # inputs are cut at DataConfig.inputs_length tokens anyway


def _digest(text: str) -> bytes:
  return hashlib.md5(text.encode()).digest()


def mask_name(text: str, name: str) -> str:
  """`text` with the package's own name replaced by MASK (case-insensitive, as a word or as
  the start of a dotted / underscored name: 'numpy.linalg', 'numpy_config')."""
  return re.sub(rf"(?i)(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", MASK, text)


def held_out_documents(labelled: Iterable[tuple[str | None, str]],
                       pretraining: Iterable[str]) -> dict[str, list[str]]:
  """{package: [texts]} of the labelled texts that are not in `pretraining`, each text
  under the one package it came from (texts seen under two packages are dropped), in
  first-seen order."""
  seen = {_digest(t) for t in pretraining}
  by_text: dict[bytes, tuple[str, str]] = {}
  ambiguous = set()
  for package, text in labelled:
    if package is None:
      continue
    d = _digest(text)
    if d in seen or d in ambiguous:
      continue
    if d in by_text and by_text[d][0] != package:
      ambiguous.add(d)
      del by_text[d]
      continue
    by_text.setdefault(d, (package, text))
  out: dict[str, list[str]] = collections.defaultdict(list)
  for package, text in by_text.values():
    out[package].append(text)
  return dict(out)


def build_package_task(out_dir: str, *, num_classes: int = 8, train_per_class: int = 64,
                       validation_per_class: int = 64, seed: int = 0,
                       corpus_files: list[str] | None = None, cache_dir: str | None = None,
                       labelled: Iterable[tuple[str | None, str]] | None = None) -> dict:
  """Writes the docstring_package task to out_dir (module docstring) and returns its
  info.json: {"train", "validation" (paths), "classes", "chance", "counts", ...}.
  An existing folder built with the same settings is reused.

  corpus_files: the pretraining corpus whose train split is excluded (default: the
  default corpus). labelled: (package, text) documents (default: the installed sources,
  corpus.iter_labelled_default_documents).
  """
  settings = {"task": PACKAGE_TASK, "num_classes": num_classes,
              "train_per_class": train_per_class,
              "validation_per_class": validation_per_class, "seed": seed}
  info, settings, candidates = _reuse_or_candidates(out_dir, settings, corpus_files, cache_dir,
                                                    labelled)
  if info:
    return info
  need = train_per_class + validation_per_class
  ranked = sorted(candidates, key=lambda p: (-len(candidates[p]), p))
  classes = sorted(p for p in ranked[:num_classes] if len(candidates[p]) >= need)
  if len(classes) < num_classes:
    sizes = ", ".join(f"{p} {len(candidates[p])}" for p in ranked[:num_classes + 2])
    raise UsageError(
        f"{PACKAGE_TASK}: only {len(classes)} packages have {need} held-out documents "
        f"(train_per_class {train_per_class} + validation_per_class "
        f"{validation_per_class}); the largest are: {sizes}. Lower num_classes or the "
        "per-class counts.")
  rng = random.Random(seed)
  splits = {"train": [], "validation": []}
  for package in classes:
    texts = list(candidates[package])
    rng.shuffle(texts)
    for split, chosen in (("validation", texts[:validation_per_class]),
                          ("train", texts[validation_per_class:need])):
      for text in chosen:
        text = mask_name(text, package)[:_MAX_CHARS].replace("\t", " ")
        splits[split].append((f"{PREFIX} {text}", package))
  info = {
      "task": PACKAGE_TASK, **_write_splits(out_dir, splits, rng), "classes": classes,
      "chance": 1 / num_classes, "counts": {s: len(r) for s, r in splits.items()},
      "held_out_candidates": {p: len(candidates[p]) for p in ranked[:2 * num_classes]},
      "settings": settings,
  }
  _write_info(out_dir, info)
  return info


def _reuse_or_candidates(out_dir, settings, corpus_files, cache_dir, labelled):
  """(info, settings, None) for a folder built with these settings (the format and the
  pretraining corpus's fingerprint added), else (None, settings, the held-out documents)."""
  corpus_files = corpus_files or corpus_lib.default_corpus(cache_dir)
  settings = {"format": _FORMAT, **settings,
              "corpus": corpus_lib.fingerprint_files(corpus_lib.list_corpus_files(corpus_files))}
  info = _reuse(out_dir, settings)
  if info:
    return info, settings, None
  if labelled is None:
    labelled = corpus_lib.iter_labelled_default_documents()
  return None, settings, held_out_documents(labelled,
                                            corpus_lib.train_split_documents(corpus_files))


def _reuse(out_dir: str, settings: dict) -> dict | None:
  """The info.json of a folder built with these very settings (its files present), or None."""
  info_path = os.path.join(out_dir, "info.json")
  if os.path.exists(info_path):
    with open(info_path) as f:
      info = json.load(f)
    if info.get("settings") == settings and all(
        os.path.exists(info[k]) for k in ("train", "validation")):
      return info
  return None


def _write_splits(out_dir: str, splits: dict[str, list], rng: random.Random) -> dict:
  """Each split's rows shuffled and written as <split>.tsv (input<TAB>target); {split: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for split, rows in splits.items():
    rng.shuffle(rows)
    paths[split] = os.path.join(out_dir, f"{split}.tsv")
    tmp = paths[split] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(f"{x}\t{y}\n" for x, y in rows)
    os.replace(tmp, paths[split])
  return paths


def _write_info(out_dir: str, info: dict) -> None:
  info_path = os.path.join(out_dir, "info.json")
  with open(info_path + ".tmp", "w") as f:
    json.dump(info, f, indent=1)
  os.replace(info_path + ".tmp", info_path)


def sentences(text: str) -> list[str]:
  """The sentences of a document (split after . ! ? before a capital), each of 4 to 24
  words and at most 120 characters; others are dropped, and so are those with a tab or a
  doctest prompt."""
  out = []
  for piece in _SENTENCE.split(text):
    piece = piece.strip()
    if _MIN_WORDS <= len(piece.split()) <= _MAX_WORDS and len(piece) <= _MAX_SENTENCE_CHARS \
        and "\t" not in piece and ">>>" not in piece:
      out.append(piece)
  return out


def _next_sentence_examples(candidates: dict[str, list[str]], count: int, seed: int):
  """`count` examples (input, "1" | "2"), one per document, half of them "1"."""
  rng = random.Random(seed)
  docs = [(package, sentences(text)) for package in sorted(candidates)
          for text in candidates[package]]
  pairs = []  # (package, sentence, the sentence that follows it in the same text)
  for package, sents in docs:
    adjacent = [(a, b) for a, b in zip(sents, sents[1:]) if a != b]
    if adjacent:
      pairs.append((package, *rng.choice(adjacent)))
  rng.shuffle(pairs)
  pool = [(package, x) for package, sents in docs for x in sents]
  if len(pairs) < count or len({p for p, _ in pool}) < 2:
    raise UsageError(f"{NEXT_SENTENCE_TASK}: {len(pairs)} held-out documents have two "
                     f"sentences in a row, {count} are needed; lower the example counts.")
  examples = []
  for i, (package, first, follows) in enumerate(pairs[:count]):
    while True:
      other_package, other = rng.choice(pool)
      if other_package != package:
        break
    answer = "1" if i % 2 == 0 else "2"
    options = (follows, other) if answer == "1" else (other, follows)
    examples.append((f"{NEXT_PREFIX} {first} option 1: {options[0]} option 2: {options[1]}",
                     answer))
  return examples


def build_next_sentence_task(out_dir: str, *, train: int = 128, validation: int = 2000,
                             seed: int = 0, corpus_files: list[str] | None = None,
                             cache_dir: str | None = None,
                             labelled: Iterable[tuple[str | None, str]] | None = None) -> dict:
  """Writes the next_sentence task (module docstring) to out_dir and returns its
  info.json, as build_package_task: few training examples (`train`), many validation
  ones (`validation`), from documents that are not in the pretraining corpus's train
  split; train and validation come from different documents."""
  return _build_example_task(out_dir, NEXT_SENTENCE_TASK, _next_sentence_examples, train,
                             validation, seed, corpus_files, cache_dir, labelled,
                             classes=["1", "2"], chance=0.5)


def _build_example_task(out_dir, task, make_examples, train, validation, seed, corpus_files,
                        cache_dir, labelled, classes, chance) -> dict:
  """A task of `make_examples(candidates, count, seed)` over the held-out documents: the
  first `validation` examples are the validation split, the next `train` the train split."""
  settings = {"task": task, "train": train, "validation": validation, "seed": seed}
  info, settings, candidates = _reuse_or_candidates(out_dir, settings, corpus_files, cache_dir,
                                                    labelled)
  if info:
    return info
  examples = make_examples(candidates, train + validation, seed)
  splits = {"validation": examples[:validation], "train": examples[validation:]}
  info = {"task": task, **_write_splits(out_dir, splits, random.Random(seed)),
          "classes": classes, "chance": chance,
          "counts": {s: len(r) for s, r in splits.items()}, "settings": settings}
  if classes:
    info["answers"] = {s: dict(collections.Counter(y for _, y in rows))
                       for s, rows in splits.items()}
  _write_info(out_dir, info)
  return info


def _one_per_document(task: str, candidates: dict[str, list[str]], count: int, seed: int,
                      pick) -> list[tuple[str, str]]:
  """`count` examples (input, target), at most one per document: `pick(sentences, rng)`
  makes a document's example or None, over the documents in a seeded order."""
  rng = random.Random(seed)
  docs = [sentences(text) for package in sorted(candidates) for text in candidates[package]]
  rng.shuffle(docs)
  examples = []
  for sents in docs:
    if len(examples) == count:
      break
    example = pick(sents, rng)
    if example:
      examples.append(example)
  if len(examples) < count:
    raise UsageError(f"{task}: {len(examples)} held-out documents give an example, {count} "
                     "are needed; lower the example counts.")
  return examples


def _cloze_examples(candidates: dict[str, list[str]], count: int, seed: int):
  """`count` examples (input, word), one per document."""
  def pick(sents, rng):
    if len(sents) < 2:
      return None
    k = rng.randrange(1, len(sents))
    context, sentence = sents[k - 1], sents[k]
    words = [m for m in _WORD.finditer(sentence) if m.group(1).lower() not in _STOPWORDS]
    rng.shuffle(words)
    for m in words:
      word = m.group(1)
      blanked = sentence[:m.start(1)] + BLANK + sentence[m.end(1):]
      if not re.search(rf"(?i)(?<![A-Za-z]){word}(?![A-Za-z])", f"{context} {blanked}"):
        return f"{CLOZE_PREFIX} {context} {blanked}", word
    return None
  return _one_per_document(CLOZE_TASK, candidates, count, seed, pick)


def build_cloze_task(out_dir: str, *, train: int = 128, validation: int = 2000, seed: int = 0,
                     corpus_files: list[str] | None = None, cache_dir: str | None = None,
                     labelled: Iterable[tuple[str | None, str]] | None = None) -> dict:
  """Writes the cloze task (module docstring) to out_dir and returns its info.json, as
  build_next_sentence_task: `train` and `validation` examples from different held-out
  documents, one example per document."""
  return _build_example_task(out_dir, CLOZE_TASK, _cloze_examples, train, validation, seed,
                             corpus_files, cache_dir, labelled, classes=[], chance=None)


def _context_cloze_examples(candidates: dict[str, list[str]], count: int, seed: int):
  """`count` examples (input, word), one per document: a content word of a sentence that
  also appears in the (up to) three sentences before it."""
  def pick(sents, rng):
    positions = list(range(1, len(sents)))
    rng.shuffle(positions)
    for k in positions:
      context = " ".join(sents[max(0, k - _CONTEXT_SENTENCES):k])
      sentence = sents[k]
      words = [m for m in _WORD.finditer(sentence) if m.group(1).lower() not in _STOPWORDS]
      rng.shuffle(words)
      for m in words:
        word = re.compile(rf"(?i)(?<![A-Za-z]){m.group(1)}(?![A-Za-z])")
        if len(word.findall(sentence)) == 1 and word.search(context):
          blanked = sentence[:m.start(1)] + BLANK + sentence[m.end(1):]
          return f"{CLOZE_PREFIX} {context} {blanked}", m.group(1)
    return None
  return _one_per_document(CONTEXT_CLOZE_TASK, candidates, count, seed, pick)


def build_context_cloze_task(out_dir: str, *, train: int = 128, validation: int = 2000,
                             seed: int = 0, corpus_files: list[str] | None = None,
                             cache_dir: str | None = None,
                             labelled: Iterable[tuple[str | None, str]] | None = None) -> dict:
  """Writes the context_cloze task (module docstring) to out_dir and returns its info.json,
  as build_cloze_task."""
  return _build_example_task(out_dir, CONTEXT_CLOZE_TASK, _context_cloze_examples, train,
                             validation, seed, corpus_files, cache_dir, labelled, classes=[],
                             chance=None)
