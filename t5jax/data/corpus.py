"""Plain-text corpora: reading user files, and the built-in default corpus.

A corpus is a list of text files. Each file holds one document per line
(the default) or one document per file. Everything here is pure Python so
that bad input is caught once, up front, with a message naming the file,
instead of surfacing later as a TF error inside a tf.data pipeline (or, worse,
as a silently empty dataset).

The default corpus is built at run time from English text that ships with
Python itself and with the installed packages: docstrings of .py modules and
.rst/.md documentation files. No corpus text is committed to the repository.
"""

import ast
import functools
import hashlib
import os
import re
import sys
import sysconfig
from typing import Iterable, Iterator, Sequence

from t5jax.errors import UsageError

# Bump when the extraction rules change so stale caches are not reused.
_DEFAULT_CORPUS_FORMAT = 1
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "t5jax")

# A local corpus's validation split: every VALIDATION_EVERY-th document (index % N == N - 1);
# the train split is the rest (all of it for a corpus under N documents).
VALIDATION_EVERY = 100

_WORD = re.compile(r"[A-Za-z]{2,}")
_SPACE = re.compile(r"\s+")


class CorpusError(UsageError):
  """The corpus is unusable; the message names the file and the fix."""


def list_corpus_files(paths: str | Sequence[str]) -> list[str]:
  """Expands files and directories (recursively, sorted) into file paths."""
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  files = []
  for path in paths:
    path = os.fspath(path)
    if os.path.isdir(path):
      for root, dirs, names in os.walk(path):
        dirs.sort()  # os.walk order is filesystem order: make it stable
        files.extend(os.path.join(root, n) for n in sorted(names)
                     if not n.startswith("."))
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise CorpusError(
          f"corpus path {path!r} does not exist; pass existing text files or "
          "a directory of text files")
  if not files:
    raise CorpusError(f"corpus {list(paths)!r} contains no files")
  return files


def iter_documents(paths: str | Sequence[str], *, doc_per: str = "line",
                   on_decode_error: str = "raise") -> Iterator[str]:
  """Yields the non-blank documents of a corpus, whitespace-normalised.

  Args:
    paths: text files and/or directories of text files.
    doc_per: "line" (one document per line) or "file".
    on_decode_error: "raise" (default) stops at the first line that is not
      valid UTF-8 with an error naming file and line; "skip" drops such lines
      (or whole files for doc_per="file"), a documented lossy choice.
  """
  if doc_per not in ("line", "file"):
    raise UsageError(f"doc_per must be 'line' or 'file', got {doc_per!r}")
  if on_decode_error not in ("raise", "skip"):
    raise UsageError(
        f"on_decode_error must be 'raise' or 'skip', got {on_decode_error!r}")
  for path in list_corpus_files(paths):
    with open(path, "rb") as f:
      chunks = f if doc_per == "line" else [f.read()]
      for lineno, raw in enumerate(chunks, start=1):
        try:
          text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          if on_decode_error == "skip":
            continue
          where = f"line {lineno}" if doc_per == "line" else "the file"
          raise CorpusError(
              f"{path}: {where} is not valid UTF-8 ({e.reason} at byte "
              f"{e.start}); re-encode the file as UTF-8 (e.g. `iconv -f "
              "latin1 -t utf-8`) or pass on_decode_error='skip' to drop such "
              "lines") from None
        text = _SPACE.sub(" ", text).strip()
        if text:  # blank lines are separators, not documents
          yield text


def load_documents(paths: str | Sequence[str], **kwargs) -> list[str]:
  """Like iter_documents, but fails loudly on a corpus with no text at all."""
  docs = list(iter_documents(paths, **kwargs))
  if not docs:
    raise CorpusError(
        f"corpus {paths!r} is empty: no non-blank documents were found; "
        "check the paths and doc_per ('line' or 'file')")
  return docs


def train_split_documents(paths: str | Sequence[str], **kwargs) -> Iterator[str]:
  """The documents of a corpus's train split: what pretraining on it reads."""
  docs = load_documents(paths, **kwargs)
  if len(docs) < VALIDATION_EVERY:
    yield from docs
    return
  for i, doc in enumerate(docs):
    if i % VALIDATION_EVERY != VALIDATION_EVERY - 1:
      yield doc


# ByT5's byte vocabulary: what tokenized_corpus takes instead of a .model path
# (t5jax.data.vocab.BYTE_VOCABULARY; UTF-8 byte b is id b + BYTE_OFFSET).
BYTE_VOCABULARY, BYTE_OFFSET = "byte", 3


@functools.lru_cache(maxsize=8)
def tokenized_corpus(files: tuple[str, ...], spm_file: str, doc_per: str = "line",
                     on_decode_error: str = "raise", fingerprint: str = ""):
  """(flat int32 tokens, int64 row splits) of a corpus's documents, in order; memoised per
  process by content fingerprint (pass fingerprint_files' key), so every split, shard and
  pipeline shares one tokenisation. SentencePiece's multi-threaded encoder, no TensorFlow.

  spm_file is a SentencePiece model, or BYTE_VOCABULARY for ByT5's byte ids (UTF-8 bytes
  + 3, as seqio.ByteVocabulary encodes).
  """
  del fingerprint  # only part of the memo key
  import numpy as np
  docs = load_documents(list(files), doc_per=doc_per, on_decode_error=on_decode_error)
  if spm_file == BYTE_VOCABULARY:
    ids = [np.frombuffer(d.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET
           for d in docs]
  else:
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=spm_file)
    ids = sp.encode(docs, num_threads=os.cpu_count() or 1)
  lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
  if lengths.sum() == 0:
    raise CorpusError(f"corpus {list(files)} tokenises to no tokens with {spm_file}")
  if spm_file == BYTE_VOCABULARY:
    flat = np.concatenate(ids).astype(np.int32)
  else:
    flat = np.fromiter((t for x in ids for t in x), np.int32, lengths.sum())
  return flat, np.concatenate([[0], np.cumsum(lengths)])


