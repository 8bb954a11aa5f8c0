"""Load any supported T5 checkpoint as (T5Config, params); export to HF or t5jax.

    from t5jax.conversion import load_checkpoint
    config, params = load_checkpoint("path/to/checkpoint")
    logits = T5(config).apply({"params": params}, enc_tokens, dec_tokens)

Formats are recognised from the files in `path` (see FORMATS). No TensorFlow
is imported unless the checkpoint is a TensorFlow one.

A training run directory holds several steps; `step` picks one:

    config, params = load_checkpoint("runs/glue", step="best")  # or "latest", 1000

(default: "best" when the run has a best.json, else "latest"), skipping
damaged steps for "latest"/"best" as training does when it resumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from t5jax.config import ARCHITECTURE_FIELDS, T5Config
from t5jax.conversion import hf, t5x
from t5jax.errors import MissingFileError, UsageError

FORMATS = {
    "run": "t5jax run directory (model_config.json + checkpoints/<step>): --step best|latest|N",
    "hf": "HF transformers folder: config.json + model.safetensors / pytorch_model.bin",
    "t5jax": "t5jax folder: t5jax_config.json + params/ (orbax)",
    "tf": "original T5 / Mesh TensorFlow checkpoint (model.ckpt-N prefix or its folder)",
    "t5x": "T5X checkpoint_N folder (msgpack `checkpoint` + TensorStore arrays)",
    "orbax": "an orbax PyTree of T5X- or t5jax-layout parameters",
}
T5JAX_CONFIG = "t5jax_config.json"


def detect_format(path: str) -> str:
  if not os.path.exists(path) and not os.path.exists(path + ".index"):
    raise MissingFileError(f"Checkpoint path {path!r} does not exist.")
  if os.path.isfile(os.path.join(path, T5JAX_CONFIG)):
    return "t5jax"
  if os.path.isfile(os.path.join(path, "model_config.json")) and os.path.isdir(
      os.path.join(path, "checkpoints")):
    return "run"
  if hf.is_hf_dir(path):
    return "hf"
  if t5x.is_tf_checkpoint(path):
    return "tf"
  if t5x.is_t5x_msgpack(path):
    return "t5x"
  if t5x.is_orbax_tree(path):
    return "orbax"
  raise UsageError(f"Cannot tell the checkpoint format of {path!r}. Supported:\n" +
                   "\n".join(f"  {k}: {v}" for k, v in FORMATS.items()))


def load_checkpoint(path: str, format: str | None = None, step: int | str | None = None,
                    adapter: str | None = None, **overrides) -> tuple[T5Config, dict]:
  """(config, numpy params) from any supported checkpoint; overrides replace config fields.

  Checkpoints without a config (tf, t5x, orbax) have their architecture read
  off the parameter shapes; pass e.g. dropout_rate=... to change the rest.
  scan_layers=True/False returns the params stacked per stack / per layer
  (converted here at the boundary; every format can be read into either).
  Without it: what the checkpoint holds (per layer for all but t5jax/run
  checkpoints saved from a scanned model).
  step: which checkpoint of a run directory (see load_run_step); only run
  directories have steps.
  adapter: an HF PEFT adapter folder (adapter_config.json + adapter_model.safetensors:
  LoRA, IA3 or prompt tuning) for this base; the config then carries the adapter
  (T5Config.adapter) and the params its leaves, so `T5(config).apply` and
  t5jax.decoding run the adapted model (t5jax.peft.merge_adapter folds LoRA / IA3 in).
  A t5jax run directory trained with an adapter loads as base + adapter by itself.
  """
  config, params, _ = load_checkpoint_step(path, format, step, adapter=adapter, **overrides)
  return config, params


def load_checkpoint_step(path: str, format: str | None = None, step: int | str | None = None,
                         adapter: str | None = None,
                         **overrides) -> tuple[T5Config, dict, RunStep | None]:
  """load_checkpoint, plus which step was loaded (None unless `path` is a run directory)."""
  scan = overrides.pop("scan_layers", None)
  format = format or detect_format(path)
  info = None
  if format == "run":
    config, params, info = load_run_step(path, step, **overrides)
  elif step is not None:
    raise UsageError(f"step={step!r} applies only to t5jax run directories "
                     f"(model_config.json + checkpoints/<step>); {path} is a {format!r} "
                     "checkpoint, which holds one set of parameters. Drop --step.")
  else:
    config, params = _load(path, format, overrides)
  if adapter is not None:
    from t5jax.conversion import peft_hf
    from t5jax.model import unscan_params
    config, params = peft_hf.load_peft_adapter(adapter, *unscan_params(config, params))
  if scan is not None:
    from t5jax.model import scan_params, unscan_params  # heavier imports: only when asked
    config, params = (scan_params if scan else unscan_params)(config, params)
  return config, params, info


def _load(path: str, format: str, overrides: dict) -> tuple[T5Config, dict]:
  if format == "hf":
    return hf.load_hf(path, **overrides)
  if format == "t5jax":
    return load_t5jax(path, **overrides)
  if format == "tf":
    return t5x.load_tf_checkpoint(path, **overrides)
  if format == "t5x":
    return t5x.load_t5x_msgpack(path, **overrides)
  if format == "orbax":
    return t5x.load_orbax_tree(path, **overrides)
  raise UsageError(f"Unknown checkpoint format {format!r}; one of {sorted(FORMATS)}.")


def save_t5jax(path: str, config: T5Config, params: dict) -> None:
  """A self-describing t5jax folder: the config as JSON plus orbax params."""
  import orbax.checkpoint as ocp
  os.makedirs(path, exist_ok=True)
  ocp.PyTreeCheckpointer().save(os.path.join(os.path.abspath(path), "params"), params, force=True)
  with open(os.path.join(path, T5JAX_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)


def load_t5jax(path: str, **overrides) -> tuple[T5Config, dict]:
  from t5jax.trees import check_tree
  with open(os.path.join(path, T5JAX_CONFIG)) as f:
    fields = json.load(f)
  config = T5Config(**fields)
  tree = t5x.load_orbax_params(os.path.join(path, "params"))
  check_tree(tree, config, path)
  return config.replace(**overrides) if overrides else config, tree


STEP_CHOICES = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class RunStep:
  """Which checkpoint of a run directory was loaded, and why."""

  step: int
  choice: str  # 'best', 'latest' or 'given' (an explicit step number)
  best: dict | None = None  # the run's best.json, if any
  skipped: tuple[int, ...] = ()  # steps tried first that could not be read

  def describe(self) -> str:
    from t5jax.checkpoints import ranked_steps
    best = self.best or {}
    metric = best.get("metric")
    values = {r["step"]: r["value"] for r in ranked_steps(best)}
    by = lambda s: f"{metric}={values[s]:.4g}" if s in values else "no eval value"
    if self.choice == "given":
      return ""
    if self.choice == "latest" and not self.skipped:
      return "latest"
    if self.choice == "best" and not self.skipped:
      return f"best by {by(self.step)}"
    gone = [f"step {s}" for s in self.skipped]
    if self.choice == "best":
      gone = [f"step {s} ({by(s)})" for s in self.skipped]
      gone[0] = "best " + gone[0]
    gone = ", ".join(gone)
    if self.choice == "best" and self.step in values:
      rank = [r["step"] for r in ranked_steps(best)].index(self.step) + 1
      return f"next best (#{rank}) by {by(self.step)}; {gone} unreadable"
    return f"latest readable; {gone} unreadable"


def parse_step(step) -> int | str | None:
  """None, 'latest', 'best' or a step number (int or digits) from a flag or binding."""
  if step is None or step in STEP_CHOICES:
    return step
  if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
    return step
  if isinstance(step, str) and step.strip().isdigit():
    return int(step)
  raise UsageError(f"step={step!r}: use 'latest', 'best' or a step number, e.g. --step=1000.")


def load_run_dir(run_dir: str, step: int | str | None = None,
                 **overrides) -> tuple[T5Config, dict]:
  """(config, params) of one checkpoint of a training run; see load_run_step."""
  config, params, _ = load_run_step(run_dir, step, **overrides)
  return config, params


def load_run_step(run_dir: str, step: int | str | None = None,
                  **overrides) -> tuple[T5Config, dict, RunStep]:
  """(config, params, which step) of a run directory; prints which step it loaded.

  step: 'latest', 'best' (the step in run_dir/best.json), a step number, or
  None: 'best' when the run has a best.json, else 'latest'. For 'latest' and
  'best', a step that cannot be read (a damaged file) is skipped with a one-line
  WARNING in favour of the newest readable one, as training does when it
  resumes; an explicit step that cannot be read is a UsageError naming it.
  """
  from t5jax.checkpoints import BEST_FILE, ranked_steps, read_best, run_steps
  step = parse_step(step)
  steps = run_steps(run_dir)
  if not steps:
    raise UsageError(f"{run_dir} has no complete checkpoint under checkpoints/.")
  best = read_best(run_dir)
  if step is None:
    step = "best" if best else "latest"
  if isinstance(step, int):
    if step not in steps:
      raise UsageError(f"{run_dir} has no checkpoint step {step}; its steps are "
                       f"{', '.join(map(str, steps))} (or pass --step=latest / best).")
    try:
      config, params = _read_run_step(run_dir, step)
    except _Unreadable as e:
      raise UsageError(f"Checkpoint step {step} of {run_dir} cannot be read: {e}") from None
    return _loaded(run_dir, config, params, RunStep(step, "given", best), overrides)
  if step == "best":
    if best is None:
      raise UsageError(f"{run_dir} has no {BEST_FILE}: no checkpoint was saved with "
                       "CheckpointConfig.best_metric. Pass --step=latest or a step number.")
    # Along the recorded evaluations, best first (those still on disk: the trainer keeps
    # CheckpointConfig.keep_best of them), then the newest of the rest.
    ranked = [r["step"] for r in ranked_steps(best)]
    ranked = ranked[:1] + [s for s in ranked[1:] if s in steps]
    order = ranked + [s for s in reversed(steps) if s not in ranked]
  else:
    order = list(reversed(steps))
  skipped = []
  for i, s in enumerate(order):
    if i + 1 == len(order):
      later = "no other step left"
    elif step == "best" and order[i + 1] in ranked:
      later = f"trying the next best, step {order[i + 1]}"
    else:
      later = f"trying step {order[i + 1]}" + (" (latest)" if step == "best" else "")
    if s not in steps:  # best.json names a step that is gone (deleted by hand?)
      why = f"it is not in {os.path.join(run_dir, 'checkpoints')}"
    else:
      try:
        config, params = _read_run_step(run_dir, s)
        info = RunStep(s, step, best, tuple(skipped))
        return _loaded(run_dir, config, params, info, overrides)
      except _Unreadable as e:
        why = str(e)
    _say(f"WARNING: skipping checkpoint step {s} of {run_dir}: {why}; {later}.")
    skipped.append(s)
  raise UsageError(f"No checkpoint of {run_dir} can be read (tried steps "
                   f"{', '.join(map(str, skipped))}); see the warnings above.")


class _Unreadable(Exception):
  """A checkpoint step whose files cannot be read; the message names the file."""


def _read_run_step(run_dir: str, step: int) -> tuple[T5Config, dict]:
  from t5jax.trees import check_tree
  step_dir = os.path.join(run_dir, "checkpoints", str(step))
  # The step's own model config (in its meta item) wins: a run may have resumed
  # with a parameter-free field (scan_layers, dtype) changed since.
  meta = os.path.join(step_dir, "meta", "metadata")
  path = meta if os.path.isfile(meta) else os.path.join(run_dir, "model_config.json")
  try:
    with open(path) as f:
      fields = json.load(f)
    fields = fields["model_config"] if path == meta else fields
    known = {f.name for f in dataclasses.fields(T5Config)}
    config = T5Config(**{k: v for k, v in fields.items() if k in known})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _Unreadable(f"{path}: {_one_line(e)}") from e
  state = os.path.join(step_dir, "state")
  try:
    tree = t5x.load_orbax_params(state)
    params = tree["state"]["params"]
  except Exception as e:  # orbax / TensorStore raise many types for damaged files
    where, why = _named_file(e, state), _one_line(e)
    raise _Unreadable(why if where in why else f"{where}: {why}") from e
  if config.adapter is not None:  # an adapter run: its checkpoints hold the adapter only
    from t5jax import peft
    params = peft.combine(load_base(run_dir, config), params)
  check_tree(params, config, f"{run_dir} step {step}")
  return config, params


def _loaded(run_dir, config, params, info: RunStep, overrides):
  why = info.describe()
  _say(f"Loaded step {info.step}{f' ({why})' if why else ''} from {run_dir}")
  return (config.replace(**overrides) if overrides else config), params, info


def _say(message: str) -> None:
  """Prints on process 0 (every process loads the same step)."""
  import jax
  if jax.process_index() == 0:
    print(message, flush=True)


def _causes(e: BaseException) -> list[BaseException]:
  out = []
  while e is not None and e not in out:
    out.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  return out


def _one_line(e: BaseException, limit: int = 300) -> str:
  """The innermost cause's first line: TensorStore's own words, without its spec dump."""
  for cause in reversed(_causes(e)):
    text = " ".join(str(cause).split("See full TensorStore details")[0].split())
    if text:
      text = text if len(text) <= limit else text[:limit] + " ..."
      return f"{type(cause).__name__}: {text}"
  return type(e).__name__


def _named_file(e: BaseException, default: str) -> str:
  """The first path under `default` that the error names; `default` otherwise."""
  root = os.path.abspath(default)
  for cause in reversed(_causes(e)):
    for found in re.findall(r"[\"']?(/[^\s\"',]+)", str(cause)):
      if found.startswith(root):
        return found.rstrip("/.:")
  return default


def save_checkpoint(path: str, config: T5Config, params: dict, format: str = "hf") -> None:
  """Writes 'hf' (always per-layer tensors) or 't5jax' (params as given, scanned or not)."""
  if format == "hf":
    hf.save_hf(path, config, params)
  elif format == "t5jax":
    save_t5jax(path, config, params)
  else:
    raise UsageError(f"Cannot write format {format!r}: t5jax writes 'hf' and 't5jax'.")


def load_base(run_dir: str, config: T5Config) -> dict:
  """The base params an adapter run in `run_dir` was trained on (per base.json), in
  `config`'s layer layout."""
  from t5jax import peft
  from t5jax.checkpoints import BASE_FILE, read_base_reference
  ref = read_base_reference(run_dir)
  if ref is None:
    raise UsageError(f"{run_dir} holds adapter checkpoints ({config.adapter.method}) but no "
                     f"{BASE_FILE} naming their base checkpoint; it is written when training "
                     "starts. Load the base with load_checkpoint(BASE, adapter=...) instead.")
  base = peft.base_config(config)
  if ref.get("checkpoint") is None:
    import jax
    from t5jax.model import init_params
    init = jax.jit(lambda key: init_params(base, key))  # jitted: eager init is slow
    return jax.tree.map(np.asarray, init(jax.random.PRNGKey(int(ref["seed"]))))
  if not os.path.exists(ref["checkpoint"]):
    raise MissingFileError(f"{run_dir}/{BASE_FILE} names the base checkpoint "
                           f"{ref['checkpoint']!r}, which does not exist any more.")
  stored, params = load_checkpoint(ref["checkpoint"], step=ref.get("step"),
                                   scan_layers=config.scan_layers)
  changed = [f for f in ARCHITECTURE_FIELDS if getattr(stored, f) != getattr(base, f)]
  if changed:
    raise UsageError(f"The base checkpoint {ref['checkpoint']} of {run_dir} no longer fits its "
                     f"adapter: {', '.join(changed)} differ.")
  return peft.without_adapter_leaves(params)

