"""Original T5 (Mesh TensorFlow) and T5X checkpoints -> t5jax parameters.

Covered formats, all read without downloads:
  * Mesh TF / original T5 TF checkpoints (`model.ckpt-N.index` + data): read
    with `tf.train.load_checkpoint` (needs TensorFlow, imported here lazily).
  * T5X checkpoints as T5X writes them (`checkpoint_N/checkpoint`, a msgpack
    file whose large arrays live in TensorStore zarr folders beside it).
  * T5X or t5jax parameter trees saved with orbax (PyTree checkpoints).
Scanned-layer trees (one stacked array per stack under `encoder/layers/...`)
are unstacked on import: T5X's (`scan_layers=True`, stacked along
`param_scan_axis`, 1 by default) and t5jax's own (axis 0). Not covered:
optimizer state (only parameters are imported).

Everything is first brought to T5X's flat naming (`encoder/layers_0/attention/
query/kernel` of shape [embed, heads*kv]), then reshaped into t5jax's tree,
which uses the same names with per-head kernels [embed, heads, kv].
"""

from __future__ import annotations

import os
import re

import numpy as np

from t5jax.config import T5Config
from t5jax.trees import check_tree, flatten, unflatten
from t5jax.errors import UsageError

_ATTENTION = ("attention", "self_attention", "encoder_decoder_attention")


# ----------------------------------------------------------------------------
# T5X flat names <-> t5jax tree.

def config_from_t5x(flat: dict, **overrides) -> T5Config:
  """Infers the architecture from parameter shapes (checkpoints carry no config)."""
  shape = lambda *path: np.shape(flat[path])
  try:
    vocab, d_model = shape("token_embedder", "embedding")
    heads, buckets = shape("encoder", "relpos_bias", "rel_embedding")
    qk = shape("encoder", "layers_0", "attention", "query", "kernel")
  except KeyError as e:
    raise UsageError(f"Not a T5 parameter tree: no {'/'.join(e.args[0])}. Found e.g. "
                     f"{['/'.join(k) for k in list(flat)[:5]]}.") from None
  gated = ("encoder", "layers_0", "mlp", "wi_0", "kernel") in flat
  d_ff = shape("encoder", "layers_0", "mlp", "wi_0" if gated else "wi", "kernel")[1]
  count = lambda stack: len({k[1] for k in flat if k[0] == stack and k[1].startswith("layers_")})
  fields = dict(vocab_size=vocab, d_model=d_model, num_heads=heads, d_kv=qk[-1] // heads,
                d_ff=d_ff, num_layers=count("encoder"), num_decoder_layers=count("decoder"),
                feed_forward_proj="gated-gelu" if gated else "relu",
                tie_word_embeddings=("decoder", "logits_dense", "kernel") not in flat,
                relative_attention_num_buckets=buckets,
                dropout_rate=0.0 if gated else 0.1)
  fields.update(overrides)
  return T5Config(**fields)


def params_from_t5x(flat: dict, config: T5Config, source: str) -> dict:
  """T5X flat {path tuple: array} -> t5jax params."""
  h, d = config.num_heads, config.d_kv
  out = {}
  for path, value in flat.items():
    value = np.asarray(value, np.float32)
    if path[-1] == "kernel":
      path = path[:-1]
      if len(path) >= 2 and path[-2] in _ATTENTION:
        value = value.reshape(-1, h, d) if path[-1] != "out" else value.reshape(h, d, -1)
    out[path] = np.ascontiguousarray(value)
  params = unflatten(out)
  check_tree(params, config, source)
  return params


def _scan_axis(stack_flat: dict, d_model: int) -> int:
  """Which axis a scanned stack's parameters are stacked along.

  t5jax's own trees (no `kernel` leaves) stack along 0. T5X stacks along its
  `param_scan_axis` (1 by default, 0 possible): read off the query kernel,
  [embed, layers, heads*kv] or [layers, embed, heads*kv].
  """
  kernels = [np.shape(v) for k, v in stack_flat.items() if k[-2:] == ("query", "kernel")]
  if not kernels:
    return 0
  shape = kernels[0]
  return 0 if shape[1] == d_model and shape[0] != d_model else 1


