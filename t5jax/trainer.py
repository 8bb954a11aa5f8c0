"""The training loop: mesh -> state -> resume -> steps -> checkpoints, in that order.

    result = train(get_config("tiny"), TrainConfig(run_dir="/tmp/run", num_steps=100,
                   batch_size=32), data_fn)

`data_fn(start_step)` returns an iterator over this process's numpy batches
for steps start_step, start_step + 1, ...; with P processes each yields
batch_size / P rows. Everything else (resume, preemption, metrics) is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from t5jax import (checkpoints, compilation, flops, losses, optim, partitioning, peft,
                   ops, prefetch, train_step as steps)
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
  from t5jax.trees import check_tree
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


@dataclasses.dataclass
class _Setup:
  """What train builds before the loop: the mesh, the optimizer and the jitted steps."""

  mesh: Any
  rule_set: Any
  tx: Any
  abstract: Any  # the train state's shapes
  state_sh: Any  # and shardings
  compiled: steps.Compiled
  adapter_start: Any  # (trainable leaves to start from) of an adapter run, else None
  full_params: Callable  # state -> the model's params (with an adapter: base + adapter)


def _setup(model_config, config: TrainConfig, evaluating: bool, init_params, prompt_ids,
           say) -> _Setup:
  """Mesh, rules, optimizer, shardings (summarised), the jitted steps, an adapter's base."""
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

  abstract, state_sh = steps.state_shardings(mesh, model_config, rule_set, tx)
  adapter = model_config.adapter is not None
  frozen_sh = full_sh = None
  if adapter:
    frozen_abstract, frozen_sh, full_sh = steps.frozen_shardings(mesh, model_config, rule_set)
  _describe_shardings(config, mesh, abstract, state_sh, say)
  if adapter:
    say(peft.describe_trainable(model_config, abstract.params,
                                peft.count(abstract.params) + peft.count(frozen_abstract)))
  say(f"Kernels: {ops.describe()}.")
  step_fn = steps.make_train_step(model_config, tx, config.loss, schedule, config.microbatches,
                                  skip_nonfinite=config.on_nonfinite == "skip")
  eval_fn = steps.make_eval_step(model_config, config.loss) if evaluating else None
  compiled = steps.jit_steps(mesh, rule_set, state_sh, step_fn, eval_fn,
                             config.compiler_options, frozen_sh, full_sh)
  adapter_start = None
  if adapter:  # the frozen base is needed by fresh starts and resumes alike
    compiled.frozen, adapter_start = _adapter_start(model_config, init_params, config.seed,
                                                    frozen_sh, prompt_ids)
  full_params = (lambda s: peft.combine(compiled.frozen, s.params)) if adapter else (
      lambda s: s.params)
  return _Setup(mesh, rule_set, tx, abstract, state_sh, compiled, adapter_start, full_params)


def _describe_shardings(config: TrainConfig, mesh, abstract, state_sh, say) -> None:
  """One mesh / memory line; the per-parameter table to run_dir (or the console)."""
  table = partitioning.describe(mesh, abstract.params, state_sh.params, abstract.opt_state,
                                state_sh.opt_state)
  if config.print_shardings:
    say(table)
    return
  say(" ".join(table.split("\n", 2)[:2]))
  if jax.process_index() == 0:
    path = os.path.join(config.run_dir, checkpoints.SHARDINGS_FILE)
    os.makedirs(config.run_dir, exist_ok=True)
    with open(path, "w") as f:
      f.write(table + "\n")
    say(f"Each parameter's sharding: {path}.")


