"""Training checkpoints in a run directory, with orbax.

    ckpt = Checkpointer(run_dir, CheckpointConfig(every_steps=1000, keep=3), model_config)
    # abstract_* : jax.ShapeDtypeStruct trees with shardings; (None, None) on a fresh run
    start, tree = ckpt.restore_latest({"state": abstract_state, "rng": abstract_rng})
    ckpt.restore_data(start, data)  # the input pipeline's position, if it was saved
    ...
    if ckpt.should_save(step):
      ckpt.save(step, {"state": state, "rng": rng}, data=data)  # async if configured
    ckpt.close()  # waits for pending saves

Layout (this module owns the run directory's format, and is the only writer of
these files): run_dir/model_config.json (the T5Config, checked on every start),
best.json (the best checkpoints by an eval metric; `read_best`), base.json (an
adapter run's base; `write_base_reference`), shardings.txt, and
run_dir/checkpoints/<step>/{state, meta, data}. t5jax.conversion reads a run
directory through these functions. Orbax writes each step into a
temporary directory and renames it when complete, so an interrupted save
(kill -9, preemption) leaves a tmp directory that `all_steps()` ignores,
never a half-written <step>; a <step> that still fails to restore (disk
corruption) is skipped with a warning in favour of the previous one.

`data` holds each process's input-pipeline state (data/process_<i>-of-<n>/),
written by the data source's own `save_state(directory)` at the moment the
step is saved, so a resume continues the pipeline instead of replaying it.

Model-config fields that change no parameter (PARAMETER_FREE_FIELDS: dtype,
remat, dropout, scan_layers) may differ on resume; any other field is
refused, naming it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from t5jax.errors import UsageError

log = logging.getLogger(__name__)

# The run directory's files besides checkpoints/<step>/ (this module owns them all):
MODEL_CONFIG_FILE = "model_config.json"  # the T5Config, checked on every start
# {step, metric, value, mode, ranked}: the best checkpoint by an eval metric; ranked lists
# every evaluated checkpoint ({step, value}) best first.
BEST_FILE = "best.json"
# An adapter run's base: {checkpoint (absolute path, None: the seed's random init), seed, step}.
BASE_FILE = "base.json"
SHARDINGS_FILE = "shardings.txt"  # each parameter's sharding, written at start-up


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 1000
  keep: int = 3  # the last `keep` checkpoints
  asynchronous: bool = True  # write in a background thread while training continues
  # Also keep the `keep_best` best checkpoints by this eval metric (e.g. 'eval/loss').
  best_metric: str | None = None
  best_mode: str = "min"
  keep_best: int = 1
  # Stop training after this many evaluations without a new best `best_metric`
  # (0: never). The best step is recorded in run_dir/best.json.
  early_stopping_patience: int = 0

  def __post_init__(self):
    if self.best_mode not in ("min", "max"):
      raise UsageError(f"CheckpointConfig.best_mode={self.best_mode!r}: 'min' or 'max'.")
    if self.early_stopping_patience < 0:
      raise UsageError(f"CheckpointConfig.early_stopping_patience="
                       f"{self.early_stopping_patience} must be >= 0.")
    if self.early_stopping_patience and not self.best_metric:
      raise UsageError("CheckpointConfig.early_stopping_patience needs best_metric (the eval "
                       "metric that must improve), e.g. CheckpointConfig.best_metric = "
                       "'eval/loss'.")


class ConfigMismatchError(UsageError):
  pass


# T5Config fields that change no parameter's name, shape or meaning: a run may
# resume with them changed (scan_layers changes the layout, which is converted).
PARAMETER_FREE_FIELDS = ("dtype", "matmul_precision", "remat_policy", "dropout_rate",
                         "scan_layers")


def config_to_json(config) -> dict:
  """The config as JSON reads it back (tuples as lists, e.g. an AdapterConfig's
  target_modules), so a stored and a current config compare equal."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def _with_defaults(stored: dict, config) -> dict:
  """A stored config with fields added to the dataclass since (e.g. scan_layers)
  at their defaults, so runs written before a new field still resume."""
  out = dict(stored)
  for field in dataclasses.fields(config):
    if field.name not in out and field.default is not dataclasses.MISSING:
      out[field.name] = field.default
  return out


def _architecture_diff(stored: dict, current: dict) -> dict:
  return {k: (stored.get(k), current.get(k)) for k in sorted(set(stored) | set(current))
          if k not in PARAMETER_FREE_FIELDS and stored.get(k) != current.get(k)}


def stored_model_config(run_dir: str) -> dict | None:
  """run_dir/model_config.json as a dict; None if there is none."""
  path = os.path.join(run_dir, MODEL_CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value: dict) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)  # atomic: never a half-written file


def write_base_reference(run_dir: str, checkpoint: str | None, seed: int,
                         step: int | None = None) -> None:
  """run_dir/base.json: the base an adapter run trains on (None: the seed's random init)."""
  os.makedirs(run_dir, exist_ok=True)
  _write_json(os.path.join(run_dir, BASE_FILE),
              {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None,
               "seed": int(seed), "step": step})


