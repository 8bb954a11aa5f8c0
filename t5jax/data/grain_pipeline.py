"""The TensorFlow-free input pipeline: a tokenised local corpus to model batches through
grain and numpy, resumable in O(1) on any number of processes.

    stream = CorpusStream(flat, splits, doc_ids, spec)          # what the batches hold
    # (or PairsStream(input_ids, target_ids, spec): task 'local_pairs')
    batches = GrainBatches(stream, batch_size=32, process_index=0, process_count=1)
    batch = next(batches)               # int32 numpy arrays, the seqio pipeline's features
    batches.save_state(directory)       # with each checkpoint (t5jax.checkpoints)
    GrainBatches(stream, 32, process_index=p, process_count=P).restore_state(directory)

The same objectives (`t5jax.data.noise`: span corruption, the paper's ablations, UL2),
the same document steps (chunk, concatenate 128 documents, split into raw-length
segments), EOS after trim and seqio's packing and features (`t5jax.data.rows`), as the
seqio pipeline; tests/data/test_grain_pipeline.py compares them.

Why it resumes in O(1), elastically. The global stream is cut into `num_shards` virtual
shards. Shard k reads documents k, k + K, k + 2K, ... of an epoch-wise permutation of
the corpus, in groups of 128 (T5's concatenation group); group g of shard k is a pure
function of (seed, k, g): its documents, its random chunk picks and masks (a numpy
Generator seeded with (seed, k, g)), its packed rows. Every global batch takes
batch_size / K consecutive rows from each shard, shard after shard, so process p of P
reads shards [p K / P, (p + 1) K / P) and its rows are exactly its slice of the global
batch whatever P is. A shard's position is (group, row within the group): saving it is a
few integers, restoring it recomputes one group. Processes save their shards' positions;
a restore on another process count reads all of them.

grain runs the per-group work: a MapDataset over group numbers, mapped by the group
function. By default it reads synchronously (read_threads=0): the work is numpy under the
GIL, and on 2 cores grain's read-ahead threads made it 3x slower (433 against 138 us a
512/114 row, measured), while the trainer's prefetch thread already overlaps it with the
device's steps. read_workers=N (DataConfig.grain_workers) computes the groups in N grain
worker processes instead (one dataset over all of the process's shards, mp_prefetch):
for hosts with idle cores whose accelerator steps faster than one core makes rows
(bench_data.py --grain_workers measures it; on the 2-core test VM: 0.75x the rate).
The rows are the same either way.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import os

import numpy as np

from t5jax.data import noise, rows as rows_lib
from t5jax.errors import UsageError

STATE_FILE = "grain_state_{process}.json"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """What the rows are: objective, lengths, packing, seed (DataConfig's fields)."""

  inputs_length: int = 512
  targets_length: int = 114
  objective: str = "span_corruption"
  noise_density: float = 0.15
  mean_noise_span_length: float = 3.0
  pack: bool = True
  seed: int = 0
  shuffle: bool = True  # a new permutation of the documents every epoch
  prompt_slots: int = 0  # packed prompt tuning: slot ids before each example (rows.py)


class _Vocab:
  """What the objectives read of a vocabulary."""

  def __init__(self, vocab_size: int, extra_ids: int):
    self.vocab_size, self.extra_ids = vocab_size, extra_ids


class _Stream:
  """Items (documents, pairs) in an endless stream of epoch-wise permutations, read in
  groups of 128 by virtual shard: what GrainBatches needs is group_rows(shard, group)."""

  def __init__(self, item_ids: np.ndarray, spec: StreamSpec, num_shards: int, what: str):
    if len(item_ids) == 0:
      raise UsageError(f"the {what} split is empty")
    self.item_ids = np.asarray(item_ids, np.int64)
    self.spec, self.num_shards = spec, num_shards
    self.slots = rows_lib.prompt_slot_ids(spec.prompt_slots if spec.pack else 0)
    if spec.inputs_length <= len(self.slots) + 1:
      raise UsageError(f"inputs length {spec.inputs_length} leaves no room for an example "
                       f"after {len(self.slots)} prompt slots; raise DataConfig."
                       "inputs_length or lower num_virtual_tokens.")
    # Each example's lengths (the rows' less the prompt slots).
    self.lengths = {"inputs": spec.inputs_length - len(self.slots),
                    "targets": spec.targets_length}

  @functools.lru_cache(maxsize=4)
  def _permutation(self, epoch: int) -> np.ndarray:
    if not self.spec.shuffle:
      return self.item_ids
    rng = np.random.default_rng([self.spec.seed, 0x5EED, epoch])
    return self.item_ids[rng.permutation(len(self.item_ids))]

  def item(self, position: int) -> int:
    """The item id at `position` of the endless epoch-wise stream."""
    epoch, i = divmod(position, len(self.item_ids))
    return int(self._permutation(epoch)[i])

  def group_items(self, shard: int, group: int) -> list[int]:
    """Group `group` of shard `shard`: stream positions (group * 128 + j) * K + shard."""
    first, k = group * noise.CONCAT_BATCH, self.num_shards
    return [self.item((first + j) * k + shard) for j in range(noise.CONCAT_BATCH)]

  def _rows(self, examples: list[dict]) -> list[dict]:
    """EOS after trim, prompt slots (if any), then packed (or padded) model rows."""
    trimmed = [{key: rows_lib.append_eos_after_trim(ex[key], self.lengths[key]) for key in ex}
               for ex in examples]
    if len(self.slots):
      trimmed = [dict(ex, inputs=np.concatenate([self.slots, ex["inputs"]])) for ex in trimmed]
    return list(rows_lib.to_rows(trimmed, {"inputs": self.spec.inputs_length,
                                           "targets": self.spec.targets_length},
                                 self.spec.pack))


class CorpusStream(_Stream):
  """Rows of model features from tokenised documents, by (shard, group).

  flat, splits: the corpus's tokens and row splits (corpus.tokenized_corpus); doc_ids:
  the documents of the split, in order; vocab_size: pieces + extra ids (sentinels count
  down from vocab_size - 1), extra_ids: the sentinels available.
  """

  def __init__(self, flat: np.ndarray, splits: np.ndarray, doc_ids: np.ndarray,
               spec: StreamSpec, vocab_size: int, extra_ids: int = 100,
               num_shards: int = 8):
    super().__init__(doc_ids, spec, num_shards, "corpus")
    self.flat, self.splits = flat, splits
    self.doc_ids = self.item_ids
    self.vocab_size = vocab_size
    vocab = _Vocab(vocab_size, extra_ids)
    if spec.objective == "ul2":
      self.make_pair = noise.make_pair_fn("ul2", vocab, sequence_length=self.lengths)
      self.raw_length = self.make_pair.raw_length
    else:
      self.make_pair = noise.make_pair_fn(
          spec.objective, vocab, noise_density=spec.noise_density,
          mean_noise_span_length=spec.mean_noise_span_length)
      self.raw_length = (noise.random_spans_helper(
          self.lengths["inputs"], spec.noise_density, spec.mean_noise_span_length)[0]
          if spec.objective == "span_corruption" else self.lengths["inputs"] - 1)

  def group_rows(self, shard: int, group: int) -> list[dict]:
    """The model rows of group `group` of shard `shard` (a pure function of both and the
    seed): its 128 documents chunked, concatenated, split, denoised, EOS appended,
    packed (or padded)."""
    docs = [self.flat[self.splits[d]:self.splits[d + 1]]
            for d in self.group_items(shard, group)]
    rng = np.random.default_rng([self.spec.seed, shard, group])
    examples = []
    for segment in noise.segments(docs, self.raw_length, rng):
      inputs, targets = self.make_pair(segment, rng, self.vocab_size)
      examples.append({"inputs": inputs, "targets": targets})
    return self._rows(examples)


class PairsStream(_Stream):
  """Rows of model features from tokenised (input, target) pairs (task 'local_pairs', the
  ablations' downstream task), by (shard, group): a group's 128 pairs, each trimmed to its
  length with EOS, packed (or padded) as seqio's pairs task and feature converter do.

  inputs, targets: the pairs' token ids (no EOS), one array per pair.
  """

  def __init__(self, inputs: list[np.ndarray], targets: list[np.ndarray], spec: StreamSpec,
               num_shards: int = 8):
    if len(inputs) != len(targets):
      raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    super().__init__(np.arange(len(inputs)), spec, num_shards, "pairs")
    self.inputs, self.targets = inputs, targets

  def group_rows(self, shard: int, group: int) -> list[dict]:
    return self._rows([{"inputs": self.inputs[i], "targets": self.targets[i]}
                       for i in self.group_items(shard, group)])


def tokenize_texts(vocabulary, texts: list[str]) -> list[np.ndarray]:
  """Token ids of each text (no EOS), batched through SentencePiece where it can."""
  encode = getattr(vocabulary, "encode_batch", None)
  ids = encode(texts) if encode else [vocabulary.encode(t) for t in texts]
  return [np.asarray(i, np.int32) for i in ids]


class _ShardReader:
  """One shard's rows from a position (group, row), its groups from `groups` (an iterator
  of the shard's groups from `group` on)."""

  def __init__(self, shard: int, group: int, row: int, groups):
    self.shard, self.group, self.row = shard, group, row
    self._groups = groups
    self._rows = next(self._groups)

  def take(self, n: int) -> list[dict]:
    out = []
    while len(out) < n:
      if self.row >= len(self._rows):  # a group can hold no row (a tiny corpus): skip
        self._rows, self.group, self.row = next(self._groups), self.group + 1, 0
        continue
      out.append(self._rows[self.row])
      self.row += 1
    return out


def _shard_groups(stream: _Stream, shard: int, group: int, read_threads: int):
  """Groups group, group + 1, ... of one shard, computed in this process by grain (its
  read-ahead threads when read_threads > 0)."""
  import grain
  groups = grain.MapDataset.range(group, 2 ** 62).map(
      functools.partial(stream.group_rows, shard))
  options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2)
  return iter(groups.to_iter_dataset(read_options=options))


