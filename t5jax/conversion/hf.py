"""HF transformers T5 checkpoints <-> t5jax parameters.

Reads `config.json` plus `model.safetensors` (single or sharded) or
`pytorch_model.bin` (needs torch), and writes `config.json` +
`model.safetensors` that `transformers.T5ForConditionalGeneration` loads.
No TensorFlow and no torch are needed for safetensors.

Both forms of untied (T5.1.1) checkpoints are read: transformers 4.x saves
`tie_word_embeddings: false` with its own `lm_head.weight`; transformers 5.x
saves `tie_word_embeddings: true, scale_decoder_outputs: false` and no
`lm_head.weight` (the head is the embedding, without the d_model**-0.5 rescale).
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator

import numpy as np

from t5jax.config import FEED_FORWARD_KINDS, T5Config
from t5jax.trees import check_tree, flatten, unflatten
from t5jax.errors import MissingFileError, UsageError

# One HF tensor <-> one t5jax leaf: (hf name, t5jax path, to_t5jax, to_hf).
Rule = tuple[str, tuple[str, ...], Callable, Callable]


def _linear_in(heads, d_kv):   # q/k/v: torch [H*D, d] -> [d, H, D]
  return (lambda w: w.T.reshape(w.shape[1], heads, d_kv),
          lambda p: p.reshape(p.shape[0], -1).T)


def _linear_out(heads, d_kv):  # o: torch [d, H*D] -> [H, D, d]
  return (lambda w: w.T.reshape(heads, d_kv, w.shape[0]),
          lambda p: p.reshape(-1, p.shape[-1]).T)


_T = (lambda w: w.T, lambda p: p.T)
_ID = (lambda w: w, lambda p: p)


def rules(config: T5Config) -> Iterator[Rule]:
  """Every HF tensor name and where it lives in the t5jax tree."""
  qkv, out = _linear_in(config.num_heads, config.d_kv), _linear_out(config.num_heads, config.d_kv)
  yield "shared.weight", ("token_embedder", "embedding"), *_ID
  mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  stacks = (("encoder", config.num_layers, (("SelfAttention", "attention", "pre_attention_layer_norm"),)),
            ("decoder", config.decoder_layers, (
                ("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                ("EncDecAttention", "encoder_decoder_attention", "pre_cross_attention_layer_norm"))))
  for stack, num_layers, attentions in stacks:
    yield (f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           (stack, "relpos_bias", "rel_embedding"), *_T)
    for i in range(num_layers):
      prefix, layer = f"{stack}.block.{i}.layer", (stack, f"layers_{i}")
      for j, (hf_name, name, norm) in enumerate(attentions):
        for w, ours in (("q", "query"), ("k", "key"), ("v", "value")):
          yield f"{prefix}.{j}.{hf_name}.{w}.weight", (*layer, name, ours), *qkv
        yield f"{prefix}.{j}.{hf_name}.o.weight", (*layer, name, "out"), *out
        yield f"{prefix}.{j}.layer_norm.weight", (*layer, norm, "scale"), *_ID
      j = len(attentions)
      for w in mlp:
        yield f"{prefix}.{j}.DenseReluDense.{w}.weight", (*layer, "mlp", w), *_T
      yield f"{prefix}.{j}.layer_norm.weight", (*layer, "pre_mlp_layer_norm", "scale"), *_ID
    yield f"{stack}.final_layer_norm.weight", (stack, f"{stack}_norm", "scale"), *_ID
  if not config.tie_word_embeddings:
    yield "lm_head.weight", ("decoder", "logits_dense"), *_T


# Written by HF alongside the real weights, or left out by it: never needed.
_IGNORED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(hf: dict) -> T5Config:
  """T5Config from an HF config.json dict (transformers 4.x or 5.x)."""
  # transformers derives dense_act_fn / is_gated_act from feed_forward_proj alone
  # (gated-gelu -> "gelu_new", gated-silu -> "silu"), so they are not read here.
  proj = hf.get("feed_forward_proj", "relu")
  if proj not in FEED_FORWARD_KINDS:
    raise UsageError(f"config.json feed_forward_proj={proj!r}: t5jax supports "
                     f"{', '.join(map(repr, FEED_FORWARD_KINDS))} (T5.1.0; T5.1.1, mT5, "
                     "ByT5, FLAN-T5; UL2).")
  tied = hf.get("tie_word_embeddings", True)
  return T5Config(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["num_heads"],
      d_kv=hf["d_kv"], d_ff=hf["d_ff"], num_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      feed_forward_proj=proj, tie_word_embeddings=tied,
      scale_tied_logits=bool(hf.get("scale_decoder_outputs", True)) if tied else True,
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      dropout_rate=hf.get("dropout_rate", 0.1),
      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-6),
      pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
      decoder_start_token_id=hf.get("decoder_start_token_id", 0) or 0)


# What transformers' T5Config sets dense_act_fn to for each feed_forward_proj.
_HF_ACTIVATIONS = {"relu": "relu", "gated-gelu": "gelu_new", "gated-silu": "silu"}


def config_to_hf(config: T5Config) -> dict:
  """An HF config.json dict (transformers 4.x form; 5.x reads it too)."""
  if config.tie_word_embeddings and not config.scale_tied_logits:
    raise UsageError("A tied head without the d_model**-0.5 rescale has no transformers-4.x "
                     "form; export it untied: params_to_hf writes lm_head.weight for it.")
  return {
      "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
      "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.d_kv,
      "d_ff": config.d_ff, "num_layers": config.num_layers,
      "num_decoder_layers": config.decoder_layers, "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": config.feed_forward_proj,
      "dense_act_fn": _HF_ACTIVATIONS[config.feed_forward_proj],
      "is_gated_act": config.is_gated,
      "tie_word_embeddings": config.tie_word_embeddings,
      "is_encoder_decoder": True, "pad_token_id": config.pad_token_id,
      "eos_token_id": config.eos_token_id,
      "decoder_start_token_id": config.decoder_start_token_id,
  }


def params_from_hf(state_dict: dict, config: T5Config, source: str = "state dict") -> dict:
  """HF tensors (numpy arrays by name) -> t5jax params (float32)."""
  missing, flat, used = [], {}, set(_IGNORED)
  for hf_name, path, to_ours, _ in rules(config):
    if hf_name not in state_dict:
      missing.append(hf_name)
      continue
    used.add(hf_name)
    flat[path] = np.ascontiguousarray(to_ours(np.asarray(state_dict[hf_name], np.float32)))
  unexpected = sorted(set(state_dict) - used)
  if missing or unexpected:
    raise UsageError(f"{source} does not match the T5 layout of its config: missing "
                     f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                     f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}.")
  params = unflatten(flat)
  check_tree(params, config, source)
  return params


def params_to_hf(params: dict, config: T5Config) -> dict:
  """t5jax params -> HF tensors by name (float32 numpy)."""
  flat = flatten(params)
  out = {hf_name: np.ascontiguousarray(to_hf(np.asarray(flat[path], np.float32)))
         for hf_name, path, _, to_hf in rules(config)}
  if config.tie_word_embeddings and not config.scale_tied_logits:
    out["lm_head.weight"] = out["shared.weight"].copy()
  return out


def is_hf_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, "config.json")) and any(
      os.path.exists(os.path.join(path, f)) for f in
      ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def _read_tensors(path: str) -> dict:
  from safetensors.numpy import load_file
  single = os.path.join(path, "model.safetensors")
  if os.path.exists(single):
    return load_file(single)
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(load_file(os.path.join(path, shard)))
    return tensors
  binary = os.path.join(path, "pytorch_model.bin")
  try:
    import torch
  except ImportError as e:
    raise ImportError(f"{binary} is a PyTorch pickle and reading it needs torch "
                      "(pip install torch), or convert it to model.safetensors.") from e
  state = torch.load(binary, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in state.items()}


def load_hf(path: str, **overrides) -> tuple[T5Config, dict]:
  """(config, params) from an HF T5 directory; overrides replace config fields."""
  if not is_hf_dir(path):
    raise MissingFileError(f"{path} is not an HF T5 directory: expected config.json and "
                            "model.safetensors (or pytorch_model.bin).")
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  if hf.get("model_type", "t5") not in ("t5", "mt5"):
    raise UsageError(f"{path}/config.json has model_type={hf.get('model_type')!r}; "
                     "only T5 checkpoints can be imported.")
  tensors = _read_tensors(path)
  config = config_from_hf(hf)
  if config.tie_word_embeddings and "lm_head.weight" in tensors:
    head = tensors.pop("lm_head.weight")
    if not np.array_equal(head, tensors.get("shared.weight")):
      # A head of its own under a tied config: keep it, untied.
      config = config.replace(tie_word_embeddings=False, scale_tied_logits=True)
      tensors["lm_head.weight"] = head
  params = params_from_hf(tensors, config, source=path)
  return config.replace(**overrides) if overrides else config, params


def save_hf(path: str, config: T5Config, params: dict) -> None:
  """Writes config.json + model.safetensors loadable by transformers (per-layer tensors:
  a scanned model's params are unstacked here)."""
  from safetensors.numpy import save_file
  if config.scan_layers:
    from t5jax.model import unscan_params  # flax: only for scanned params
    config, params = unscan_params(config, params)
  if config.adapter is not None:
    raise UsageError(f"An HF T5 checkpoint has no place for a {config.adapter.method} adapter: "
                     "merge it first (t5jax.peft.merge_adapter; `t5jax convert` does), or "
                     "write the adapter alone (t5jax.conversion.peft_hf.save_peft_adapter, --to peft).")
  os.makedirs(path, exist_ok=True)
  hf_config = config
  if config.tie_word_embeddings and not config.scale_tied_logits:
    hf_config = config.replace(tie_word_embeddings=False)
  tensors = params_to_hf(params, config)
  save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config_to_hf(hf_config), f, indent=2, sort_keys=True)
