"""The trainer's input thread: global batches made a few steps ahead, and their position
saved with each checkpoint.

    data = Prefetcher(data_fn(start), make_batch, depth=2)
    batch = data.next(step)           # sharded onto the devices, in the main thread
    data.save_state(directory)        # with a checkpoint (t5jax.checkpoints)
"""

from __future__ import annotations

import collections
import os
import queue
import threading
from typing import Callable, Iterator

import numpy as np

from t5jax.errors import UsageError


class Prefetcher:
  """Global batches for steps start, start + 1, ..., made `depth` steps ahead.

  A background thread reads `data` and shards each batch onto the devices
  (`partitioning.global_batch`) while the current step runs, so the main thread
  only dispatches. Errors in the thread (bad rows, a failing pipeline) are
  raised by `next` in the main thread, at the step they belong to.

  Its position can be saved with a checkpoint when `data` can save its own
  (save_state / restore_state): the local batches read ahead but not yet used
  by a step are saved with it (pending.npz) and come first after a restore,
  as tf.data's prefetch buffer is part of its iterator's state.
  """

  _END = object()

  def __init__(self, data: Iterator[dict], make_batch: Callable[[dict], dict], depth: int):
    self._data, self._make, self._depth = data, make_batch, depth
    self._lock = threading.Lock()  # held while reading `data` and while saving
    self._pulled = collections.deque()  # read from `data`, not yet used by a step
    self._restored = collections.deque()  # read ahead before a restart, not yet re-read
    self._thread = None

  def _start(self):
    self._queue = queue.Queue(maxsize=self._depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, daemon=True, name="t5jax-prefetch")
    self._thread.start()

  def _pull(self):
    with self._lock:
      local = self._restored.popleft() if self._restored else next(self._data, self._END)
      if local is not self._END:
        self._pulled.append(local)
    return local

  def _fill(self):
    try:
      while (local := self._pull()) is not self._END:
        if not self._put(self._make(local)):
          return
      self._put(self._END)
    except BaseException as e:  # re-raised in the main thread
      self._put(e)

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def next(self, step: int) -> dict:
    if self._depth:
      if self._thread is None:
        self._start()
      item = self._queue.get()
    else:
      item = self._pull()
      item = item if item is self._END else self._make(item)
    if item is self._END:
      raise UsageError(f"data_fn's iterator ended before step {step}: it must yield a batch "
                       "for every step up to num_steps.")
    if isinstance(item, BaseException):
      raise item
    with self._lock:
      self._pulled.popleft()
    return item

  def save_state(self, directory: str) -> bool:
    with self._lock:  # the reader thread is between batches
      pending = [*self._pulled, *self._restored]
      rewound = getattr(self._data, "save_state_rewound", None)
      if rewound is not None and not self._restored:
        # The source saves where the checkpointed step left it (a global position,
        # t5jax.data.grain_pipeline): nothing process-local to keep, so it restores on
        # any number of processes.
        if rewound(os.path.join(directory, "pipeline"), len(pending)) is False:
          return False
        pending = []
      elif self._data.save_state(os.path.join(directory, "pipeline")) is False:
        return False  # this source cannot save its position now
      np.savez(os.path.join(directory, "pending.npz"), count=len(pending),
               **{f"{i}/{k}": v for i, batch in enumerate(pending) for k, v in batch.items()})
      return True

  def restore_state(self, directory: str) -> bool:
    if self._thread is not None:
      raise RuntimeError("restore_state after the first batch")
    pending_file = os.path.join(directory, "pending.npz")
    if not os.path.exists(pending_file):
      return False
    if self._data.restore_state(os.path.join(directory, "pipeline")) is False:
      return False
    with np.load(pending_file) as z:
      pending = [{} for _ in range(int(z["count"]))]
      for name in z.files:
        if name != "count":
          i, key = name.split("/", 1)
          pending[int(i)][key] = z[name]
    self._restored = collections.deque(pending)
    return True

  def restore_state_from(self, directories: list[str]) -> bool:
    """Continues from positions saved by another number of processes, when the source
    can (its position is global and nothing was pending: see save_state)."""
    restore = getattr(self._data, "restore_state_from", None)
    if restore is None or self._thread is not None:
      return False
    for d in directories:
      with np.load(os.path.join(d, "pending.npz")) as z:
        if int(z["count"]):
          return False  # process-local batches were pending: only that layout resumes
    return restore([os.path.join(d, "pipeline") for d in directories]) is not False

  def close(self):
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