def split_indices(num_docs: int, split: str, files=()):
  """The documents of a local corpus's split: 'validation' holds every
  VALIDATION_EVERY-th one, 'train' the rest (all of them below VALIDATION_EVERY)."""
  import numpy as np
  index = np.arange(num_docs)
  held_out = index % VALIDATION_EVERY == VALIDATION_EVERY - 1
  if split == "validation":
    index = index[held_out]
  elif split == "train":
    index = index[~held_out] if num_docs >= VALIDATION_EVERY else index
  else:
    raise UsageError(f"local corpus split must be 'train' or 'validation', got {split!r}")
  if len(index) == 0:
    raise CorpusError(
        f"split {split!r} of corpus {list(files)} is empty: it holds every "
        f"{VALIDATION_EVERY}th document, so it needs at least {VALIDATION_EVERY} documents")
  return index


def fingerprint_files(files: Iterable[str], *extra) -> str:
  """A content hash of files plus extra parameters, used as a cache key."""
  h = hashlib.sha256(repr(extra).encode())
  for path in files:
    h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()[:16]


# ---------------------------------------------------------------------------
# The default corpus.


def _english_enough(text: str, min_words: int) -> bool:
  """Crude filter for prose: enough words, and mostly letters and spaces."""
  words = _WORD.findall(text)
  if len(words) < min_words:
    return False
  letters = sum(len(w) for w in words)
  return letters >= 0.6 * len(text)


def _docstrings(source: str) -> Iterator[str]:
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):  # py2 files, templates, null bytes
    return
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                         ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc:
        yield doc


def _source_roots() -> list[str]:
  """The stdlib first, then the environment's site-packages."""
  roots = [sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]]
  out = []
  for root in roots:
    root = os.path.realpath(root)
    if os.path.isdir(root) and root not in out:
      out.append(root)
  return out


def _package(root: str, path: str) -> str | None:
  """The top-level package or module a file under a source root belongs to:
  '.../python3.11/email/utils.py' -> 'email', '.../site-packages/numpy/...' -> 'numpy';
  None for packaging metadata (*.dist-info, *.egg-info)."""
  top = os.path.relpath(path, root).split(os.sep)[0]
  if top.endswith((".dist-info", ".egg-info")):
    return None
  return top[:-3] if top.endswith(".py") else top


def iter_labelled_default_documents(min_words: int = 8) -> Iterator[tuple[str | None, str]]:
  """(package, text) for every document of the default corpus, in the corpus's order
  and before its de-duplication and size cut: the text is whitespace-normalised as in
  the corpus file, the package is _package's label of the file it came from."""
  skip_dirs = {"test", "tests", "__pycache__", "site-packages", "idlelib",
               "lib2to3", "ensurepip"}
  for root in _source_roots():
    for dirpath, dirs, names in os.walk(root):
      dirs[:] = sorted(d for d in dirs
                       if d not in skip_dirs and not d.startswith("."))
      for name in sorted(names):
        path = os.path.join(dirpath, name)
        if name.endswith(".py"):
          try:
            with open(path, encoding="utf-8") as f:
              texts = list(_docstrings(f.read()))
          except (UnicodeDecodeError, OSError):
            continue
        elif name.endswith((".rst", ".md")):
          try:
            with open(path, encoding="utf-8") as f:
              # Paragraphs make documents of a few hundred tokens, like C4.
              texts = re.split(r"\n\s*\n", f.read())
          except (UnicodeDecodeError, OSError):
            continue
        else:
          continue
        package = _package(root, path)
        for text in texts:
          text = _SPACE.sub(" ", text).strip()
          if _english_enough(text, min_words):
            yield package, text


def _iter_default_documents(min_words: int) -> Iterator[str]:
  for _, text in iter_labelled_default_documents(min_words):
    yield text


def default_corpus(cache_dir: str | None = None, *,
                   max_bytes: int = 10 << 20, min_words: int = 8) -> list[str]:
  """Builds (once) and returns the default corpus: [path of one text file].

  The text is the docstrings and .rst/.md documentation of the Python stdlib
  and of the installed packages, one document per line, in sorted path order
  and cut at max_bytes, so it is deterministic for a given installation. The
  file is cached in cache_dir (default ~/.cache/t5jax) under a key made of the
  Python version, the source roots and the extraction parameters.
  """
  cache_dir = cache_dir or DEFAULT_CACHE_DIR
  roots = _source_roots()
  key = hashlib.sha256(repr((_DEFAULT_CORPUS_FORMAT, sys.version, roots,
                             max_bytes, min_words)).encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"default_corpus_{key}.txt")
  if os.path.exists(path):
    return [path]
  os.makedirs(cache_dir, exist_ok=True)
  seen = set()  # the same docstring recurs across packages (vendored code)
  size = 0
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for doc in _iter_default_documents(min_words):
      digest = hashlib.md5(doc.encode()).digest()
      if digest in seen:
        continue
      seen.add(digest)
      line = doc + "\n"
      size += len(line.encode())
      if size > max_bytes:
        break
      f.write(line)
  if size == 0:
    os.remove(tmp)
    raise CorpusError(
        f"no English text found under {roots} to build the default corpus; "
        "pass corpus files explicitly")
  os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
  return [path]
