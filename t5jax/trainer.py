"""The training loop: mesh -> state -> resume -> steps -> checkpoints, in that order.

    result = train(get_config("tiny"), TrainConfig(run_dir="/tmp/run", num_steps=100,
                   batch_size=32), data_fn)

`data_fn(start_step)` returns an iterator over this process's numpy batches
for steps start_step, start_step + 1, ...; with P processes each yields
batch_size / P rows. Everything else (resume, preemption, metrics) is here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import re
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from t5jax import (checkpoints, compilation, flops, losses, optim, partitioning, peft,
                   train_step as steps, xla_cpu)
from t5jax.distributed import initialize_distributed  # noqa: F401 (re-exported)
from t5jax.metrics import MetricsWriter
from t5jax.model import init_params as model_init_params
from t5jax.errors import UsageError

DataFn = Callable[[int], Iterator[dict]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  run_dir: str
  num_steps: int
  batch_size: int  # global, in sequences
  microbatches: int = 1  # gradient accumulation: batch_size / microbatches per forward
  seed: int = 0  # parameter init and dropout
  mesh: partitioning.MeshConfig = partitioning.MeshConfig()
  optimizer: optim.OptimizerConfig = optim.OptimizerConfig()
  loss: losses.LossConfig = losses.LossConfig()
  checkpoint: checkpoints.CheckpointConfig = checkpoints.CheckpointConfig()
  log_every: int = 10
  eval_every: int = 0  # 0: no eval; else needs eval_data_fn and/or eval_hook
  on_nonfinite: str = "stop"  # 'stop': halt naming the step; 'skip': skip that update
  peak_flops: float | None = None  # per device; None: known default or measured
  tensorboard: bool = True
  handle_signals: bool = True  # SIGTERM/SIGINT: finish the step, save, return
  print_shardings: bool = False  # the per-parameter table on the console (else run_dir)
  compiler_options: dict | None = None  # XLA options for the jitted steps (see jit_steps)
  # Batches sharded onto the devices ahead of the step that uses them, on a background
  # thread (0: on the main thread, just before the step).
  prefetch: int = 2
  # With several processes, how often (in steps) they agree on whether any got a
  # signal; 0: at every fetch of metrics (log, eval and checkpoint steps).
  sync_every: int = 0

  def __post_init__(self):
    if self.on_nonfinite not in ("stop", "skip"):
      raise UsageError(f"TrainConfig.on_nonfinite={self.on_nonfinite!r}: 'stop' or 'skip'.")
    if self.log_every < 1 or self.prefetch < 0 or self.sync_every < 0:
      raise UsageError(f"TrainConfig: log_every={self.log_every} must be >= 1, prefetch="
                       f"{self.prefetch} and sync_every={self.sync_every} >= 0.")
    if self.batch_size % self.microbatches:
      raise UsageError(f"TrainConfig.batch_size={self.batch_size} is not divisible by "
                       f"microbatches={self.microbatches}.")


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  history: list  # one dict of host metrics per step run in this call
  stopped: str  # 'done', 'preempted', 'nonfinite' or 'early_stopped'
  frozen: Any = None  # an adapter run's frozen base (state.params: the trainable leaves)

  @property
  def params(self):
    """The full parameters: state.params, plus the frozen base of an adapter run."""
    return self.state.params if self.frozen is None else peft.combine(self.frozen,
                                                                      self.state.params)


class _SignalFlag:
  """Records SIGTERM/SIGINT so the loop can finish its step, save and return."""

  def __init__(self, enabled: bool):
    self.received = None
    self._old = {}
    if enabled:
      for sig in (signal.SIGTERM, signal.SIGINT):
        try:
          self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
          pass

  def _handle(self, signum, frame):
    self.received = signal.Signals(signum).name

  def restore(self):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def init_state_fn(model_config, tx, mesh, state_sh, compiler_options: dict | None = None):
  """The jitted fresh init, `seed -> TrainState` placed directly into its shards.

  The seed is an argument, not a constant, so one executable (and one compile-cache
  entry) serves every seed. Its program is small and compiles in seconds whatever the
  depth: parameters draw from the counter-hash key (t5jax.rng.init_key) and a
  scanned model initialises one layer body.
  """
  make = lambda seed: steps.init_state(model_init_params(model_config,
                                                         jax.random.PRNGKey(seed)), tx)
  return jax.jit(make, in_shardings=partitioning.replicated(mesh), out_shardings=state_sh,
                 compiler_options=compiler_options)


def create_state(model_config, tx, mesh, rule_set, state_sh, seed: int = 0, params=None,
                 compiler_options: dict | None = None):
  """A sharded TrainState: fresh init (inside jit, directly into its shards) or given params."""
  if params is None:
    init = init_state_fn(model_config, tx, mesh, state_sh, compiler_options)
    return init(np.uint32(seed % 2**32))
  params = jax.device_put(params, state_sh.params)
  return jax.jit(lambda p: steps.init_state(p, tx), in_shardings=(state_sh.params,),
                 out_shardings=state_sh, compiler_options=compiler_options)(params)


def _abstract_with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


class _Prefetcher:
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


def _describe_changes(meta: dict, ckpt) -> str:
  """'dtype float32 -> bfloat16, mesh 4x2 -> 8x1': what differs from the checkpoint's run."""
  parts = [f"{k} {a} -> {b}" for k, (a, b) in ckpt.changed.items()]
  stored = meta.get("runtime", {})
  parts += [f"{k} {stored[k]} -> {v}" for k, v in ckpt.runtime.items()
            if k in stored and stored[k] != v]
  return ", ".join(parts)