def _restore_or_init(model_config, config: TrainConfig, setup: _Setup, init_params,
                     base_checkpoint, base_step, say):
  """(checkpointer, state, rng, start step, restored?): the latest good checkpoint of
  run_dir, else a fresh state. A checkpoint may come from another mesh, process count or
  parameter-free model config (checkpoints.PARAMETER_FREE_FIELDS): orbax reshards onto
  this run's shardings, and a checkpoint of the other layer layout (scan_layers) is
  converted."""
  mesh, adapter = setup.mesh, model_config.adapter is not None
  runtime = {"mesh": "x".join(map(str, mesh.devices.shape)), "rules": config.mesh.rules,
             "processes": jax.process_count(), "devices": jax.device_count(),
             "microbatches": config.microbatches}
  ckpt = checkpoints.Checkpointer(config.run_dir, config.checkpoint, model_config, runtime)
  rng_sh = partitioning.replicated(mesh)
  base_rng = jax.random.PRNGKey(config.seed)
  abstract_rng = jax.ShapeDtypeStruct(base_rng.shape, base_rng.dtype, sharding=rng_sh)

  def abstract_for(stored: dict):  # the tree as the checkpoint holds it
    old = model_config.replace(scan_layers=stored.get("scan_layers", False))
    old_abstract, old_sh = ((setup.abstract, setup.state_sh)
                            if old.scan_layers == model_config.scan_layers
                            else steps.state_shardings(mesh, old, setup.rule_set, setup.tx))
    return {"state": _abstract_with_shardings(old_abstract, old_sh), "rng": abstract_rng}

  start, restored, meta = ckpt.restore_latest(abstract_for)
  base_ref = checkpoints.read_base_reference(config.run_dir) if adapter else None
  if restored is not None and base_ref and base_ref.get("checkpoint") and init_params is None:
    raise UsageError(
        f"{config.run_dir} trains a {model_config.adapter.method} adapter on the base "
        f"{base_ref['checkpoint']} (its {checkpoints.BASE_FILE}), but no base was given to resume "
        f"with: pass the same init_checkpoint (train.init_checkpoint = "
        f"{base_ref['checkpoint']!r}).")
  if restored is not None:
    state, base_rng = restored["state"], restored["rng"]
    if meta["model_config"].get("scan_layers", False) != model_config.scan_layers:
      state = jax.jit(lambda old: relayout(old, setup.abstract),
                      out_shardings=setup.state_sh)(state)
    say(f"Resumed from {config.run_dir} at step {start}.")
    changes = _describe_changes(meta, ckpt)
    if changes:
      say(f"Changed since step {start} was saved: {changes}.")
    return ckpt, state, base_rng, start, True
  with compilation.watch() as compile_init:
    state = create_state(model_config, setup.tx, mesh, setup.rule_set, setup.state_sh,
                         config.seed, setup.adapter_start if adapter else init_params,
                         config.compiler_options)
  say(compile_init.describe("the state's init"))
  say("Fresh start" + (" from the given params." if init_params is not None else "."))
  if adapter and jax.process_index() == 0:
    checkpoints.write_base_reference(config.run_dir, base_checkpoint, config.seed, base_step)
  return ckpt, state, jax.device_put(base_rng, rng_sh), 0, False


def _input(config: TrainConfig, data_fn: DataFn, setup: _Setup, ckpt, start: int,
           restored: bool, say):
  """(prefetcher of global batches from `start`, it again if its position can be saved
  with each checkpoint, else None); a restored run continues from the saved position."""
  rows_wanted = config.batch_size // jax.process_count()

  def make_batch(local):
    rows = np.shape(local["encoder_input_tokens"])[0]
    if rows != rows_wanted:
      raise UsageError(f"data_fn gave {rows} rows on each of {jax.process_count()} "
                       f"process(es); batch_size={config.batch_size} needs "
                       f"{rows_wanted} per process.")
    return partitioning.global_batch(local, setup.mesh, setup.rule_set)

  source = data_fn(start) if start < config.num_steps else iter(())
  data = prefetch.Prefetcher(source, make_batch, config.prefetch)
  saved_data = data if checkpoints.checkpointable(source) else None
  if restored and saved_data is not None and start < config.num_steps:
    if ckpt.restore_data(start, data):
      say(f"Input pipeline continues from its position saved at step {start} (no replay).")
    else:
      say(f"Input pipeline: no position saved with step {start} for {jax.process_count()} "
          f"process(es); replaying {start} batches to get there.")
  return data, saved_data


