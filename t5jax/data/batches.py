"""Numpy batches for the trainer: deterministic, sharded, resumable.

Pipeline: seqio task/mixture (read only this process's shard, objective,
shuffle with the seed) -> EncDecFeatureConverter (packing) -> batch of
global_batch / process_count rows -> skip(start_step) -> numpy.

Determinism: every random choice in the pipeline (document order, chunk
selection, noise masks, example shuffle, mixture sampling) is seeded from
`seed`, and tf.data runs with deterministic=True, so batch k is a pure
function of (task, seed, shard, k).

Resumption: the iterator is a `BatchIterator`, whose position is the
tf.data iterator's own state (tf.train.Checkpoint of the iterator, as T5X
checkpoints its input): save_state(dir) writes it, restore_state(dir) puts a
fresh pipeline at that position without pulling any earlier batch through
it, so a resume costs the same at step 10 and at step 500k. The state holds
the pipeline's buffers (shuffle buffers, packing groups, prefetched batches):
about 14 MB per process for the default corpus, whose document shuffle spans
the whole corpus. Without a saved state (a run written before, or a changed
number of processes, whose shards differ) `start_step` replays: skip(N) over
the batched dataset, about a minute per 100k examples on 2 cores.
"""

import os
from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from t5jax.data import packing
from t5jax.data import tasks as tasks_lib
from t5jax.errors import UsageError


class DataNotPreparedError(UsageError):
  """A TFDS dataset is missing; the message says how to prepare it."""


def _ensure_registered(name: str) -> None:
  if name in seqio.MixtureRegistry.names() or name in seqio.TaskRegistry.names():
    return
  if name == tasks_lib.DEFAULT_CORPUS_TASK:
    tasks_lib.register_default_corpus_task()
    return
  raise UsageError(
      f"no seqio task or mixture named {name!r}; register it first (e.g. "
      "register_local_corpus_task, register_c4_task, register_glue_tasks)")


def _tfds_names(provider) -> list[str]:
  tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
  return [t.source.tfds_dataset.name for t in tasks
          if isinstance(t.source, seqio.TfdsDataSource)]


def _prepare_hint(names, data_dir) -> str:
  where = data_dir or "~/tensorflow_datasets"
  builds = "; ".join(
      f"`tfds build {n.split(':')[0]} --data_dir {where}`" for n in names)
  return (f"Prepare it first with {builds} (or tfds.builder(name, "
          f"data_dir=...).download_and_prepare()), then pass "
          f"data_dir={where!r}.")


def make_dataset(task_or_mixture_name: str, *, split: str,
                 sequence_length: Mapping[str, int], batch_size: int,
                 seed: int, pack: bool = True, shuffle: bool = True,
                 repeat: bool = True, process_index: int | None = None,
                 process_count: int | None = None,
                 data_dir: str | None = None, prompt_slots: int = 0) -> tf.data.Dataset:
  """The batched tf.data pipeline behind make_batch_iterator (step 0 on)."""
  if process_index is None or process_count is None:
    import jax  # noqa: PLC0415 (only needed for the defaults)
    process_index = jax.process_index() if process_index is None \
        else process_index
    process_count = jax.process_count() if process_count is None \
        else process_count
  if not 0 <= process_index < process_count:
    raise UsageError(f"process_index {process_index} not in "
                     f"[0, {process_count})")
  if batch_size % process_count:
    raise UsageError(f"global batch_size {batch_size} is not divisible by "
                     f"process_count {process_count}")
  prompt_slots = prompt_slots if pack else 0
  if prompt_slots:
    if sequence_length["inputs"] <= prompt_slots + 1:
      raise UsageError(f"inputs length {sequence_length['inputs']} leaves no room for an "
                       f"example after {prompt_slots} prompt slots; raise "
                       "DataConfig.inputs_length or lower num_virtual_tokens.")
    sequence_length = {**sequence_length, "inputs": sequence_length["inputs"] - prompt_slots}
  _ensure_registered(task_or_mixture_name)
  provider = seqio.get_mixture_or_task(task_or_mixture_name)
  tfds_names = _tfds_names(provider)
  if data_dir is not None:
    if not os.path.isdir(data_dir):
      raise DataNotPreparedError(
          f"data_dir {data_dir!r} does not exist. "
          + _prepare_hint(tfds_names or ["<dataset>"], data_dir))
    seqio.utils.set_tfds_data_dir_override(data_dir)
  try:
    ds = seqio.get_dataset(
        provider,
        task_feature_lengths=dict(sequence_length),
        feature_converter=packing.FastPackEncDecFeatureConverter(
            pack=pack, prompt_slots=prompt_slots),
        dataset_split=split,
        shuffle=shuffle,
        num_epochs=None if repeat else 1,
        shard_info=seqio.ShardInfo(process_index, process_count),
        seed=seed,
        verbose=False)
  except (AssertionError, KeyError, tf.errors.NotFoundError,
          FileNotFoundError) as e:
    # TFDS signals an unprepared dataset in several ways: AssertionError
    # ("could not find data in ..."), KeyError (empty split info, seen when
    # seqio lists shards), DatasetNotFoundError (a FileNotFoundError).
    if not tfds_names:
      raise
    raise DataNotPreparedError(
        f"TFDS dataset(s) {tfds_names} not found in data_dir "
        f"{data_dir!r}: {e}. " + _prepare_hint(tfds_names, data_dir)) from e
  ds = ds.batch(batch_size // process_count, drop_remainder=True)
  options = tf.data.Options()
  options.deterministic = True
  # seqio chains many small per-example maps (EOS, trimming, validation,
  # feature conversion); fusing them saves tf.data per-element overhead.
  options.experimental_optimization.map_fusion = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options)