def read_base_reference(run_dir: str) -> dict | None:
  """run_dir/base.json (see write_base_reference), or None if the run has none."""
  path = os.path.join(run_dir, BASE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def run_steps(run_dir: str) -> list[int]:
  """The complete checkpoint steps of a run directory, oldest first."""
  root = os.path.join(run_dir, "checkpoints")
  # Only finished steps: orbax writes into a temporary folder and renames it.
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def ranked_steps(best: dict | None) -> list[dict]:
  """best.json's evaluated checkpoints ({step, value}), best first; a best.json written
  before `ranked` existed gives its one best step."""
  if not best:
    return []
  if best.get("ranked"):
    return [{"step": int(r["step"]), "value": float(r["value"])} for r in best["ranked"]]
  return [{"step": int(best["step"]), "value": float(best.get("value", float("nan")))}]


def read_best(run_dir: str) -> dict | None:
  """run_dir/best.json: {step, metric, value, mode, ranked} (ranked: every evaluated
  checkpoint, best first), or None if the run has none; one that is not such a record is
  a UsageError saying how to go on."""
  path = os.path.join(run_dir, BEST_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      best = json.load(f)
    int(best["step"])
    return best
  except (ValueError, KeyError, TypeError) as e:
    raise UsageError(f"{path} is not a best-checkpoint record ({type(e).__name__}: {e}); "
                     "delete it, or pass --step=latest or a step number.") from None


def check_model_config(run_dir: str, config) -> dict:
  """Writes run_dir/model_config.json on a fresh run; on a resume refuses a
  different architecture and returns {field: (stored, now)} of the
  parameter-free fields that changed (the file is then updated to `config`)."""
  path = os.path.join(run_dir, MODEL_CONFIG_FILE)
  current = config_to_json(config)
  stored = stored_model_config(run_dir)
  changed = {}
  if stored is not None:
    stored = _with_defaults(stored, config)
    diff = _architecture_diff(stored, current)
    if diff:
      details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
      raise ConfigMismatchError(
          f"{run_dir} holds checkpoints of a different model config ({details}). Use a new run_dir, "
          "or the same architecture to resume (only "
          f"{', '.join(PARAMETER_FREE_FIELDS)} may change).")
    changed = {k: (stored.get(k), current[k]) for k in PARAMETER_FREE_FIELDS
               if stored.get(k) != current[k]}
    if not changed:
      return {}
  if jax.process_index() == 0:
    os.makedirs(run_dir, exist_ok=True)
    _write_json(path, current)
  return changed


class _DataState(ocp.CheckpointHandler):
  """Orbax handler for the input pipeline: each process saves its own position.

  The source is any object with save_state(directory) / restore_state(directory)
  (t5jax.data.BatchIterator, or the trainer's prefetcher around it); either may
  return False for "no position saved here", and a resume then replays. Saving is
  synchronous, at the step being saved; orbax still renames the whole step
  directory only when every item is complete.
  """

  def save(self, directory, args):
    path = directory / _process_dir()
    path.mkdir(parents=True, exist_ok=True)
    args.source.save_state(os.fspath(path))

  def restore(self, directory, args):
    path = directory / _process_dir()
    if path.exists():
      return args.source.restore_state(os.fspath(path)) is not False
    # Saved by another number of processes: a source whose position is global (the
    # grain pipeline's) continues from every process's files; any other replays.
    restore_from = getattr(args.source, "restore_state_from", None)
    saved = sorted(p for p in directory.iterdir() if p.name.startswith("process_"))
    if restore_from is None or not saved:
      return False
    return restore_from([os.fspath(p) for p in saved]) is not False


def _process_dir() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}"


@ocp.args.register_with_handler(_DataState, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
  source: object


@ocp.args.register_with_handler(_DataState, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
  source: object


def checkpointable(source) -> bool:
  """Whether a data source can save and restore its position."""
  return callable(getattr(source, "save_state", None)) and callable(
      getattr(source, "restore_state", None))


class Checkpointer:
  """Thin policy layer over ocp.CheckpointManager (items 'state', 'meta', 'data').

  runtime: a dict of how the run is laid out (mesh, rules, processes, devices,
  microbatches), stored in each checkpoint's meta so a resume can say what
  changed; none of it is needed to restore.
  """

  def __init__(self, run_dir: str, config: CheckpointConfig, model_config,
               runtime: dict | None = None):
    self.config, self.model_config = config, model_config
    self.runtime = dict(runtime or {})
    self.run_dir = os.path.abspath(run_dir)
    self.changed = check_model_config(self.run_dir, model_config)
    preserve = [policies.LatestN(n=config.keep)]
    if config.best_metric:
      preserve.append(policies.BestN(
          get_metric_fn=lambda m: m[config.best_metric], n=config.keep_best,
          reverse=config.best_mode == "min", keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=config.asynchronous,
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        cleanup_tmp_directories=True, create=True)
    self.manager = ocp.CheckpointManager(
        os.path.join(self.run_dir, "checkpoints"), options=options,
        item_names=("state", "meta", "data"))
    self.best = read_best(self.run_dir)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.config.every_steps > 0 and step % self.config.every_steps == 0

  def save(self, step: int, tree: dict, metrics: dict | None = None, data=None) -> bool:
    """Saves now (async if configured); tree = {'state': TrainState, 'rng': key data}.

    data: the input pipeline (see `checkpointable`), saved with the step so a
    resume continues it. metrics: eval metrics for the best-checkpoint policy;
    a new best is recorded in run_dir/best.json.
    """
    if step in self.manager.all_steps():
      return False
    meta = {"step": int(step), "model_config": config_to_json(self.model_config),
            "runtime": self.runtime}
    items = dict(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta))
    if data is not None and checkpointable(data):
      items["data"] = DataSave(data)
    saved = self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics,
                              force=True)
    if saved and metrics and self.config.best_metric in metrics:
      self._update_best(step, float(metrics[self.config.best_metric]))
    return saved

  def _update_best(self, step: int, value: float) -> None:
    """Records step's eval value in best.json: the best step and value, and `ranked`, every
    evaluated checkpoint best first, which loading 'best' falls back along when the best
    one cannot be read."""
    mode, metric = self.config.best_mode, self.config.best_metric
    same = self.best is not None and self.best.get("metric") == metric
    ranked = [r for r in (self.best.get("ranked") or [] if same else []) if r["step"] != step]
    if same and not ranked:  # a best.json from before `ranked`: its one step
      ranked = [{"step": int(self.best["step"]), "value": float(self.best["value"])}]
    ranked.append({"step": int(step), "value": value})
    # Best first; ties go to the earlier step (it was the best first).
    ranked.sort(key=lambda r: (r["value"] if mode == "min" else -r["value"], r["step"]))
    top = ranked[0]
    self.best = {"step": top["step"], "metric": metric, "value": top["value"], "mode": mode,
                 "ranked": ranked}
    if jax.process_index() == 0:
      _write_json(os.path.join(self.run_dir, BEST_FILE), self.best)

  def read_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"]

  def restore(self, step: int, abstract_tree) -> tuple[dict, dict]:
    """(tree, meta) of one step. abstract_tree: the target tree, or a function of the
    step's stored model config (a dict) giving it (for a changed layout)."""
    meta = self.read_meta(step)
    stored = _with_defaults(meta["model_config"], self.model_config)
    diff = _architecture_diff(stored, config_to_json(self.model_config))
    if diff:
      raise ConfigMismatchError(
          f"Checkpoint {step} in {self.run_dir} was written for a different model: "
          + ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items()))
    if meta["step"] != step:
      raise ValueError(f"Checkpoint {step} says it is step {meta['step']}.")
    target = abstract_tree(stored) if callable(abstract_tree) else abstract_tree
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return out["state"], meta

  def restore_latest(self, abstract_tree) -> tuple[int, dict, dict] | tuple[None, None, None]:
    """(step, tree, meta) of the newest checkpoint that restores; Nones if there is none.

    A checkpoint that fails to restore is skipped with a warning; if every one
    fails, raises rather than silently starting from scratch over them.
    """
    steps = self.all_steps()
    errors = []
    for step in reversed(steps):
      try:
        restored, meta = self.restore(step, abstract_tree)
        self._set_aside(errors)
        return step, restored, meta
      except ConfigMismatchError:
        raise
      except Exception as e:  # orbax raises various types for unreadable files
        msg = (f"Checkpoint step {step} in {self.run_dir}/checkpoints cannot be restored "
               f"({type(e).__name__}: {str(e)[:300]}); trying the previous one.")
        log.warning(msg)
        print("WARNING: " + msg, flush=True)
        errors.append(step)
    if steps:
      raise RuntimeError(
          f"No checkpoint in {self.run_dir}/checkpoints could be restored (tried steps "
          f"{errors}). Move the directory aside to start from scratch.")
    return None, None, None

  def restore_data(self, step: int, source) -> bool:
    """Restores the input pipeline saved with `step` into `source`; False (and
    `source` untouched) if the step has none for this process layout."""
    if not checkpointable(source):
      return False
    if not os.path.isdir(os.path.join(self.run_dir, "checkpoints", str(step), "data")):
      return False
    out = self.manager.restore(step, args=ocp.args.Composite(data=DataRestore(source)))
    return bool(out["data"])

  def _set_aside(self, bad_steps: list[int]) -> None:
    """Renames unreadable newer steps to <step>.corrupt-<time>.

    Otherwise they would stay 'latest' and block re-saving those step numbers;
    renamed rather than deleted so that nothing is lost without a person looking.
    """
    if not bad_steps:
      return
    if jax.process_index() == 0:
      stamp = int(time.time())
      for step in bad_steps:
        path = os.path.join(self.run_dir, "checkpoints", str(step))
        if os.path.isdir(path):
          os.rename(path, f"{path}.corrupt-{stamp}")
          print(f"WARNING: moved unreadable checkpoint {path} to {path}.corrupt-{stamp}",
                flush=True)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("t5jax_set_aside_corrupt_checkpoints")
    self.manager.reload()

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