class _GroupOf:
  """Element i of a process's combined dataset: (shard, rows of its group), shards in turn
  (shard shards[i % S], group starts[i % S] + i // S)."""

  def __init__(self, stream: _Stream, shards: list[int], starts: list[int]):
    self.stream, self.shards, self.starts = stream, shards, starts

  def __call__(self, i: int):
    k, n = i % len(self.shards), i // len(self.shards)
    rows = self.stream.group_rows(self.shards[k], self.starts[k] + n)
    # One array per feature: grain moves each array through its own shared memory.
    return k, {key: np.stack([r[key] for r in rows]) for key in rows[0]} if rows else {}


class _WorkerGroups:
  """All of a process's shards through one grain dataset whose groups are computed by
  `workers` worker processes (grain's mp_prefetch). Shards take their groups at slightly
  different paces, so groups that arrive before their shard needs them wait here."""

  def __init__(self, stream: _Stream, positions: dict[int, tuple[int, int]], workers: int):
    import grain
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
      flags.FLAGS.mark_as_parsed()
    self.shards = sorted(positions)
    dataset = grain.MapDataset.range(0, 2 ** 62).map(
        _GroupOf(stream, self.shards, [positions[s][0] for s in self.shards]))
    self._it = iter(dataset.to_iter_dataset().mp_prefetch(
        grain.MultiprocessingOptions(num_workers=workers)))
    self._waiting = {k: collections.deque() for k in range(len(self.shards))}

  def groups(self, shard: int):
    k = self.shards.index(shard)
    while True:
      while not self._waiting[k]:
        got, stacked = next(self._it)
        rows = len(next(iter(stacked.values()))) if stacked else 0
        self._waiting[got].append([{key: v[r] for key, v in stacked.items()}
                                   for r in range(rows)])
      yield self._waiting[k].popleft()


