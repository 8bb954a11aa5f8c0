"""Parameter-efficient finetuning: LoRA, IA3, prompt tuning and norm-only tuning.

    config = get_config("t5.1.1-small", adapter=AdapterConfig("lora", rank=8, alpha=16))
    adapter = init_adapter(config, base_params, rng)   # the trainable tree
    params = combine(base_params, adapter)              # what T5(config).apply takes
    trainable, frozen = split(config, params)

The methods live in the model itself (t5jax.layers / t5jax.model, driven by
`T5Config.adapter`, a t5jax.config.AdapterConfig); this module is the
bookkeeping around them: which leaves train, their initialisation, folding an
adapter into the base kernels, and HF PEFT's adapter folders
(`adapter_config.json` + `adapter_model.safetensors`) both ways.

Adapter leaves sit beside the kernel they adapt, named after it:
`.../attention/query_lora_a` [embed, r] and `query_lora_b` [r, heads, kv];
`.../mlp/wo_lora_a` [mlp, r], `wo_lora_b` [r, embed]; IA3 `.../attention/key_ia3`
[heads, kv] (output scale) and `.../mlp/wo_ia3` [mlp] (input scale);
`encoder/prompt_embedding` [P, embed] (and PEFT's unused `decoder/prompt_embedding` with
num_transformer_submodules=2). Norm-only tuning adds nothing: its
trainable leaves are the RMSNorm scales. Without an adapter nothing changes.

No TensorFlow, seqio or gin; jax and flax only inside the functions that build
or run the model.
"""

from __future__ import annotations

import json
import os

import numpy as np

from t5jax.config import AdapterConfig, T5Config, kernel_paths
from t5jax.conversion.tree import flatten, unflatten
from t5jax.errors import MissingFileError, UsageError

__all__ = ["AdapterConfig", "is_trainable", "split", "combine", "base_config", "init_adapter",
           "count", "describe_trainable", "merge_adapter", "merge", "load_peft_adapter",
           "save_peft_adapter", "BASE_FILE", "write_base_reference", "read_base_reference"]

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b", "_ia3")
PROMPT_LEAF = "prompt_embedding"
# Input axes of each kernel (the rest are its output axes).
IN_DIMS = {"query": 1, "key": 1, "value": 1, "out": 2, "wi": 1, "wi_0": 1, "wi_1": 1, "wo": 1}
# A run directory's reference to the base checkpoint its adapter was trained on.
BASE_FILE = "base.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def is_adapter_leaf(path) -> bool:
  """A leaf that exists only with an adapter (LoRA, IA3, prompt)."""
  name = _names(path)[-1]
  return name.endswith(ADAPTER_SUFFIXES) or name == PROMPT_LEAF


def is_trainable(config: T5Config, path) -> bool:
  """Whether the leaf at `path` trains under config.adapter (all do without one)."""
  if config.adapter is None:
    return True
  names = _names(path)
  if config.adapter.method == "norm":
    return names[-1] == "scale" and len(names) > 1 and names[-2].endswith("norm")
  return is_adapter_leaf(names)


def split(config: T5Config, tree) -> tuple[dict, dict]:
  """(trainable, frozen) subtrees of a params-like tree (values, shapes, shardings)."""
  flat = flatten(dict(tree))
  trainable = {k: v for k, v in flat.items() if is_trainable(config, k)}
  frozen = {k: v for k, v in flat.items() if not is_trainable(config, k)}
  return unflatten(trainable), unflatten(frozen)


def combine(frozen, trainable) -> dict:
  """The full tree from `split`'s two parts (or a base tree plus adapter leaves)."""
  return unflatten({**flatten(dict(frozen)), **flatten(dict(trainable))})


def base_config(config: T5Config) -> T5Config:
  return config.replace(adapter=None)


def without_adapter_leaves(tree) -> dict:
  return unflatten({k: v for k, v in flatten(dict(tree)).items() if not is_adapter_leaf(k)})


def count(tree) -> int:
  return int(sum(int(np.prod(np.shape(v))) for v in flatten(dict(tree)).values()))


def describe_trainable(config: T5Config, trainable, total: int) -> str:
  """'Trainable: 12,345 of 8,000,000 parameters (0.15%), LoRA ...' for the start-up log."""
  n = count(trainable)
  a = config.adapter
  what = {"lora": f"LoRA rank {a.rank}, alpha {a.alpha:g} on {', '.join(a.targets)}",
          "ia3": f"IA3 on {', '.join(a.targets)}",
          "prompt": f"prompt tuning, {a.num_virtual_tokens} virtual tokens",
          "norm": "RMSNorm scales only"}[a.method]
  return f"Trainable: {n:,} of {total:,} parameters ({100.0 * n / max(total, 1):.2f}%); {what}."


