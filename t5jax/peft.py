"""Parameter-efficient finetuning: LoRA, IA3, prompt tuning and norm-only tuning.

    config = get_config("t5.1.1-small", adapter=AdapterConfig("lora", rank=8, alpha=16))
    adapter = init_adapter(config, base_params, rng)   # the trainable tree
    params = combine(base_params, adapter)              # what T5(config).apply takes
    trainable, frozen = split(config, params)

The methods live in the model itself (t5jax.layers / t5jax.model, driven by
`T5Config.adapter`, a t5jax.config.AdapterConfig); this module is the
bookkeeping around them: which leaves train, their initialisation, folding an
adapter into the base kernels, a run's reference to its base checkpoint. HF PEFT's
adapter folders, both ways, are t5jax.conversion.peft_hf's.

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


import numpy as np

from t5jax.config import AdapterConfig, T5Config
from t5jax.trees import flatten, unflatten
from t5jax.errors import UsageError

__all__ = ["AdapterConfig", "is_trainable", "split", "combine", "base_config", "init_adapter",
           "count", "describe_trainable", "merge_adapter", "merge"]

ADAPTER_SUFFIXES = ("_lora_a", "_lora_b", "_ia3")
PROMPT_LEAF = "prompt_embedding"
# Input axes of each kernel (the rest are its output axes).
IN_DIMS = {"query": 1, "key": 1, "value": 1, "out": 2, "wi": 1, "wi_0": 1, "wi_1": 1, "wo": 1}


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