class GrainBatches:
  """This process's numpy batches from a CorpusStream or PairsStream (what BatchIterator
  gives for the seqio pipeline: the same keys, int32 [batch_size / process_count, length])."""

  def __init__(self, stream: _Stream, batch_size: int, *, start_step: int = 0,
               process_index: int = 0, process_count: int = 1, read_threads: int = 0,
               read_workers: int = 0):
    k = stream.num_shards
    if k % process_count or batch_size % k:
      raise UsageError(
          f"the grain pipeline's {k} virtual shards must divide among {process_count} "
          f"process(es) and divide batch_size={batch_size}: choose a batch size that is a "
          f"multiple of {k} (or another DataConfig.grain_shards).")
    self.stream, self.batch_size = stream, batch_size
    self.process_index, self.process_count = process_index, process_count
    per = k // process_count
    self.shards = list(range(process_index * per, (process_index + 1) * per))
    self.rows_per_shard = batch_size // k
    self.read_threads, self.read_workers = read_threads, read_workers
    self.step = 0
    self._positions = {s: (0, 0) for s in self.shards}
    # (step, positions) before each recent batch: what save_state_rewound writes.
    self._history = collections.deque(maxlen=64)
    self._readers = None
    self._skip = start_step

  def __iter__(self):
    return self

  def _start(self):
    if self._readers is None:
      if self.read_workers:
        workers = _WorkerGroups(self.stream, self._positions, self.read_workers)
        groups = {s: workers.groups(s) for s in self.shards}
      else:
        groups = {s: _shard_groups(self.stream, s, self._positions[s][0], self.read_threads)
                  for s in self.shards}
      self._readers = {s: _ShardReader(s, *self._positions[s], groups[s]) for s in self.shards}
      for _ in range(self._skip):  # replay (no saved position): O(start_step)
        self._next()
      self._skip = 0

  def _next(self) -> dict:
    self._history.append((self.step, self.positions()))
    rows = [r for s in self.shards for r in self._readers[s].take(self.rows_per_shard)]
    self.step += 1
    return {key: np.stack([r[key] for r in rows]).astype(np.int32) for key in rows[0]}

  def __next__(self) -> dict:
    self._start()
    return self._next()

  def positions(self) -> dict[int, tuple[int, int]]:
    """{shard: (group, row)} of this process's shards: where the next batch starts."""
    if self._readers is None:
      return dict(self._positions)
    return {s: (r.group, r.row) for s, r in self._readers.items()}

  def save_state(self, directory: str) -> bool:
    """Writes this process's shard positions (one small JSON file per process)."""
    return self.save_state_rewound(directory, 0)

  def save_state_rewound(self, directory: str, batches: int) -> bool:
    """save_state as it was `batches` batches ago: the trainer's prefetcher reads ahead,
    and saves the position of the step it checkpoints, so no process-local batch has to
    be kept and the position restores on any process count."""
    step, positions = self.step + self._skip, self.positions()
    if batches:
      past = {s: p for s, p in self._history}
      if self.step - batches not in past:
        return False  # further back than the history: the caller replays instead
      step, positions = self.step - batches, past[self.step - batches]
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, STATE_FILE.format(process=self.process_index))
    state = {"step": step, "num_shards": self.stream.num_shards,
             "positions": {str(s): list(p) for s, p in positions.items()}}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(state, f)
    os.replace(tmp, path)
    return True

  def restore_state(self, directory: str) -> bool:
    """Continues from positions written by save_state on any number of processes (the
    files of every process are read); False if none were written there."""
    return self.restore_state_from([directory])

  def restore_state_from(self, directories: list[str]) -> bool:
    """restore_state over the files of several directories (each process's own, as a
    checkpoint written by another number of processes holds them)."""
    directory = ", ".join(directories)
    files = [f for d in directories
             for f in glob.glob(os.path.join(d, STATE_FILE.format(process="*")))]
    if not files:
      return False
    positions, steps = {}, set()
    for path in files:
      with open(path) as f:
        state = json.load(f)
      if state["num_shards"] != self.stream.num_shards:
        raise UsageError(f"{path} was saved with {state['num_shards']} virtual shards, this "
                         f"run has {self.stream.num_shards}: they must agree to resume.")
      steps.add(state["step"])
      positions.update({int(s): tuple(p) for s, p in state["positions"].items()})
    missing = [s for s in self.shards if s not in positions]
    if missing or len(steps) != 1:
      raise UsageError(f"{directory}: the saved positions do not cover shards {missing} or "
                       f"disagree on the step ({sorted(steps)}); the checkpoint is incomplete.")
    self._positions = {s: positions[s] for s in self.shards}
    self.step, self._skip, self._readers = steps.pop(), 0, None
    return True


__all__ = ["StreamSpec", "CorpusStream", "PairsStream", "GrainBatches", "tokenize_texts"]
