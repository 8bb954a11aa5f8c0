"""Training checkpoints in a run directory, with orbax.

    ckpt = Checkpointer(run_dir, CheckpointConfig(every_steps=1000, keep=3), model_config)
    # abstract_* : jax.ShapeDtypeStruct trees with shardings; (None, None) on a fresh run
    start, tree = ckpt.restore_latest({"state": abstract_state, "rng": abstract_rng})
    ...
    if ckpt.should_save(step):
      ckpt.save(step, {"state": state, "rng": rng})  # async if configured
    ckpt.close()  # waits for pending saves

Layout: run_dir/model_config.json (the T5Config, checked on every start) and
run_dir/checkpoints/<step>/{state, meta}. Orbax writes each step into a
temporary directory and renames it when complete, so an interrupted save
(kill -9, preemption) leaves a tmp directory that `all_steps()` ignores,
never a half-written <step>; a <step> that still fails to restore (disk
corruption) is skipped with a warning in favour of the previous one.
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

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  every_steps: int = 1000
  keep: int = 3  # the last `keep` checkpoints
  asynchronous: bool = True  # write in a background thread while training continues
  # Also keep the `keep_best` best checkpoints by this eval metric (e.g. 'eval/loss').
  best_metric: str | None = None
  best_mode: str = "min"
  keep_best: int = 1


class ConfigMismatchError(ValueError):
  pass


def config_to_json(config) -> dict:
  return dataclasses.asdict(config)


def _with_defaults(stored: dict, config) -> dict:
  """A stored config with fields added to the dataclass since (e.g. scan_layers)
  at their defaults, so runs written before a new field still resume."""
  out = dict(stored)
  for field in dataclasses.fields(config):
    if field.name not in out and field.default is not dataclasses.MISSING:
      out[field.name] = field.default
  return out


def check_model_config(run_dir: str, config) -> None:
  """Writes run_dir/model_config.json on a fresh run; refuses a different config later."""
  path = os.path.join(run_dir, "model_config.json")
  current = config_to_json(config)
  if os.path.exists(path):
    with open(path) as f:
      stored = _with_defaults(json.load(f), config)
    diff = {k: (stored.get(k), current.get(k)) for k in sorted(set(stored) | set(current))
            if stored.get(k) != current.get(k)}
    if diff:
      details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
      raise ConfigMismatchError(
          f"{run_dir} holds checkpoints of a different model config ({details}). "
          "Use a new run_dir, or the same model config to resume.")
    return
  if jax.process_index() == 0:
    os.makedirs(run_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(current, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # atomic: never a half-written config


class Checkpointer:
  """Thin policy layer over ocp.CheckpointManager (items 'state' and 'meta')."""

  def __init__(self, run_dir: str, config: CheckpointConfig, model_config):
    self.config, self.model_config = config, model_config
    self.run_dir = os.path.abspath(run_dir)
    check_model_config(self.run_dir, model_config)
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
        os.path.join(self.run_dir, "checkpoints"), options=options, item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def should_save(self, step: int) -> bool:
    return self.config.every_steps > 0 and step % self.config.every_steps == 0

  def save(self, step: int, tree: dict, metrics: dict | None = None) -> bool:
    """Saves now (async if configured); tree = {'state': TrainState, 'rng': key data}."""
    if step in self.manager.all_steps():
      return False
    meta = {"step": int(step), "model_config": config_to_json(self.model_config)}
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                      meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_tree: dict) -> dict:
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree),
                                      meta=ocp.args.JsonRestore()))
    stored = _with_defaults(out["meta"]["model_config"], self.model_config)
    if stored != config_to_json(self.model_config):
      raise ConfigMismatchError(
          f"Checkpoint {step} in {self.run_dir} was written for model config {stored}, "
          f"not {config_to_json(self.model_config)}.")
    if out["meta"]["step"] != step:
      raise ValueError(f"Checkpoint {step} says it is step {out['meta']['step']}.")
    return out["state"]

  def restore_latest(self, abstract_tree: dict) -> tuple[int, dict] | tuple[None, None]:
    """(step, tree) of the newest checkpoint that restores; (None, None) if there is none.

    A checkpoint that fails to restore is skipped with a warning; if every one
    fails, raises rather than silently starting from scratch over them.
    """
    steps = self.all_steps()
    errors = []
    for step in reversed(steps):
      try:
        restored = self.restore(step, abstract_tree)
        self._set_aside(errors)
        return step, restored
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
    return None, None

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

