"""HF PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`) both ways:
LoRA, IA3 and prompt tuning for a T5 base, beside the other checkpoint converters.

    config, params = load_peft_adapter("path/to/peft_adapter", base_config, base_params)
    save_peft_adapter("out/adapter", config, params)   # PeftModel.from_pretrained loads it

Names follow HF's T5 modules through `t5jax.conversion.hf.rules` (`...SelfAttention.q` ->
`encoder/layers_0/attention/query`); t5jax's adapter leaves are t5jax.peft's.
"""

from __future__ import annotations

import json
import os

import numpy as np

from t5jax.config import AdapterConfig, T5Config, kernel_paths
from t5jax.trees import flatten, unflatten
from t5jax.errors import MissingFileError, UsageError
from t5jax.peft import IN_DIMS, PROMPT_LEAF, base_config, without_adapter_leaves

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _kernel_map(config: T5Config) -> dict:
  """HF module name ('encoder.block.0.layer.0.SelfAttention.q') -> t5jax kernel path."""
  from t5jax.conversion import hf  # noqa: PLC0415
  out = {}
  for hf_name, path, _, _ in hf.rules(base_config(config)):
    if path[-1] in IN_DIMS and hf_name.endswith(".weight"):
      out[hf_name[:-len(".weight")]] = path
  return out


def _compress_targets(config: T5Config, paths: set[str]) -> tuple[str, ...]:
  """target_modules naming exactly `paths`: a kernel name where every kernel of
  that name is targeted, else the full paths."""
  every = kernel_paths(base_config(config))
  out = []
  for kernel in IN_DIMS:
    all_of = [p for p in every if p.endswith("/" + kernel)]
    chosen = [p for p in all_of if p in paths]
    if chosen and len(chosen) == len(all_of):
      out.append(kernel)
    else:
      out.extend(chosen)
  return tuple(out)


def _read_peft(path: str) -> tuple[dict, dict]:
  config_file = os.path.join(path, PEFT_CONFIG)
  if not os.path.isdir(path):
    raise MissingFileError(f"adapter={path!r} is not a folder: pass an HF PEFT adapter folder "
                           f"({PEFT_CONFIG} + {PEFT_WEIGHTS}).")
  weights = os.path.join(path, PEFT_WEIGHTS)
  binary = os.path.join(path, "adapter_model.bin")
  missing = [f for f, ok in ((PEFT_CONFIG, os.path.isfile(config_file)),
                             (PEFT_WEIGHTS, os.path.isfile(weights) or os.path.isfile(binary)))
             if not ok]
  if missing:
    raise MissingFileError(f"Adapter folder {path} lacks {', '.join(missing)}: an HF PEFT "
                           f"adapter is {PEFT_CONFIG} + {PEFT_WEIGHTS} (as "
                           "PeftModel.save_pretrained writes).")
  with open(config_file) as f:
    peft_config = json.load(f)
  if os.path.isfile(weights):
    from safetensors.numpy import load_file
    tensors = load_file(weights)
  else:
    import torch
    tensors = {k: v.float().numpy() for k, v in
               torch.load(binary, map_location="cpu", weights_only=True).items()}
  return peft_config, {k[len(_PEFT_PREFIX):] if k.startswith(_PEFT_PREFIX) else k:
                       np.asarray(v, np.float32) for k, v in tensors.items()}


def _refuse(peft_config: dict, path: str, **unsupported) -> None:
  for field, ok in unsupported.items():
    value = peft_config.get(field)
    if not ok(value):
      raise UsageError(f"{path}/{PEFT_CONFIG}: {field}={value!r} is not supported by t5jax "
                       "(plain LoRA / IA3 / prompt tuning); merge it in PEFT "
                       "(merge_and_unload) and load the merged model instead.")


