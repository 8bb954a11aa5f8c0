"""Generated English-like corpora for the data tests (no downloads)."""

import numpy as np

_WORDS = ("the a model text of to and in is that for on with as data token "
          "span sentence train test corpus vocabulary piece noise target "
          "input length word example batch step seed shard process mixture "
          "task language transfer learning unified encoder decoder").split()


_SYLLABLES = "ka to ri mu sen la dor pi ve nu tra ol is em qu ba".split()


def _lexicon(rng, n=1500):
  """Common words plus pseudo-words, so a 300-piece vocabulary is trainable."""
  made = {"".join(rng.choice(_SYLLABLES, rng.integers(1, 4)))
          for _ in range(n)}
  return np.array(_WORDS + sorted(made))


def write_corpus(path, num_docs, seed=0, min_words=5, max_words=60):
  """Writes num_docs lines of random English-like words; returns path."""
  rng = np.random.default_rng(seed)
  lexicon = _lexicon(rng)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(num_docs):
      n = rng.integers(min_words, max_words)
      words = rng.choice(lexicon, n)
      f.write(" ".join(words).capitalize() + ".\n")
  return str(path)