class _Meter:
  """Per-step host metrics at each fetch, with step time, throughput and MFU: the wall
  time since the last fetch over its steps (eval and checkpoint time excluded)."""

  def __init__(self, model_config, config: TrainConfig, devices: int, say):
    self.peak, source = flops.peak_flops_per_device(config.peak_flops, model_config.dtype)
    say(f"Peak {self.peak / 1e12:.1f} TFLOP/s per device ({source}).")
    self.model_config, self.batch_size, self.devices = model_config, config.batch_size, devices
    self.step_flops = self.lengths = self.timer = None  # timer: (time, step) of the last fetch

  def see(self, batch: dict) -> None:
    if self.step_flops is None:  # the first batch gives the lengths
      self.lengths = (batch["encoder_input_tokens"].shape[1],
                      batch["decoder_input_tokens"].shape[1])
      self.step_flops = flops.train_step_flops(self.model_config, self.batch_size,
                                               *self.lengths)

  def fetch(self, pending: list, step: int) -> list[dict]:
    """Waits for the last dispatched step; its metrics and those before it, on the host."""
    fetched = jax.device_get([m for _, m in pending])
    now = time.perf_counter()
    hosts = [{"step": s, **{k: float(v) for k, v in m.items()}}
             for (s, _), m in zip(pending, fetched)]
    if self.timer is not None:  # the first fetch of a process includes compilation
      elapsed = (now - self.timer[0]) / (step - self.timer[1])
      # tokens_per_s counts every encoder + decoder position (what the FLOPs count);
      # target_tokens_per_s only the real (loss-weighted) targets.
      for h in hosts:
        h.update(step_time=elapsed, seq_per_s=self.batch_size / elapsed,
                 tokens_per_s=self.batch_size * sum(self.lengths) / elapsed,
                 target_tokens_per_s=h["num_tokens"] / elapsed,
                 mfu=flops.mfu(self.step_flops, elapsed, self.devices, self.peak))
    return hosts

  def restart(self, step: int) -> None:
    self.timer = (time.perf_counter(), step)


@dataclasses.dataclass
class _Fetch:
  """A step at which the loop waits for the device: what the hooks see and share."""

  step: int
  state: Any
  rng: Any
  hosts: list  # per-step host metrics since the last fetch
  evaluating: bool
  logging: bool
  saving: bool
  syncing: bool
  signalled: bool
  eval_metrics: dict = dataclasses.field(default_factory=dict)


def _due(config: TrainConfig, ckpt, signals, step: int, start: int) -> dict | None:
  """What is due after `step` (None: nothing, the loop runs on without waiting)."""
  multi = jax.process_count() > 1
  due = dict(evaluating=bool(config.eval_every) and step % config.eval_every == 0,
             saving=ckpt.should_save(step),
             signalled=not multi and signals.received is not None)
  due["logging"] = (step % config.log_every == 0 or step in (1, config.num_steps)
                    or due["evaluating"])
  due["syncing"] = multi and (step % (config.sync_every or config.log_every) == 0
                              or due["saving"] or step == config.num_steps)
  return due if any(due.values()) or step == start + 1 else None