class BatchIterator:
  """This process's int32 numpy batches, with a position that can be saved.

  Iteration starts on first use: by `next` (skipping to start_step) or by
  `restore_state` (continuing a saved position, no skip).
  """

  def __init__(self, dataset: tf.data.Dataset, start_step: int, describe: str):
    self._dataset, self._start, self._describe = dataset, start_step, describe
    self._iterator = None
    self._yielded = self._warned = False

  def __iter__(self):
    return self

  def _get(self):
    if self._iterator is None:
      ds = self._dataset
      if self._start:
        ds = ds.skip(self._start)
      self._iterator = iter(ds.prefetch(tf.data.AUTOTUNE))
    return self._iterator

  def __next__(self) -> dict[str, np.ndarray]:
    try:
      batch = next(self._get())
    except StopIteration:
      if not self._yielded and self._start == 0:
        # A finite pass that cannot fill one batch would otherwise end silently.
        raise UsageError(self._describe) from None
      raise
    self._yielded = True
    return {k: np.asarray(v, np.int32) for k, v in batch.items()}

  def save_state(self, directory: str) -> bool:
    """Writes the pipeline's position (the batches after the last one yielded).

    False if this pipeline cannot be saved: tf.data refuses iterators with
    stateful Python ops (e.g. TFDS's mock data, `from_generator` sources). A
    resume then replays to the step (start_step), as without a saved position.
    """
    try:
      tf.train.Checkpoint(iterator=self._get()).write(os.path.join(directory, "iterator"))
      return True
    except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError) as e:
      if not self._warned:
        self._warned = True
        print(f"WARNING: the input pipeline's position cannot be saved "
              f"({str(e).splitlines()[0][:200]}); a resume will replay its batches.",
              flush=True)
      return False

  def restore_state(self, directory: str) -> bool:
    """Continues from a position written by save_state, replaying nothing; False
    (and nothing changed) if none was written there."""
    prefix = os.path.join(directory, "iterator")
    if not tf.io.gfile.exists(prefix + ".index"):
      return False
    iterator = iter(self._dataset.prefetch(tf.data.AUTOTUNE))
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
    self._iterator, self._yielded = iterator, True
    return True


def make_batch_iterator(task_or_mixture_name: str, *, split: str,
                        sequence_length: Mapping[str, int], batch_size: int,
                        seed: int, start_step: int = 0, pack: bool = True,
                        shuffle: bool = True, repeat: bool = True,
                        process_index: int | None = None,
                        process_count: int | None = None,
                        data_dir: str | None = None,
                        prompt_slots: int = 0) -> BatchIterator:
  """This process's int32 numpy batches for steps start_step, ... (a BatchIterator).

  Batch k (0-based) is exactly the k-th batch an uninterrupted run with the
  same arguments yields, so a trainer restored at step N passes
  start_step=N, or, faster, restores the position saved with step N
  (`BatchIterator.restore_state`). Each process reads only its shard of the
  source and gets batch_size // process_count rows.

  Args:
    task_or_mixture_name: a registered seqio task or mixture (the default
      corpus task is registered on first use).
    split: e.g. "train" or "validation".
    sequence_length: {"inputs": 512, "targets": 114}.
    batch_size: global batch size across all processes.
    seed: seeds every random choice of the pipeline.
    start_step: first batch to yield (unless a position is restored).
    pack: pack several examples per row (adds segment ids and positions).
    shuffle: shuffle documents and examples.
    repeat: cycle over the data forever; if False the last partial batch is
      dropped.
    process_index, process_count: default to jax.process_index() / count().
    data_dir: TFDS data_dir for TFDS-backed tasks.
    prompt_slots: prompt tuning's num_virtual_tokens P. Packed rows then hold P slot
      ids before each example's inputs (t5jax.data.rows.prompt_slot_ids), each example
      trimmed to inputs length - P, so that every example gets its own prompt (the
      model prepends it to unpacked rows itself).

  Returns:
    an iterator of dicts with encoder_input_tokens, decoder_input_tokens,
    decoder_target_tokens, decoder_loss_weights and, when packed,
    encoder_segment_ids, decoder_segment_ids, encoder_positions,
    decoder_positions, each an int32 array [batch_size // process_count, len].
  """
  if start_step < 0:
    raise UsageError(f"start_step must be >= 0, got {start_step}")
  ds = make_dataset(
      task_or_mixture_name, split=split, sequence_length=sequence_length,
      batch_size=batch_size, seed=seed, pack=pack, shuffle=shuffle,
      repeat=repeat, process_index=process_index,
      process_count=process_count, data_dir=data_dir, prompt_slots=prompt_slots)
  return BatchIterator(ds, start_step, (
      f"{task_or_mixture_name!r} split {split!r} has too few examples for "
      f"one batch of {batch_size} (shard {process_index} of "
      f"{process_count}); use a larger corpus, a smaller batch, or "
      "repeat=True"))