_LAYER = re.compile(r"^layers_(\d+)$")


def _split_path(path) -> tuple[tuple, tuple, int | None]:
  """(role, param path with 'layers' for any layer key, layer index or None).

  role: the keys before the parameter path (TrainState field, optimizer state
  position), without per_layer's (group index, 'inner_state') pair, which
  exists only for scanned stacks.
  """
  keys = list(path)
  role, i = [], 0
  while i < len(keys) and not isinstance(keys[i], jax.tree_util.DictKey):
    key = keys[i]
    following = keys[i + 1] if i + 1 < len(keys) else None
    if (isinstance(key, jax.tree_util.SequenceKey)
        and getattr(following, "name", None) == "inner_state"):
      i += 2
      continue
    role.append(str(key))
    i += 1
  names, index = [], None
  for key in keys[i:]:
    name = str(getattr(key, "key", key))
    match = _LAYER.match(name)
    if match:
      index, name = int(match.group(1)), "layers"
    names.append(name)
  return tuple(role), tuple(names), index


def relayout(tree, target):
  """`tree` (a TrainState) in the layer layout of `target` (abstract, same model).

  Converts between per-layer (`layers_{i}`) and scanned (`layers`, leading
  [num_layers] axis) parameters and every optimizer-state leaf that follows
  them (Adafactor's factored moments, per-layer counts). Leaves are matched by
  their role in the state and their parameter path, so any optax state that
  mirrors the parameter tree converts.
  """
  old = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    role, names, index = _split_path(path)
    old.setdefault((role, names), {}).setdefault(index, leaf)

  def convert(path, want):
    role, names, index = _split_path(path)
    found = old.get((role, names))
    if found is None:
      raise ValueError(f"Cannot convert the checkpoint to scan_layers="
                       f"{'layers' in names}: no leaf for {jax.tree_util.keystr(path)}.")
    if index is not None:  # per-layer target
      leaf = found.get(index)
      leaf = found[None][index] if leaf is None else leaf
    elif None in found:  # same layout, or an unlayered leaf
      leaf = found[None]
    else:  # scanned target from per-layer leaves
      leaf = jax.numpy.stack([found[i] for i in range(len(found))])
    if leaf.shape != want.shape:
      if leaf.shape == want.shape[1:]:  # e.g. one count for every layer of a stack
        leaf = jax.numpy.broadcast_to(leaf, want.shape)
      elif leaf.shape[1:] == want.shape:
        leaf = leaf[0]
      else:
        raise ValueError(f"Cannot convert {jax.tree_util.keystr(path)}: checkpoint shape "
                         f"{leaf.shape}, wanted {want.shape}.")
    return leaf.astype(want.dtype)

  return jax.tree_util.tree_map_with_path(convert, target)


