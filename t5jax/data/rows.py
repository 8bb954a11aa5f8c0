"""Examples to model rows in numpy: EOS and trimming, seqio's packing, and the
encoder-decoder features. TensorFlow-free.

    rows = list(to_batches(examples, {"inputs": 512, "targets": 114}, batch_size=8))
    rows[0]["encoder_input_tokens"]  # [8, 512] int32, and every other model feature

What seqio does between a task's (inputs, targets) and the model, step by step:
  1. `append_eos_after_trim`: each feature trimmed to length - 1, then EOS (id 1);
  2. `EncDecFeatureConverter`: packing (pack=True) or padding (pack=False) to the lengths,
     then decoder_input_tokens = targets shifted right by one within each packed
     example (0 where an example starts), decoder_loss_weights = (targets != 0), and for
     packed rows the segment ids (1, 2, ... per example, 0 = padding) and positions.
Packing is seqio's next-fit over groups of max(lengths) examples (`pack_group`, which
`t5jax.data.packing` also runs inside tf.data); tests/data/test_rows.py checks every
feature against seqio's converter on the same examples.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np

EOS_ID = 1
FEATURES = ("inputs", "targets")


def append_eos_after_trim(tokens, length: int, eos_id: int = EOS_ID) -> np.ndarray:
  """seqio's append_eos_after_trim: the first length - 1 tokens, then EOS."""
  tokens = np.asarray(tokens, np.int32)
  return np.concatenate([tokens[:length - 1], np.array([eos_id], np.int32)])


def prompt_slot_ids(count: int) -> np.ndarray:
  """Prompt tuning in packed rows: the ids -1, -2, ..., -count, put before each example's
  inputs (after EOS and trimming to the inputs length - count) so that every packed
  example gets its own prompt; the encoder fills slot -k with prompt row k - 1
  (t5jax.model). Packing counts them as tokens (non-zero)."""
  return -np.arange(1, count + 1, dtype=np.int32)


def pack_group(lengths: Mapping[str, int], flat: Mapping[str, tuple]) -> dict:
  """Packs one group of examples. flat[k] = (values, row_splits) of feature k over the
  group; returns dense [rows, lengths[k]] arrays: k, k_positions, k_segment_ids."""
  keys = list(lengths)
  # seqio measures an example by its non-zero tokens (pad id 0).
  ex_lens = {}
  for k in keys:
    values, splits = flat[k]
    count = np.concatenate([[0], np.cumsum(values != 0)])
    nonzero = count[splits[1:]] - count[splits[:-1]]
    ex_lens[k] = np.minimum(nonzero, lengths[k])
  n = len(flat[keys[0]][1]) - 1
  rows = np.empty(n, np.int64)
  offsets = {k: np.empty(n, np.int64) for k in keys}
  row, fill = 0, {k: 0 for k in keys}
  lens = {k: ex_lens[k].tolist() for k in keys}
  for i in range(n):  # next-fit: a few integer ops per example
    if not all(fill[k] + lens[k][i] <= lengths[k] for k in keys):
      row += 1
      fill = {k: 0 for k in keys}
    rows[i] = row
    for k in keys:
      offsets[k][i] = fill[k]
      fill[k] += lens[k][i]
  num_rows = row + 1 if n else 0
  out = {}
  for k in keys:
    values, splits = flat[k]
    tokens = np.zeros((num_rows, lengths[k]), np.int32)
    positions = np.zeros((num_rows, lengths[k]), np.int32)
    # Every kept token: its example, its position in the example.
    ex = np.repeat(np.arange(n), ex_lens[k])
    pos = np.arange(len(ex)) - np.repeat(np.cumsum(ex_lens[k]) - ex_lens[k],
                                         ex_lens[k])
    src = splits[:-1][ex] + pos
    tokens[rows[ex], offsets[k][ex] + pos] = values[src]
    positions[rows[ex], offsets[k][ex] + pos] = pos
    out[k] = tokens
    out[k + "_positions"] = positions
    out[k + "_segment_ids"] = (np.cumsum(positions == 0, axis=1,
                                         dtype=np.int32) * (tokens != 0))
  return out