def _unstack_layers(flat: dict) -> dict:
  """Scanned stacks (`<stack>/layers/...`) -> per-layer `<stack>/layers_{i}/...` entries."""
  if not any(len(k) > 2 and k[1] == "layers" for k in flat):
    return flat
  try:
    d_model = np.shape(flat[("token_embedder", "embedding")])[1]
  except KeyError:
    raise UsageError("Not a T5 parameter tree: no token_embedder/embedding.") from None
  out = {k: v for k, v in flat.items() if not (len(k) > 2 and k[1] == "layers")}
  for stack in ("encoder", "decoder"):
    stacked = {k: v for k, v in flat.items() if k[0] == stack and len(k) > 2 and k[1] == "layers"}
    if not stacked:
      continue
    axis = _scan_axis(stacked, d_model)
    for path, value in stacked.items():
      value = np.asarray(value)
      for i in range(value.shape[axis]):
        out[(stack, f"layers_{i}", *path[2:])] = np.take(value, i, axis=axis)
    # T5X's scalable_t5 keeps a relative position table in every layer; T5
    # (and t5jax) share one per stack, so accept them only when all are equal.
    tables = sorted((k for k in out if k[0] == stack and len(k) == 4
                     and k[2] == "relative_posemb"), key=lambda k: int(k[1][7:]))
    if tables:
      first = out[tables[0]]
      if not all(np.array_equal(out[k], first) for k in tables):
        raise UsageError(f"{stack}: per-layer relative position tables (T5X scalable_t5) "
                         "differ between layers; t5jax shares one table per stack.")
      out.setdefault((stack, "relpos_bias", "rel_embedding"), first)
      for k in tables:
        del out[k]
  return out


def _is_t5jax_tree(flat: dict) -> bool:
  return any(k[-1] == "query" and np.ndim(v) == 3 for k, v in flat.items())


def _params_subtree(tree: dict) -> dict:
  """Finds the parameters inside a saved train state."""
  for key in ("target", "params"):
    if isinstance(tree, dict) and key in tree and isinstance(tree[key], dict):
      return _params_subtree(tree[key])
  return tree


def _from_param_tree(tree: dict, source: str, overrides: dict) -> tuple[T5Config, dict]:
  flat = _unstack_layers(flatten(_params_subtree(tree)))
  if _is_t5jax_tree(flat):  # already in t5jax layout: flatten the kernels to share one path
    flat = {(*k, "kernel") if k[-1] in ("query", "key", "value", "out", "wi", "wi_0", "wi_1",
                                         "wo", "logits_dense") else k:
            (v.reshape(v.shape[0], -1) if k[-1] in ("query", "key", "value") else
             v.reshape(-1, v.shape[-1]) if k[-1] == "out" else v)
            for k, v in flat.items()}
  config = config_from_t5x(flat, **overrides)
  return config, params_from_t5x(flat, config, source)


# ----------------------------------------------------------------------------
# Mesh TensorFlow (original T5) names.

_TF_LAYER = re.compile(r"^(encoder|decoder)/block_(\d+)/layer_(\d+)/(.+)$")
_TF_SUBLAYERS = {
    "encoder": ("attention", "mlp"),
    "decoder": ("self_attention", "encoder_decoder_attention", "mlp"),
}
_TF_NORMS = {"attention": "pre_attention_layer_norm", "self_attention": "pre_self_attention_layer_norm",
             "encoder_decoder_attention": "pre_cross_attention_layer_norm", "mlp": "pre_mlp_layer_norm"}
_TF_QKVO = {"q": "query", "k": "key", "v": "value", "o": "out"}