def _interval_summary(hosts: list[dict]) -> dict:
  """What the log line and metrics.jsonl show for a logging interval (as T5X's
  summaries): means over its steps, the learning rate of its last step, and
  finite only if every step was."""
  out = {k: float(np.mean([h[k] for h in hosts])) for k in hosts[-1]
         if k not in ("step", "finite", "learning_rate")}
  out["finite"] = float(all(h["finite"] for h in hosts))
  if "learning_rate" in hosts[-1]:
    out["learning_rate"] = hosts[-1]["learning_rate"]
  return out


def _any_process(flag: bool) -> bool:
  """True if any process saw `flag` (signals reach hosts at different steps)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _adapter_start(model_config, init_params, seed: int, frozen_sh, prompt_ids):
  """(frozen base on its devices, trainable leaves to start from) of an adapter run.

  The base is `init_params` without adapter leaves (or the seed's random init of
  the plain model); the trainable leaves are the adapter leaves `init_params`
  already holds (an imported PEFT adapter), else `peft.init_adapter`'s.
  """
  from t5jax.conversion.tree import check_tree
  base_config = peft.base_config(model_config)
  if init_params is None:
    init = jax.jit(lambda key: model_init_params(base_config, key))
    init_params = jax.device_get(init(jax.random.PRNGKey(seed)))
  base = peft.without_adapter_leaves(init_params)
  check_tree(base, base_config, "init_params (the base of the adapter)")
  frozen = jax.device_put(peft.split(model_config, base)[1], frozen_sh)
  given = peft.split(model_config, init_params)[0]
  if peft.count(given):  # adapter leaves given, or the norm scales of norm-only tuning
    return frozen, given
  rng = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  return frozen, peft.init_adapter(model_config, base, rng, prompt_ids)


def train(model_config, config: TrainConfig, data_fn: DataFn, *,
          init_params=None, eval_data_fn: Callable[[], Iterator[dict]] | None = None,
          eval_hook: Callable[[int, Any], dict] | None = None,
          verbose: bool = True, base_checkpoint: str | None = None,
          base_step: int | None = None, prompt_ids=None) -> TrainResult:
  """Trains to config.num_steps, resuming from config.run_dir if it has checkpoints.

  init_params: float32 params (e.g. an imported pretrained checkpoint) to
  finetune from; ignored when the run directory already has a checkpoint.
  With an adapter (model_config.adapter, t5jax.peft) they are the frozen base
  and are needed on every start, resumes too (None: the seed's random init);
  only the adapter trains and is checkpointed, and run_dir/base.json records
  `base_checkpoint` (and `base_step`) as the base it belongs to. prompt_ids:
  the token ids of AdapterConfig.prompt_init_text, for prompt_init='text'.
  eval_data_fn: a finite iterator of eval batches for teacher-forced loss and
  accuracy, every config.eval_every steps. eval_hook(step, params) -> dict of
  floats runs at the same steps (e.g. decoding plus the task's metrics).
  """
  say = (lambda *a: print(*a, flush=True)) if verbose and jax.process_index() == 0 else (lambda *a: None)

  # 1. Mesh, rules and the optimizer.
  mesh = partitioning.make_mesh(config.mesh)
  rule_set = partitioning.rules(config.mesh.rules)
  per_shard = config.batch_size // config.microbatches
  if per_shard % partitioning.batch_divisor(mesh, rule_set):
    raise UsageError(
        f"batch_size/microbatches = {per_shard} is not divisible by the "
        f"{partitioning.batch_divisor(mesh, rule_set)} batch shards of mesh {dict(mesh.shape)}.")
  if config.batch_size % jax.process_count():
    raise UsageError(f"batch_size={config.batch_size} not divisible by "
                     f"{jax.process_count()} processes.")
  schedule = optim.make_schedule(config.optimizer)
  tx = optim.make_optimizer(config.optimizer, schedule)

  # 2. Shardings, the start-up printout and the jitted steps.
  abstract, state_sh = steps.state_shardings(mesh, model_config, rule_set, tx)
  adapter = model_config.adapter is not None
  frozen_sh = full_sh = None
  if adapter:
    frozen_abstract, frozen_sh, full_sh = steps.frozen_shardings(mesh, model_config, rule_set)
  table = partitioning.describe(mesh, abstract.params, state_sh.params, abstract.opt_state,
                                state_sh.opt_state)
  if config.print_shardings:
    say(table)
  else:  # the per-parameter table (~100 lines) goes to the run directory
    say(table.split("\n", 2)[0] + " " + table.split("\n", 2)[1])
    if jax.process_index() == 0:
      os.makedirs(config.run_dir, exist_ok=True)
      with open(os.path.join(config.run_dir, checkpoints.SHARDINGS_FILE), "w") as f:
        f.write(table + "\n")
      say(f"Each parameter's sharding: {os.path.join(config.run_dir, checkpoints.SHARDINGS_FILE)}.")
  if adapter:
    say(peft.describe_trainable(model_config, abstract.params,
                                peft.count(abstract.params) + peft.count(frozen_abstract)))
  say(f"Kernels: {xla_cpu.describe()}.")
  step_fn = steps.make_train_step(model_config, tx, config.loss, schedule, config.microbatches,
                                  skip_nonfinite=config.on_nonfinite == "skip")
  eval_fn = steps.make_eval_step(model_config, config.loss) if eval_data_fn else None
  compiled = steps.jit_steps(mesh, rule_set, state_sh, step_fn, eval_fn,
                             config.compiler_options, frozen_sh, full_sh)
  adapter_start = None
  if adapter:  # the frozen base is needed by fresh starts and resumes alike
    compiled.frozen, adapter_start = _adapter_start(model_config, init_params, config.seed,
                                                    frozen_sh, prompt_ids)
  full_params = (lambda s: peft.combine(compiled.frozen, s.params)) if adapter else (
      lambda s: s.params)

  # 3. Resume from the latest good checkpoint, else initialise. A checkpoint may
  # come from another mesh, process count or parameter-free model config
  # (checkpoints.PARAMETER_FREE_FIELDS): orbax reshards onto this run's shardings,
  # and a checkpoint of the other layer layout (scan_layers) is converted.
  runtime = {"mesh": "x".join(map(str, mesh.devices.shape)), "rules": config.mesh.rules,
             "processes": jax.process_count(), "devices": jax.device_count(),
             "microbatches": config.microbatches}
  ckpt = checkpoints.Checkpointer(config.run_dir, config.checkpoint, model_config, runtime)
  rng_sh = partitioning.replicated(mesh)
  base_rng = jax.random.PRNGKey(config.seed)
  abstract_rng = jax.ShapeDtypeStruct(base_rng.shape, base_rng.dtype, sharding=rng_sh)
  abstract_tree = {"state": _abstract_with_shardings(abstract, state_sh), "rng": abstract_rng}

  def abstract_for(stored: dict):  # the tree as the checkpoint holds it
    if stored.get("scan_layers", False) == model_config.scan_layers:
      return abstract_tree
    old = model_config.replace(scan_layers=stored["scan_layers"])
    old_abstract, old_sh = steps.state_shardings(mesh, old, rule_set, tx)
    return {"state": _abstract_with_shardings(old_abstract, old_sh), "rng": abstract_rng}

  start, restored, meta = ckpt.restore_latest(abstract_for)
  base_ref = peft.read_base_reference(config.run_dir) if adapter else None
  if restored is not None and base_ref and base_ref.get("checkpoint") and init_params is None:
    raise UsageError(
        f"{config.run_dir} trains a {model_config.adapter.method} adapter on the base "
        f"{base_ref['checkpoint']} (its {peft.BASE_FILE}), but no base was given to resume "
        f"with: pass the same init_checkpoint (train.init_checkpoint = "
        f"{base_ref['checkpoint']!r}).")
  if restored is not None:
    state, base_rng = restored["state"], restored["rng"]
    if meta["model_config"].get("scan_layers", False) != model_config.scan_layers:
      state = jax.jit(lambda old: relayout(old, abstract), out_shardings=state_sh)(state)
    say(f"Resumed from {config.run_dir} at step {start}.")
    changes = _describe_changes(meta, ckpt)
    if changes:
      say(f"Changed since step {start} was saved: {changes}.")
  else:
    with compilation.watch() as compile_init:
      state = create_state(model_config, tx, mesh, rule_set, state_sh, config.seed,
                           adapter_start if adapter else init_params, config.compiler_options)
    say(compile_init.describe("the state's init"))
    base_rng = jax.device_put(base_rng, rng_sh)
    start = 0
    say("Fresh start" + (" from the given params." if init_params is not None else "."))
    if adapter and jax.process_index() == 0:
      peft.write_base_reference(config.run_dir, base_checkpoint, config.seed, base_step)

  # 4. MFU bookkeeping.
  peak, peak_source = flops.peak_flops_per_device(config.peak_flops, model_config.dtype)
  say(f"Peak {peak / 1e12:.1f} TFLOP/s per device ({peak_source}).")

  # 5. The loop. Step s consumes batch s with dropout key fold_in(rng, s), so a
  # resumed run replays exactly what an uninterrupted one would have done. The host
  # never waits for a step it has dispatched except at a fetch: log, eval and
  # checkpoint steps, a signal, the first step (compilation) and the last. Metrics
  # stay on the device until then; the next batches are sharded on a background
  # thread meanwhile (`_Prefetcher`).
  writer = MetricsWriter(config.run_dir, config.num_steps, config.tensorboard,
                         console=verbose, active=jax.process_index() == 0)
  signals = _SignalFlag(config.handle_signals)
  history, stopped, step = [], "done", start
  rows_wanted = config.batch_size // jax.process_count()

  def make_batch(local):
    rows = np.shape(local["encoder_input_tokens"])[0]
    if rows != rows_wanted:
      raise UsageError(f"data_fn gave {rows} rows on each of {jax.process_count()} "
                       f"process(es); batch_size={config.batch_size} needs "
                       f"{rows_wanted} per process.")
    return partitioning.global_batch(local, mesh, rule_set)

  source = data_fn(start) if start < config.num_steps else iter(())
  data = _Prefetcher(source, make_batch, config.prefetch)
  saved_data = data if checkpoints.checkpointable(source) else None  # saved with each step
  if restored is not None and saved_data is not None and start < config.num_steps:
    if ckpt.restore_data(start, data):
      say(f"Input pipeline continues from its position saved at step {start} (no replay).")
    else:
      say(f"Input pipeline: no position saved with step {start} for {jax.process_count()} "
          f"process(es); replaying {start} batches to get there.")
  patience = config.checkpoint.early_stopping_patience
  multi = jax.process_count() > 1
  sync_every = config.sync_every or config.log_every
  pending = []  # (step, device metrics) not fetched yet
  step_flops, lengths, timer = None, None, None  # timer: (time, step) of the last fetch
  try:
    while step < config.num_steps:
      batch = data.next(step)
      if step_flops is None:
        lengths = (batch["encoder_input_tokens"].shape[1], batch["decoder_input_tokens"].shape[1])
        step_flops = flops.train_step_flops(model_config, config.batch_size, *lengths)
      # The first call compiles (or loads from the compile cache): say what that cost.
      with compilation.watch() if step == start else contextlib.nullcontext() as compile_step:
        state, metrics = compiled.train_step(state, batch, jax.random.fold_in(base_rng, step))
      if compile_step is not None:
        say(compile_step.describe("the train step"))
      step += 1
      pending.append((step, metrics))

      evaluating = bool(config.eval_every) and step % config.eval_every == 0
      logging = step % config.log_every == 0 or step in (1, config.num_steps) or evaluating
      saving = ckpt.should_save(step)
      syncing = multi and (step % sync_every == 0 or saving or step == config.num_steps)
      signalled = not multi and signals.received is not None
      if not (logging or saving or syncing or signalled or step == start + 1):
        continue

      # A fetch: waits for the last dispatched step. Per-step metrics come back
      # together; timing is the wall time since the last fetch over its steps.
      fetched = jax.device_get([m for _, m in pending])
      now = time.perf_counter()
      hosts = [{"step": s, **{k: float(v) for k, v in m.items()}}
               for (s, _), m in zip(pending, fetched)]
      if timer is not None:  # the first fetch of a process includes compilation
        elapsed = (now - timer[0]) / (step - timer[1])
        # tokens_per_s counts every encoder + decoder position (what the FLOPs
        # count); target_tokens_per_s only the real (loss-weighted) targets.
        for h in hosts:
          h.update(step_time=elapsed, seq_per_s=config.batch_size / elapsed,
                   tokens_per_s=config.batch_size * sum(lengths) / elapsed,
                   target_tokens_per_s=h["num_tokens"] / elapsed,
                   mfu=flops.mfu(step_flops, elapsed, mesh.devices.size, peak))
      history.extend(hosts)
      pending = []

      bad = [h["step"] - 1 for h in hosts if not h["finite"]]
      if bad and config.on_nonfinite == "stop":
        stopped = "nonfinite"
        first = next(h for h in hosts if not h["finite"])
        say(f"Non-finite loss ({first['loss']}) or grad norm ({first['grad_norm']}) at step "
            f"{bad[0]} (the update from batch {bad[0]}); stopping at step {step}. The last "
            f"good checkpoint is step {ckpt.latest_step()}.")
        break
      for s in bad:
        say(f"Non-finite loss at step {s}: update skipped.")

      eval_metrics = {}
      if evaluating:
        if eval_data_fn:
          eval_metrics = evaluate(compiled, full_params(state), eval_data_fn(), mesh, rule_set)
        if eval_hook:  # e.g. decode + task metrics (t5jax.run); returns host floats
          eval_metrics.update(eval_hook(step, full_params(state)))
      # Step 1 too: the starting loss, against which the curve is read.
      if logging:
        interval = [h for h in hosts if "step_time" in h] or hosts
        writer.write(step, {**_interval_summary(interval), **eval_metrics})
      if saving or eval_metrics and config.checkpoint.best_metric:
        ckpt.save(step, {"state": state, "rng": base_rng}, eval_metrics or None, data=saved_data)
      best = ckpt.best if ckpt.best and ckpt.best["metric"] == config.checkpoint.best_metric \
          else None
      if evaluating and patience and best and (step - best["step"]) // config.eval_every >= patience:
        stopped = "early_stopped"
        ckpt.save(step, {"state": state, "rng": base_rng}, data=saved_data)
        say(f"Early stopping at step {step}: {patience} evals without a better "
            f"{ckpt.best['metric']} than {ckpt.best['value']:.6g} (step {ckpt.best['step']}).")
        break
      if (signalled or syncing) and _any_process(signals.received is not None):
        stopped = "preempted"
        ckpt.save(step, {"state": state, "rng": base_rng}, data=saved_data)
        ckpt.wait()
        say(f"Received {signals.received or 'a signal on another process'}: saved step {step} "
            f"to {config.run_dir}; exiting. Rerun the same command to resume.")
        break
      timer = (time.perf_counter(), step)  # eval and checkpoint time are not step time
    if stopped == "done" and step == config.num_steps and step > start:
      ckpt.save(step, {"state": state, "rng": base_rng}, data=saved_data)
  finally:
    data.close()
    signals.restore()
    ckpt.close()
    writer.close()
  return TrainResult(state=state, step=step, history=history, stopped=stopped,
                     frozen=compiled.frozen)


def evaluate(compiled, params, batches: Iterator[dict], mesh, rule_set) -> dict:
  """Token-weighted loss/accuracy over every batch of an eval iterator."""
  total = None
  for local in batches:
    stats = jax.device_get(compiled.eval_step(params, partitioning.global_batch(
        local, mesh, rule_set)))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  if total is None:
    return {}
  return {f"eval/{k}": float(v) for k, v in losses.summarize(total).items()}


__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "create_state",
           "initialize_distributed"]
