"""The training loop: mesh -> state -> resume -> steps -> checkpoints, in that order.

    result = train(get_config("tiny"), TrainConfig(run_dir="/tmp/run", num_steps=100,
                   batch_size=32), data_fn)

`data_fn(start_step)` returns an iterator over this process's numpy batches
for steps start_step, start_step + 1, ...; with P processes each yields
batch_size / P rows. Everything else (resume, preemption, metrics) is here.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from t5jax import checkpoints, flops, losses, optim, partitioning, train_step as steps, xla_cpu
from t5jax.distributed import initialize_distributed  # noqa: F401 (re-exported)
from t5jax.metrics import MetricsWriter
from t5jax.model import init_params as model_init_params

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
  compiler_options: dict | None = None  # XLA options for the jitted steps (see jit_steps)
  # Batches sharded onto the devices ahead of the step that uses them, on a background
  # thread (0: on the main thread, just before the step).
  prefetch: int = 2
  # With several processes, how often (in steps) they agree on whether any got a
  # signal; 0: at every fetch of metrics (log, eval and checkpoint steps).
  sync_every: int = 0

  def __post_init__(self):
    if self.on_nonfinite not in ("stop", "skip"):
      raise ValueError(f"TrainConfig.on_nonfinite={self.on_nonfinite!r}: 'stop' or 'skip'.")
    if self.log_every < 1 or self.prefetch < 0 or self.sync_every < 0:
      raise ValueError(f"TrainConfig: log_every={self.log_every} must be >= 1, prefetch="
                       f"{self.prefetch} and sync_every={self.sync_every} >= 0.")
    if self.batch_size % self.microbatches:
      raise ValueError(f"TrainConfig.batch_size={self.batch_size} is not divisible by "
                       f"microbatches={self.microbatches}.")


@dataclasses.dataclass
class TrainResult:
  state: Any
  step: int
  history: list  # one dict of host metrics per step run in this call
  stopped: str  # 'done', 'preempted' or 'nonfinite'


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


def create_state(model_config, tx, mesh, rule_set, state_sh, seed: int = 0, params=None,
                 compiler_options: dict | None = None):
  """A sharded TrainState: fresh init (inside jit, directly into its shards) or given params."""
  if params is None:
    make = lambda: steps.init_state(model_init_params(model_config, jax.random.PRNGKey(seed)), tx)
    return jax.jit(make, out_shardings=state_sh, compiler_options=compiler_options)()
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
  """

  _END = object()

  def __init__(self, data: Iterator[dict], make_batch: Callable[[dict], dict], depth: int):
    self._data, self._make, self._depth = data, make_batch, depth
    if depth:
      self._queue = queue.Queue(maxsize=depth)
      self._stop = threading.Event()
      self._thread = threading.Thread(target=self._fill, daemon=True, name="t5jax-prefetch")
      self._thread.start()

  def _fill(self):
    try:
      for local in self._data:
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
    item = self._queue.get() if self._depth else next(self._data, self._END)
    if item is self._END:
      raise ValueError(f"data_fn's iterator ended before step {step}: it must yield a batch "
                       "for every step up to num_steps.")
    if isinstance(item, BaseException):
      raise item
    return item if self._depth else self._make(item)

  def close(self):
    if self._depth:
      self._stop.set()
      self._thread.join(timeout=5)


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