def t5x_path_from_tf(name: str) -> tuple[str, ...] | None:
  """Mesh TF variable name -> T5X path; None for non-parameters (slots, step)."""
  if "_slot_" in name or name.startswith(("global_step", "beta")) or "/" not in name:
    return None
  if name == "shared/embedding":
    return ("token_embedder", "embedding")
  if name == "decoder/logits/kernel":
    return ("decoder", "logits_dense", "kernel")
  stack_norm = re.fullmatch(r"(encoder|decoder)/(final_layer_norm|rms_norm)/scale", name)
  if stack_norm:
    return (stack_norm[1], f"{stack_norm[1]}_norm", "scale")
  m = _TF_LAYER.match(name)
  if not m:
    return None
  stack, block, sub, rest = m[1], int(m[2]), int(m[3]), m[4]
  kind = _TF_SUBLAYERS[stack][sub]
  if rest.endswith("relative_attention_bias"):
    return (stack, "relpos_bias", "rel_embedding")
  if re.fullmatch(r"(layer_norm|rms_norm)/scale", rest):
    return (stack, f"layers_{block}", _TF_NORMS[kind], "scale")
  leaf = rest.split("/")
  if kind == "mlp":  # DenseReluDense/wi/kernel
    return (stack, f"layers_{block}", "mlp", leaf[1], "kernel")
  return (stack, f"layers_{block}", kind, _TF_QKVO[leaf[1]], "kernel")  # SelfAttention/q


def load_tf_checkpoint(path: str, **overrides) -> tuple[T5Config, dict]:
  """(config, params) from a Mesh TF checkpoint prefix or its folder."""
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ImportError("Reading a TensorFlow checkpoint needs TensorFlow: "
                      "pip install tensorflow-cpu (t5jax[data] includes it).") from e
  reader = tf.train.load_checkpoint(path)
  flat, skipped = {}, []
  for name in reader.get_variable_to_shape_map():
    t5x_path = t5x_path_from_tf(name)
    if t5x_path is None:
      skipped.append(name)
    else:
      flat[t5x_path] = reader.get_tensor(name)
  config = config_from_t5x(flat, **overrides)
  return config, params_from_t5x(flat, config, source=path)


# ----------------------------------------------------------------------------
# T5X's own format: msgpack + TensorStore.

def _read_tensorstore(spec: dict, checkpoint_dir: str) -> np.ndarray:
  import tensorstore as ts
  spec = dict(spec)
  kvstore = dict(spec["kvstore"])
  # T5X writes paths relative to the checkpoint folder (and a dummy GCS bucket).
  kvstore = {"driver": "file", "path": os.path.join(checkpoint_dir, kvstore["path"])}
  spec["kvstore"] = kvstore
  return ts.open(spec, open=True, read=True).result().read().result()


def load_t5x_msgpack(path: str, **overrides) -> tuple[T5Config, dict]:
  from flax import serialization
  checkpoint_dir = os.path.dirname(path) if os.path.isfile(path) else path
  with open(os.path.join(checkpoint_dir, "checkpoint"), "rb") as f:
    state = serialization.msgpack_restore(f.read())

  def materialise(node):
    if isinstance(node, dict) and {"driver", "kvstore"} <= set(node):
      return _read_tensorstore(node, checkpoint_dir)
    if isinstance(node, dict):
      return {k: materialise(v) for k, v in node.items()}
    return node

  return _from_param_tree(materialise(_params_subtree(state)), checkpoint_dir, overrides)


def load_orbax_params(path: str) -> dict:
  """A nested dict of numpy arrays from an orbax PyTree checkpoint."""
  import warnings
  import orbax.checkpoint as ocp
  with warnings.catch_warnings():
    # Restoring to host numpy: the saved device layout is irrelevant here.
    warnings.filterwarnings("ignore", message="Sharding info not provided")
    tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))

  def to_numpy(node):
    return {k: to_numpy(v) for k, v in node.items()} if isinstance(node, dict) else np.asarray(node)

  return to_numpy(tree)


def load_orbax_tree(path: str, **overrides) -> tuple[T5Config, dict]:
  return _from_param_tree(load_orbax_params(path), path, overrides)


def is_tf_checkpoint(path: str) -> bool:
  if os.path.isfile(path + ".index"):
    return True
  state = os.path.join(path, "checkpoint")
  if os.path.isdir(path) and os.path.isfile(state):
    with open(state, "rb") as f:
      return f.read(64).startswith(b"model_checkpoint_path")
  return False


def is_t5x_msgpack(path: str) -> bool:
  state = os.path.join(path, "checkpoint")
  return os.path.isfile(state) and not is_tf_checkpoint(path)


def is_orbax_tree(path: str) -> bool:
  return os.path.isdir(path) and any(
      os.path.exists(os.path.join(path, f))
      for f in ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "_sharding"))
