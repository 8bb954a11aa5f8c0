"""Load any supported T5 checkpoint as (T5Config, params); export to HF or t5jax.

    from t5jax.conversion import load_checkpoint
    config, params = load_checkpoint("path/to/checkpoint")
    logits = T5(config).apply({"params": params}, enc_tokens, dec_tokens)

Formats are recognised from the files in `path` (see FORMATS). No TensorFlow
is imported unless the checkpoint is a TensorFlow one.
"""

from __future__ import annotations

import dataclasses
import json
import os

from t5jax.config import T5Config
from t5jax.conversion import hf, t5x

FORMATS = {
    "run": "t5jax run directory (model_config.json + checkpoints/<step>): latest step",
    "hf": "HF transformers folder: config.json + model.safetensors / pytorch_model.bin",
    "t5jax": "t5jax folder: t5jax_config.json + params/ (orbax)",
    "tf": "original T5 / Mesh TensorFlow checkpoint (model.ckpt-N prefix or its folder)",
    "t5x": "T5X checkpoint_N folder (msgpack `checkpoint` + TensorStore arrays)",
    "orbax": "an orbax PyTree of T5X- or t5jax-layout parameters",
}
T5JAX_CONFIG = "t5jax_config.json"


def detect_format(path: str) -> str:
  if not os.path.exists(path) and not os.path.exists(path + ".index"):
    raise FileNotFoundError(f"Checkpoint path {path!r} does not exist.")
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
  raise ValueError(f"Cannot tell the checkpoint format of {path!r}. Supported:\n" +
                   "\n".join(f"  {k}: {v}" for k, v in FORMATS.items()))


def load_checkpoint(path: str, format: str | None = None, **overrides) -> tuple[T5Config, dict]:
  """(config, numpy params) from any supported checkpoint; overrides replace config fields.

  Checkpoints without a config (tf, t5x, orbax) have their architecture read
  off the parameter shapes; pass e.g. dropout_rate=... to change the rest.
  scan_layers=True/False returns the params stacked per stack / per layer
  (converted here at the boundary; every format can be read into either).
  Without it: what the checkpoint holds (per layer for all but t5jax/run
  checkpoints saved from a scanned model).
  """
  scan = overrides.pop("scan_layers", None)
  config, params = _load(path, format, overrides)
  if scan is not None:
    from t5jax.model import scan_params, unscan_params  # heavier imports: only when asked
    config, params = (scan_params if scan else unscan_params)(config, params)
  return config, params


def _load(path: str, format: str | None, overrides: dict) -> tuple[T5Config, dict]:
  format = format or detect_format(path)
  if format == "hf":
    return hf.load_hf(path, **overrides)
  if format == "t5jax":
    return load_t5jax(path, **overrides)
  if format == "run":
    return load_run_dir(path, **overrides)
  if format == "tf":
    return t5x.load_tf_checkpoint(path, **overrides)
  if format == "t5x":
    return t5x.load_t5x_msgpack(path, **overrides)
  if format == "orbax":
    return t5x.load_orbax_tree(path, **overrides)
  raise ValueError(f"Unknown checkpoint format {format!r}; one of {sorted(FORMATS)}.")


def save_t5jax(path: str, config: T5Config, params: dict) -> None:
  """A self-describing t5jax folder: the config as JSON plus orbax params."""
  import orbax.checkpoint as ocp
  os.makedirs(path, exist_ok=True)
  ocp.PyTreeCheckpointer().save(os.path.join(os.path.abspath(path), "params"), params, force=True)
  with open(os.path.join(path, T5JAX_CONFIG), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)


def load_t5jax(path: str, **overrides) -> tuple[T5Config, dict]:
  from t5jax.conversion.tree import check_tree
  with open(os.path.join(path, T5JAX_CONFIG)) as f:
    fields = json.load(f)
  config = T5Config(**fields)
  tree = t5x.load_orbax_params(os.path.join(path, "params"))
  check_tree(tree, config, path)
  return config.replace(**overrides) if overrides else config, tree


def load_run_dir(run_dir: str, step: int | None = None, **overrides) -> tuple[T5Config, dict]:
  """Parameters of a training run's latest (or given) complete checkpoint."""
  from t5jax.conversion.tree import check_tree
  with open(os.path.join(run_dir, "model_config.json")) as f:
    config = T5Config(**json.load(f))
  root = os.path.join(run_dir, "checkpoints")
  # Only finished steps: orbax writes into a temporary folder and renames it.
  steps = sorted(int(d) for d in os.listdir(root) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f"{run_dir} has no complete checkpoint under checkpoints/.")
  step = steps[-1] if step is None else step
  tree = t5x.load_orbax_params(os.path.join(root, str(step), "state"))
  params = tree["state"]["params"]
  check_tree(params, config, f"{run_dir} step {step}")
  return config.replace(**overrides) if overrides else config, params


def save_checkpoint(path: str, config: T5Config, params: dict, format: str = "hf") -> None:
  """Writes 'hf' (always per-layer tensors) or 't5jax' (params as given, scanned or not)."""
  if format == "hf":
    if config.scan_layers:
      from t5jax.model import unscan_params
      config, params = unscan_params(config, params)
    hf.save_hf(path, config, params)
  elif format == "t5jax":
    save_t5jax(path, config, params)
  else:
    raise ValueError(f"Cannot write format {format!r}: t5jax writes 'hf' and 't5jax'.")