def train(model_config, config: TrainConfig, data_fn: DataFn, *,
          init_params=None, eval_data_fn: Callable[[], Iterator[dict]] | None = None,
          eval_hook: Callable[[int, Any], dict] | None = None,
          verbose: bool = True) -> TrainResult:
  """Trains to config.num_steps, resuming from config.run_dir if it has checkpoints.

  init_params: float32 params (e.g. an imported pretrained checkpoint) to
  finetune from; ignored when the run directory already has a checkpoint.
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
    raise ValueError(
        f"batch_size/microbatches = {per_shard} is not divisible by the "
        f"{partitioning.batch_divisor(mesh, rule_set)} batch shards of mesh {dict(mesh.shape)}.")
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size={config.batch_size} not divisible by "
                     f"{jax.process_count()} processes.")
  tx = optim.make_optimizer(config.optimizer)
  schedule = optim.make_schedule(config.optimizer)

  # 2. Shardings, the start-up printout and the jitted steps.
  abstract, state_sh = steps.state_shardings(mesh, model_config, rule_set, tx)
  say(partitioning.describe(mesh, abstract.params, state_sh.params, abstract.opt_state,
                            state_sh.opt_state))
  say(f"Kernels: {'XLA-CPU' if xla_cpu.enabled() else 'standard'} path "
      f"({xla_cpu.ENV}={xla_cpu.setting()}, backend {jax.default_backend()}).")
  step_fn = steps.make_train_step(model_config, tx, config.loss, schedule, config.microbatches,
                                  skip_nonfinite=config.on_nonfinite == "skip")
  eval_fn = steps.make_eval_step(model_config, config.loss) if eval_data_fn else None
  compiled = steps.jit_steps(mesh, rule_set, state_sh, step_fn, eval_fn,
                             config.compiler_options)

  # 3. Resume from the latest good checkpoint, else initialise.
  ckpt = checkpoints.Checkpointer(config.run_dir, config.checkpoint, model_config)
  rng_sh = partitioning.replicated(mesh)
  base_rng = jax.random.PRNGKey(config.seed)
  abstract_tree = {"state": _abstract_with_shardings(abstract, state_sh),
                   "rng": jax.ShapeDtypeStruct(base_rng.shape, base_rng.dtype, sharding=rng_sh)}
  start, restored = ckpt.restore_latest(abstract_tree)
  if restored is not None:
    state, base_rng = restored["state"], restored["rng"]
    say(f"Resumed from {config.run_dir} at step {start}.")
  else:
    state = create_state(model_config, tx, mesh, rule_set, state_sh, config.seed, init_params,
                         config.compiler_options)
    base_rng = jax.device_put(base_rng, rng_sh)
    start = 0
    say("Fresh start" + (" from the given params." if init_params is not None else "."))

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
      raise ValueError(f"data_fn gave {rows} rows on each of {jax.process_count()} "
                       f"process(es); batch_size={config.batch_size} needs "
                       f"{rows_wanted} per process.")
    return partitioning.global_batch(local, mesh, rule_set)

  data = _Prefetcher(data_fn(start) if start < config.num_steps else iter(()), make_batch,
                     config.prefetch)
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
      state, metrics = compiled.train_step(state, batch, jax.random.fold_in(base_rng, step))
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
          eval_metrics = evaluate(compiled, state.params, eval_data_fn(), mesh, rule_set)
        if eval_hook:  # e.g. decode + task metrics (t5jax.run); returns host floats
          eval_metrics.update(eval_hook(step, state.params))
      # Step 1 too: the starting loss, against which the curve is read.
      if logging:
        interval = [h for h in hosts if "step_time" in h] or hosts
        writer.write(step, {**_interval_summary(interval), **eval_metrics})
      if saving or eval_metrics and config.checkpoint.best_metric:
        ckpt.save(step, {"state": state, "rng": base_rng}, eval_metrics or None)
      if (signalled or syncing) and _any_process(signals.received is not None):
        stopped = "preempted"
        ckpt.save(step, {"state": state, "rng": base_rng})
        ckpt.wait()
        say(f"Received {signals.received or 'a signal on another process'}: saved step {step} "
            f"to {config.run_dir}; exiting. Rerun the same command to resume.")
        break
      timer = (time.perf_counter(), step)  # eval and checkpoint time are not step time
    if stopped == "done" and step == config.num_steps and step > start:
      ckpt.save(step, {"state": state, "rng": base_rng})
  finally:
    data.close()
    signals.restore()
    ckpt.close()
    writer.close()
  return TrainResult(state=state, step=step, history=history, stopped=stopped)


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