def _hooks(config: TrainConfig, setup: _Setup, ckpt, writer, signals, saved_data,
           eval_data_fn, eval_hook, say) -> list[Callable[[_Fetch], str | None]]:
  """The periodic work at a fetch, in order; a hook returning a reason stops the run."""
  patience = config.checkpoint.early_stopping_patience
  save = lambda f: ckpt.save(f.step, {"state": f.state, "rng": f.rng}, data=saved_data)

  def nonfinite(f):
    bad = [h for h in f.hosts if not h["finite"]]
    if bad and config.on_nonfinite == "stop":
      s = bad[0]["step"] - 1
      say(f"Non-finite loss ({bad[0]['loss']}) or grad norm ({bad[0]['grad_norm']}) at step "
          f"{s} (the update from batch {s}); stopping at step {f.step}. The last good "
          f"checkpoint is step {ckpt.latest_step()}.")
      return "nonfinite"
    for h in bad:
      say(f"Non-finite loss at step {h['step'] - 1}: update skipped.")

  def evaluate_(f):
    if not f.evaluating:
      return
    params = setup.full_params(f.state)
    if eval_data_fn:
      f.eval_metrics.update(evaluate(setup.compiled.eval_step, params, eval_data_fn(), setup.mesh,
                                     setup.rule_set))
    if eval_hook:  # e.g. decode + task metrics (t5jax.run); returns host floats
      f.eval_metrics.update(eval_hook(f.step, params))

  def log(f):  # step 1 too: the starting loss, against which the curve is read
    if f.logging:
      interval = [h for h in f.hosts if "step_time" in h] or f.hosts
      writer.write(f.step, {**_interval_summary(interval), **f.eval_metrics})

  def checkpoint(f):
    if f.saving or f.eval_metrics and config.checkpoint.best_metric:
      ckpt.save(f.step, {"state": f.state, "rng": f.rng}, f.eval_metrics or None,
                data=saved_data)

  def early_stop(f):
    best = ckpt.best if ckpt.best and ckpt.best["metric"] == config.checkpoint.best_metric \
        else None
    if f.evaluating and patience and best and \
        (f.step - best["step"]) // config.eval_every >= patience:
      save(f)
      say(f"Early stopping at step {f.step}: {patience} evals without a better "
          f"{best['metric']} than {best['value']:.6g} (step {best['step']}).")
      return "early_stopped"

  def preemption(f):
    if (f.signalled or f.syncing) and _any_process(signals.received is not None):
      save(f)
      ckpt.wait()
      say(f"Received {signals.received or 'a signal on another process'}: saved step "
          f"{f.step} to {config.run_dir}; exiting. Rerun the same command to resume.")
      return "preempted"

  return [nonfinite, evaluate_, log, checkpoint, early_stop, preemption]


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
  say = (lambda *a: print(*a, flush=True)) if verbose and jax.process_index() == 0 \
      else (lambda *a: None)
  setup = _setup(model_config, config, eval_data_fn is not None, init_params, prompt_ids, say)
  ckpt, state, rng, start, restored = _restore_or_init(
      model_config, config, setup, init_params, base_checkpoint, base_step, say)
  meter = _Meter(model_config, config, setup.mesh.devices.size, say)
  data, saved_data = _input(config, data_fn, setup, ckpt, start, restored, say)
  writer = MetricsWriter(config.run_dir, config.num_steps, config.tensorboard,
                         console=verbose, active=jax.process_index() == 0)
  signals = _SignalFlag(config.handle_signals)
  hooks = _hooks(config, setup, ckpt, writer, signals, saved_data, eval_data_fn, eval_hook,
                 say)

  # Step s consumes batch s with dropout key fold_in(rng, s), so a resumed run replays
  # exactly what an uninterrupted one would have done. The host waits for a dispatched
  # step only at a fetch (`_due`: log, eval and checkpoint steps, a signal, the first
  # step and the last); metrics stay on the device until then, and the next batches
  # are sharded on the prefetcher's thread meanwhile.
  history, stopped, step, pending = [], "done", start, []
  try:
    while step < config.num_steps and stopped == "done":
      batch = data.next(step)
      meter.see(batch)
      # The first call compiles (or loads from the compile cache): say what that cost.
      with compilation.watch() if step == start else contextlib.nullcontext() as compile_step:
        state, metrics = setup.compiled.train_step(state, batch, jax.random.fold_in(rng, step))
      if compile_step is not None:
        say(compile_step.describe("the train step"))
      step += 1
      pending.append((step, metrics))
      due = _due(config, ckpt, signals, step, start)
      if due is None:
        continue
      fetch = _Fetch(step, state, rng, meter.fetch(pending, step), **due)
      history.extend(fetch.hosts)
      pending = []
      stopped = next(filter(None, (hook(fetch) for hook in hooks)), "done")
      meter.restart(step)
    if stopped == "done" and step == config.num_steps and step > start:
      ckpt.save(step, {"state": state, "rng": rng}, data=saved_data)
  finally:
    data.close()
    signals.restore()
    ckpt.close()
    writer.close()
  return TrainResult(state=state, step=step, history=history, stopped=stopped,
                     frozen=setup.compiled.frozen)


def evaluate(eval_step, params, batches: Iterator[dict], mesh=None, rule_set=None) -> dict:
  """Token-weighted loss/accuracy over every batch of an eval iterator: the one evaluation
  of a training run and of `t5jax eval` (t5jax.scoring.teacher_forced_metrics).

  eval_step(params, batch) -> loss sums (train_step.make_eval_step, jitted); with a `mesh`
  each process's rows are made one global batch first."""
  total = None
  for local in batches:
    batch = local if mesh is None else partitioning.global_batch(local, mesh, rule_set)
    stats = jax.device_get(eval_step(params, batch))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  if total is None:
    return {}
  return {f"eval/{k}": float(v) for k, v in losses.summarize(total).items()}


__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "create_state",
           "initialize_distributed"]