def _prompt_ids(adapter: AdapterConfig, vocab_size: int, rng, text_ids) -> np.ndarray | None:
  count_ = adapter.num_virtual_tokens
  if adapter.prompt_init == "text":
    ids = [int(i) for i in (text_ids or [])]
    if not ids:
      raise UsageError("AdapterConfig.prompt_init='text' needs the token ids of "
                       "AdapterConfig.prompt_init_text (t5jax.run tokenises it with the task's "
                       "vocabulary); none were given.")
    # As PEFT: repeated to fill the prompt, then cut to its length.
    ids = (ids * (-(-count_ // len(ids))))[:count_]
    return np.asarray(ids, np.int32)
  if adapter.prompt_init == "vocab":
    # Lester et al. (2021) sample from the 5,000 most common tokens; SentencePiece ids
    # are roughly frequency-ordered, so ids 3 .. 5,000 (past pad, eos, unk).
    import jax
    high = max(min(5000, vocab_size), 4)
    return np.asarray(jax.random.randint(rng, (count_,), 3, high), np.int32)
  return None


def init_adapter(config: T5Config, base_params, rng, text_ids=None) -> dict:
  """The trainable tree at the start of training on `base_params`.

  LoRA: A kaiming-uniform as PEFT, B zeros (the model starts as the base); IA3:
  ones; prompt: embeddings of sampled vocabulary ids ('vocab'), of `text_ids`
  repeated to length ('text') or N(0, 1) ('random', PEFT's RANDOM); norm: the
  base's RMSNorm scales.
  """
  import jax
  adapter = config.adapter
  if adapter is None:
    raise UsageError("init_adapter needs a config with an adapter (T5Config.adapter).")
  if adapter.method == "norm":
    return jax.tree.map(lambda x: np.array(x, np.float32), split(config, base_params)[0])
  import flax.linen as nn
  from t5jax.model import abstract_params
  init_key, prompt_key = jax.random.split(rng)
  # Each leaf drawn directly (no model init to compile), as PEFT initialises them.
  shapes = flatten(split(config, nn.meta.unbox(abstract_params(config)))[0])
  tree = {}
  for i, (path, shape) in enumerate(sorted(shapes.items())):
    name, key = path[-1], jax.random.fold_in(init_key, i)
    if name.endswith("_lora_a"):
      # kaiming_uniform_(a=sqrt(5)) on PEFT's [r, fan_in]: uniform(+-1/sqrt(fan_in));
      # the fan-in axes exclude a scanned stack's leading layers axis and the rank.
      fan_in = int(np.prod(shape.shape[1 if "layers" in path else 0:-1]))
      bound = 1.0 / np.sqrt(fan_in)
      value = jax.random.uniform(key, shape.shape, np.float32, -bound, bound)
    elif name.endswith("_lora_b"):
      value = np.zeros(shape.shape, np.float32)
    elif name.endswith("_ia3"):
      value = np.ones(shape.shape, np.float32)
    else:  # the prompt: N(0, 1) as PEFT's RANDOM init (replaced below for vocab / text)
      value = jax.random.normal(key, shape.shape, np.float32)
    tree[path] = np.asarray(value, np.float32)
  tree = unflatten(tree)
  if adapter.method == "prompt":
    ids = _prompt_ids(adapter, config.vocab_size, prompt_key, text_ids)
    if ids is not None:
      embedding = np.asarray(flatten(dict(base_params))[("token_embedder", "embedding")])
      for part in ("encoder", "decoder")[:adapter.num_transformer_submodules]:
        tree[part][PROMPT_LEAF] = np.asarray(embedding[ids], np.float32)
  return tree


# ----------------------------------------------------------------------------
# Folding an adapter into the base.

def merge_adapter(config: T5Config, params) -> tuple[T5Config, dict]:
  """(config without the adapter, params of the plain model computing the same).

  LoRA: W + (alpha / r) B A; IA3: W scaled along its output (its input for `wo`);
  norm-only: the tree as it is. Prompt tuning changes the input, not a weight: it
  cannot be merged. Scanned and per-layer trees alike (numpy float32 out).
  """
  adapter = config.adapter
  if adapter is None:
    return config, params
  if adapter.method == "prompt":
    raise UsageError("A prompt-tuning adapter cannot be merged into the base: it adds encoder "
                     "inputs, not weights. Keep it as an adapter (t5jax format, or HF PEFT "
                     "with `save_peft_adapter`).")
  flat = {k: np.asarray(v, np.float32) for k, v in flatten(dict(params)).items()}
  out = {k: v for k, v in flat.items() if not is_adapter_leaf(k)}
  for key, value in flat.items():
    name = key[-1]
    if name.endswith("_lora_a"):
      kernel_key = key[:-1] + (name[:-len("_lora_a")],)
      w = out[kernel_key]
      b = flat[key[:-1] + (kernel_key[-1] + "_lora_b",)]
      lead = 1 if "layers" in key else 0  # a scanned stack's leading layers axis
      a2 = value.reshape(*value.shape[:lead], -1, adapter.rank)
      b2 = b.reshape(*b.shape[:lead], adapter.rank, -1)
      out[kernel_key] = w + np.float32(adapter.scaling) * np.matmul(a2, b2).reshape(w.shape)
    elif name.endswith("_ia3"):
      kernel = name[:-len("_ia3")]
      kernel_key = key[:-1] + (kernel,)
      w = out[kernel_key]
      lead = 1 if "layers" in key else 0  # a scanned stack's leading layers axis
      in_dims = IN_DIMS[kernel]
      if kernel == "wo":  # input scale [.., F] over W [.., F, E]
        scale = value.reshape(value.shape + (1,) * (w.ndim - value.ndim))
      else:  # output scale [.., *out] over W [.., *in, *out]
        scale = value.reshape(value.shape[:lead] + (1,) * in_dims + value.shape[lead:])
      out[kernel_key] = w * scale
  return base_config(config), unflatten(out)


merge = merge_adapter  # the short name


# ----------------------------------------------------------------------------
# HF PEFT adapter folders.

def _kernel_map(config: T5Config) -> dict:
  """HF module name ('encoder.block.0.layer.0.SelfAttention.q') -> t5jax kernel path."""
  from t5jax.conversion import hf
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
  from t5jax.conversion.tree import check_tree
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


# ----------------------------------------------------------------------------
# A run's base checkpoint.

def write_base_reference(run_dir: str, checkpoint: str | None, seed: int,
                         step: int | None = None) -> None:
  """run_dir/base.json: the base an adapter run trains on (None: the seed's random init)."""
  record = {"checkpoint": os.path.abspath(checkpoint) if checkpoint else None, "seed": int(seed),
            "step": step}
  os.makedirs(run_dir, exist_ok=True)
  tmp = os.path.join(run_dir, BASE_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(run_dir, BASE_FILE))


def read_base_reference(run_dir: str) -> dict | None:
  path = os.path.join(run_dir, BASE_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def load_base(run_dir: str, config: T5Config) -> dict:
  """The base params an adapter run in `run_dir` was trained on (per base.json), in
  `config`'s layer layout."""
  ref = read_base_reference(run_dir)
  if ref is None:
    raise UsageError(f"{run_dir} holds adapter checkpoints ({config.adapter.method}) but no "
                     f"{BASE_FILE} naming their base checkpoint; it is written when training "
                     "starts. Load the base with load_checkpoint(BASE, adapter=...) instead.")
  base = base_config(config)
  if ref.get("checkpoint") is None:
    import jax
    from t5jax.model import init_params
    init = jax.jit(lambda key: init_params(base, key))  # jitted: eager init is slow
    return jax.tree.map(np.asarray, init(jax.random.PRNGKey(int(ref["seed"]))))
  from t5jax.conversion import load_checkpoint
  if not os.path.exists(ref["checkpoint"]):
    raise MissingFileError(f"{run_dir}/{BASE_FILE} names the base checkpoint "
                           f"{ref['checkpoint']!r}, which does not exist any more.")
  stored, params = load_checkpoint(ref["checkpoint"], step=ref.get("step"),
                                   scan_layers=config.scan_layers)
  fields = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers",
            "decoder_layers", "feed_forward_proj", "tie_word_embeddings",
            "relative_attention_num_buckets")
  changed = [f for f in fields if getattr(stored, f) != getattr(base, f)]
  if changed:
    raise UsageError(f"The base checkpoint {ref['checkpoint']} of {run_dir} no longer fits its "
                     f"adapter: {', '.join(changed)} differ.")
  return without_adapter_leaves(params)