def _flat(examples: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  arrays = [np.asarray(e[key], np.int32) for e in examples]
  splits = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
  values = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
  return values, splits


def _packed_groups(examples: Iterable[Mapping[str, np.ndarray]],
                   lengths: Mapping[str, int]) -> Iterator[dict]:
  """Each group of max(lengths) examples packed: dense [rows, length] arrays."""
  group = max(lengths.values())
  batch = []
  for example in examples:
    batch.append({k: np.asarray(example[k])[:lengths[k]] for k in lengths})
    if len(batch) == group:
      yield pack_group(lengths, {k: _flat(batch, k) for k in lengths})
      batch = []
  if batch:
    yield pack_group(lengths, {k: _flat(batch, k) for k in lengths})


def pack(examples: Iterable[Mapping[str, np.ndarray]],
         lengths: Mapping[str, int]) -> Iterator[dict]:
  """seqio.utils.trim_and_pack_dataset: packed rows (one dict each), in order; groups
  of max(lengths) examples are packed independently, as seqio does."""
  for packed in _packed_groups(examples, lengths):
    yield from _rows(packed)


def _rows(packed: dict) -> Iterator[dict]:
  for i in range(len(next(iter(packed.values())))):
    yield {k: v[i] for k, v in packed.items()}


def pad(example: Mapping[str, np.ndarray], lengths: Mapping[str, int]) -> dict:
  """One example trimmed and zero-padded to the lengths (seqio's pack=False)."""
  out = {}
  for k, n in lengths.items():
    tokens = np.asarray(example[k], np.int32)[:n]
    out[k] = np.pad(tokens, (0, n - len(tokens)))
  return out


def _shift_right(x: np.ndarray) -> np.ndarray:
  return np.concatenate([np.zeros_like(x[..., :1]), x[..., :-1]], axis=-1)


def model_features(row: Mapping[str, np.ndarray]) -> dict:
  """seqio.EncDecFeatureConverter's output for one packed or padded row (or a batch
  of them): packed rows carry inputs/targets_segment_ids and _positions."""
  targets = np.asarray(row["targets"], np.int32)
  decoder_inputs = _shift_right(targets)
  out = {"encoder_input_tokens": np.asarray(row["inputs"], np.int32),
         "decoder_target_tokens": targets}
  if "targets_segment_ids" in row:
    segments = np.asarray(row["targets_segment_ids"], np.int32)
    # 0 (BOS) where a packed example starts: no token leaks across examples.
    decoder_inputs = decoder_inputs * (segments == _shift_right(segments))
  out["decoder_input_tokens"] = decoder_inputs.astype(np.int32)
  out["decoder_loss_weights"] = (targets != 0).astype(np.int32)
  if "targets_segment_ids" in row:
    out.update(encoder_segment_ids=np.asarray(row["inputs_segment_ids"], np.int32),
               encoder_positions=np.asarray(row["inputs_positions"], np.int32),
               decoder_segment_ids=np.asarray(row["targets_segment_ids"], np.int32),
               decoder_positions=np.asarray(row["targets_positions"], np.int32))
  return out


def to_rows(examples: Iterable[Mapping[str, np.ndarray]], lengths: Mapping[str, int],
            pack_rows: bool = True) -> Iterator[dict]:
  """(inputs, targets) examples, EOS appended -> model feature rows, as seqio's
  EncDecFeatureConverter makes them (lengths: {'inputs': n, 'targets': m})."""
  if pack_rows:  # features computed over a whole packing group at once
    for packed in _packed_groups(examples, lengths):
      yield from _rows(model_features(packed))
  else:
    for example in examples:
      yield model_features(pad(example, lengths))


def to_batches(examples: Iterable[Mapping[str, np.ndarray]], lengths: Mapping[str, int],
               batch_size: int, pack_rows: bool = True,
               drop_remainder: bool = True) -> Iterator[dict]:
  """Rows stacked into batches of batch_size ([batch_size, length] int32 arrays)."""
  batch = []
  for row in to_rows(examples, lengths, pack_rows):
    batch.append(row)
    if len(batch) == batch_size:
      yield {k: np.stack([r[k] for r in batch]) for k in batch[0]}
      batch = []
  if batch and not drop_remainder:
    yield {k: np.stack([r[k] for r in batch]) for k in batch[0]}


__all__ = ["append_eos_after_trim", "pack_group", "pack", "pad", "model_features",
           "to_rows", "to_batches"]