def load_peft_adapter(path: str, config: T5Config, params) -> tuple[T5Config, dict]:
  """(config with the adapter, base params plus the adapter's leaves) from an HF PEFT
  adapter folder for a T5 base (`config`, per-layer `params`)."""
  peft_config, tensors = _read_peft(path)
  kind = peft_config.get("peft_type")
  base = base_config(config)
  flat_base = flatten(without_adapter_leaves(params))
  if kind == "PROMPT_TUNING":
    _refuse(peft_config, path, num_transformer_submodules=lambda v: v in (None, 1, 2))
    prompt = tensors.get("prompt_embeddings")
    if prompt is None or set(tensors) != {"prompt_embeddings"}:
      raise UsageError(f"{path}/{PEFT_WEIGHTS}: a prompt-tuning adapter holds one tensor, "
                       f"'prompt_embeddings'; found {sorted(tensors)[:5]}.")
    # PEFT's table: num_virtual_tokens rows per submodule, the encoder's first.
    parts = int(peft_config.get("num_transformer_submodules") or 1)
    count_ = int(peft_config.get("num_virtual_tokens") or prompt.shape[0] // parts)
    if prompt.shape != (count_ * parts, config.d_model):
      raise UsageError(f"{path}: prompt_embeddings has shape {prompt.shape}, but the base "
                       f"needs ({count_ * parts}, {config.d_model}) (num_virtual_tokens x "
                       "num_transformer_submodules, d_model): an adapter for another base "
                       "model?")
    adapter = AdapterConfig("prompt", num_virtual_tokens=count_, prompt_init="random",
                            num_transformer_submodules=parts)
    flat_base[("encoder", PROMPT_LEAF)] = prompt[:count_]
    if parts == 2:  # kept for the export; PEFT never applies it to T5 (AdapterConfig)
      flat_base[("decoder", PROMPT_LEAF)] = prompt[count_:]
    return base.replace(adapter=adapter), unflatten(flat_base)
  if kind not in ("LORA", "IA3"):
    raise UsageError(f"{path}/{PEFT_CONFIG}: peft_type={kind!r}; t5jax reads LORA, IA3 and "
                     "PROMPT_TUNING adapters.")
  if kind == "LORA":
    _refuse(peft_config, path, use_dora=lambda v: not v, use_rslora=lambda v: not v,
            bias=lambda v: v in (None, "none"), modules_to_save=lambda v: not v,
            rank_pattern=lambda v: not v, alpha_pattern=lambda v: not v,
            fan_in_fan_out=lambda v: not v)
  else:
    _refuse(peft_config, path, modules_to_save=lambda v: not v,
            fan_in_fan_out=lambda v: not v)
  modules = _kernel_map(config)
  suffixes = (".lora_A.weight", ".lora_B.weight") if kind == "LORA" else (".ia3_l",)
  found, flat = set(), dict(flat_base)
  rank = int(peft_config.get("r", 8))
  for key, value in tensors.items():
    suffix = next((s for s in suffixes if key.endswith(s)), None)
    module = key[:-len(suffix)] if suffix else None
    if module not in modules:
      raise UsageError(f"{path}/{PEFT_WEIGHTS}: tensor {key!r} adapts no T5 attention or MLP "
                       "kernel t5jax knows (LoRA / IA3 on q, k, v, o, wi, wi_0, wi_1, wo only).")
    kernel_path = modules[module]
    kernel = flat_base[kernel_path]
    in_dims = IN_DIMS[kernel_path[-1]]
    in_shape, out_shape = kernel.shape[:in_dims], kernel.shape[in_dims:]
    fan_in, fan_out = int(np.prod(in_shape)), int(np.prod(out_shape))
    name = kernel_path[-1]
    if suffix == ".lora_A.weight":
      want, leaf = (rank, fan_in), value.T.reshape(*in_shape, rank) \
          if value.shape == (rank, fan_in) else None
      leaf_name = f"{name}_lora_a"
    elif suffix == ".lora_B.weight":
      want, leaf = (fan_out, rank), value.T.reshape(rank, *out_shape) \
          if value.shape == (fan_out, rank) else None
      leaf_name = f"{name}_lora_b"
    else:
      feedforward = value.shape[0] == 1 and value.shape != (fan_out, 1)
      if feedforward != (name == "wo"):
        raise UsageError(f"{path}: {module} is IA3-scaled on its "
                         f"{'input' if feedforward else 'output'}; t5jax scales the input of "
                         "wo only (feedforward_modules=['wo'], PEFT's T5 default) and the "
                         "output of every other kernel.")
      want = (1, fan_in) if feedforward else (fan_out, 1)
      leaf = value.reshape(in_shape if feedforward else out_shape) \
          if value.shape == want else None
      leaf_name = f"{name}_ia3"
    if leaf is None:
      raise UsageError(f"{path}: {key} has shape {value.shape}, but the base kernel "
                       f"{'/'.join(kernel_path)} {kernel.shape} needs {want}: an adapter for "
                       "another base model (or another rank than adapter_config.json's r)?")
    flat[kernel_path[:-1] + (leaf_name,)] = np.ascontiguousarray(leaf)
    found.add("/".join(kernel_path))
  if not found:
    raise UsageError(f"{path}/{PEFT_WEIGHTS} holds no {kind} tensors.")
  targets = _compress_targets(config, found)
  if kind == "LORA":
    adapter = AdapterConfig("lora", rank=rank, alpha=float(peft_config.get("lora_alpha", 8)),
                            dropout=float(peft_config.get("lora_dropout", 0.0)),
                            target_modules=targets)
  else:
    adapter = AdapterConfig("ia3", target_modules=targets)
  config = base.replace(adapter=adapter)
  from t5jax.trees import check_tree
  params = unflatten(flat)
  check_tree(params, config, path)
  return config, params


def save_peft_adapter(path: str, config: T5Config, params, base_model: str | None = None
                      ) -> None:
  """Writes the adapter of (config, params) as an HF PEFT folder that
  `peft.PeftModel.from_pretrained(hf_t5, path)` loads."""
  from safetensors.numpy import save_file
  from t5jax.model import unscan_params
  adapter = config.adapter
  if adapter is None or adapter.method == "norm":
    raise UsageError("Only LoRA, IA3 and prompt-tuning adapters have an HF PEFT form; a "
                     "norm-only run is a full model: `t5jax convert RUN OUT` writes it merged.")
  config, params = unscan_params(config, params)
  flat = {k: np.asarray(v, np.float32) for k, v in flatten(dict(params)).items()}
  common = {"base_model_name_or_path": base_model, "task_type": "SEQ_2_SEQ_LM",
            "inference_mode": True, "revision": None}
  tensors = {}
  if adapter.method == "prompt":
    parts = adapter.num_transformer_submodules
    tensors["prompt_embeddings"] = np.concatenate(
        [flat[(part, PROMPT_LEAF)] for part in ("encoder", "decoder")[:parts]])
    peft_config = dict(common, peft_type="PROMPT_TUNING",
                       num_virtual_tokens=adapter.num_virtual_tokens, token_dim=config.d_model,
                       num_transformer_submodules=parts, num_attention_heads=config.num_heads,
                       num_layers=config.num_layers, prompt_tuning_init="RANDOM")
  else:
    modules = []
    for module, kernel_path in _kernel_map(config).items():
      name, prefix = kernel_path[-1], kernel_path[:-1]
      if adapter.method == "lora" and prefix + (f"{name}_lora_a",) in flat:
        a, b = flat[prefix + (f"{name}_lora_a",)], flat[prefix + (f"{name}_lora_b",)]
        tensors[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = a.reshape(-1, adapter.rank).T.copy()
        tensors[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = b.reshape(adapter.rank, -1).T.copy()
        modules.append(module)
      elif adapter.method == "ia3" and prefix + (f"{name}_ia3",) in flat:
        scale = flat[prefix + (f"{name}_ia3",)].reshape(-1)
        tensors[f"{_PEFT_PREFIX}{module}.ia3_l"] = (
            scale[None, :] if name == "wo" else scale[:, None]).copy()
        modules.append(module)
    if adapter.method == "lora":
      peft_config = dict(common, peft_type="LORA", r=adapter.rank, lora_alpha=adapter.alpha,
                         lora_dropout=adapter.dropout, target_modules=sorted(modules),
                         bias="none", fan_in_fan_out=False, use_rslora=False, use_dora=False,
                         modules_to_save=None, init_lora_weights=True)
    else:
      peft_config = dict(common, peft_type="IA3", target_modules=sorted(modules),
                         feedforward_modules=sorted(m for m in modules if m.endswith(".wo")),
                         fan_in_fan_out=False, modules_to_save=None, init_ia3_weights=True)
  os.makedirs(path, exist_ok=True)
  save_file(tensors, os.path.join(path, PEFT_WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(path, PEFT_CONFIG), "w") as f:
    json.dump(peft_config, f, indent=2, sort_keys=True)
