"""Device mesh, logical-axis rules and NamedShardings: all of t5jax's sharding.

The model names axes logically ('batch', 'embed', 'heads', ...); this module
alone maps those names onto a `jax.sharding.Mesh` with axes ('data', 'model').

    mesh = make_mesh(MeshConfig(data=-1, model=2, rules="1d"))
    with activate(mesh, rules("1d")):  # needed while tracing the model
      ...
    param_sh = param_shardings(mesh, model_config, "1d")

Rule sets (flax semantics: for each logical name the first rule whose mesh axis
is not yet used by that array wins, so one name may map differently for
parameters and activations):
  '1d'   T5X with parameter_partitioning_dims=1: tensor parallel over 'model'
         (vocab/mlp/heads), data parallel over 'data', 'embed' replicated.
  '2d'   T5X with parameter_partitioning_dims=2: as '1d', plus parameters'
         'embed' dim sharded over 'data' (activations keep 'embed' unsharded
         because 'batch' already took 'data').
  'fsdp' ZeRO-3 style: the batch and every parameter's 'embed' dim are
         sharded over all devices ('data' and 'model' together); no tensor
         parallelism. Optimizer states follow their parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from t5jax.errors import UnknownNameError, UsageError

MESH_AXES = ("data", "model")

# 'layers' is the stacked axis of scanned parameters (config.scan_layers):
# never sharded, as the scan reads one layer's slice per step.
# Adapters (t5jax.peft): 'lora_rank' (LoRA's r) and 'prompt' (prompt tuning's virtual
# tokens) are small and replicated; their other axes follow the kernel they adapt.
_COMMON = (("length", None), ("kv", None), ("relpos_buckets", None), ("layers", None),
           ("lora_rank", None), ("prompt", None))
RULE_SETS: dict[str, tuple] = {
    "1d": (("batch", "data"), ("vocab", "model"), ("mlp", "model"),
           ("heads", "model"), ("embed", None)) + _COMMON,
    "2d": (("batch", "data"), ("vocab", "model"), ("mlp", "model"),
           ("heads", "model"), ("embed", "data")) + _COMMON,
    "fsdp": (("batch", ("data", "model")), ("embed", ("data", "model")),
             ("vocab", None), ("mlp", None), ("heads", None)) + _COMMON,
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh shape (-1: all remaining devices) and the name of the rule set."""

  data: int = -1
  model: int = 1
  rules: str = "1d"

  def __post_init__(self):
    rules(self.rules)  # a bad name fails when the config is built, not at the first step
    if self.data == -1 and self.model == -1:
      raise UsageError("MeshConfig: at most one of data/model may be -1.")
    if min(self.data, self.model) < -1 or 0 in (self.data, self.model):
      raise UsageError(f"MeshConfig(data={self.data}, model={self.model}): each must be >= 1, "
                       "or -1 for all the remaining devices.")


def rules(name: str) -> tuple:
  if name not in RULE_SETS:
    raise UnknownNameError(f"Unknown partitioning rule set {name!r}; choose from "
                           f"{sorted(RULE_SETS)}.")
  return RULE_SETS[name]


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data', 'model') mesh over all (global) devices.

  'model' is the inner (fastest-varying) axis so tensor-parallel groups sit
  on neighbouring devices, which on GPUs usually share NVLink and one host.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  data, model = config.data, config.model
  if model == -1 and data == -1:
    raise UsageError("MeshConfig: at most one of data/model may be -1.")
  if data == -1:
    if model < 1 or n % model:
      raise UsageError(f"MeshConfig(model={model}) does not divide the {n} devices.")
    data = n // model
  elif model == -1:
    if data < 1 or n % data:
      raise UsageError(f"MeshConfig(data={data}) does not divide the {n} devices.")
    model = n // data
  if data < 1 or model < 1 or data * model != n:
    raise UsageError(f"MeshConfig(data={config.data}, model={config.model}) gives a "
                     f"{data}x{model} mesh, but there are {n} devices; the product must "
                     f"equal the device count (use -1 for 'all the rest').")
  rules(config.rules)  # fail early on a bad name
  # Process-major device order: each process's devices form contiguous rows
  # of 'data', so its local batch rows map onto its own devices.
  devices.sort(key=lambda d: (d.process_index, d.id))
  return Mesh(np.array(devices).reshape(data, model), MESH_AXES)


@contextlib.contextmanager
def activate(mesh: Mesh, rule_set: Sequence):
  """Mesh + logical rules for tracing: the model's activation constraints
  (`nn.with_logical_constraint`) are no-ops without them."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rule_set):
    yield


def logical_to_spec(logical: P, rule_set: Sequence) -> P:
  return nn.logical_to_mesh_axes(logical, rule_set)


def _check_divisible(name: str, shape, spec: P, mesh: Mesh):
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      continue
    size = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,)))
    if dim % size:
      raise UsageError(
          f"Parameter {name} of shape {tuple(shape)} cannot be sharded as {spec}: dimension "
          f"{dim} is not divisible by mesh axes {axes} of size {size} (mesh "
          f"{dict(mesh.shape)}). Pick another mesh shape or rule set.")


def param_specs(model_config, rule_set: Sequence, mesh: Mesh | None = None):
  """A params-shaped tree of mesh PartitionSpecs; checks divisibility if mesh given."""
  from t5jax.model import abstract_params  # keeps this module importable without the model
  boxed = abstract_params(model_config)
  logical = nn.get_partition_spec(boxed)
  specs = jax.tree.map(lambda s: logical_to_spec(s, rule_set), logical,
                       is_leaf=lambda x: isinstance(x, P))
  if mesh is not None:
    shapes = nn.meta.unbox(boxed)
    for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(shapes)[0],
                                  jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
      _check_divisible(jax.tree_util.keystr(path), leaf.shape, spec, mesh)
  return specs


def param_shardings(mesh: Mesh, model_config, rule_set: Sequence):
  specs = param_specs(model_config, rule_set, mesh)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def _path_keys(path) -> tuple:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _derive_spec(param_shape, param_spec: P, leaf_shape) -> P:
  """Sharding of an optimizer-state leaf that belongs to a parameter.

  Same shape: the parameter's spec (Adam moments, unfactored Adafactor v).
  One dim fewer: Adafactor's factored row/column statistics, which drop one
  axis; they keep the spec of the remaining axes. Anything else (optax's
  (1,)-shaped placeholders, counters) is small and replicated.
  """
  spec = tuple(param_spec) + (None,) * (len(param_shape) - len(param_spec))
  if tuple(leaf_shape) == tuple(param_shape):
    return P(*spec)
  if len(leaf_shape) == len(param_shape) - 1:
    for i in range(len(param_shape)):
      if tuple(param_shape[:i]) + tuple(param_shape[i + 1:]) == tuple(leaf_shape):
        return P(*(spec[:i] + spec[i + 1:]))
  return P()


def opt_state_shardings(mesh: Mesh, abstract_opt_state, abstract_params, param_sh):
  """NamedShardings for an optimizer state, derived from the parameters'.

  optax states embed params-shaped subtrees (e.g. FactoredState.v_row), so
  an optimizer leaf's key path ends with its parameter's key path; match on
  that suffix, then adapt the spec to the leaf's shape (`_derive_spec`).
  """
  by_path = {}
  for (path, shape), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                               jax.tree.leaves(param_sh)):
    by_path[_path_keys(path)] = (shape.shape, sh.spec)
  max_len = max(len(k) for k in by_path) if by_path else 0

  def one(path, leaf):
    keys = _path_keys(path)
    for n in range(min(max_len, len(keys)), 0, -1):
      hit = by_path.get(keys[-n:])
      if hit is not None:
        return NamedSharding(mesh, _derive_spec(hit[0], hit[1], leaf.shape))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def batch_sharding(mesh: Mesh, rule_set: Sequence, ndim: int = 2) -> NamedSharding:
  """Rows over the mesh axes that 'batch' maps to; other dims replicated."""
  return NamedSharding(mesh, logical_to_spec(P("batch", *([None] * (ndim - 1))), rule_set))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh, rule_set: Sequence) -> int:
  """How many shards the batch dimension is split into."""
  axes = batch_sharding(mesh, rule_set).spec[0]
  axes = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
  return math.prod(mesh.shape[a] for a in axes)


def _per_device_bytes(tree, shardings) -> int:
  total = 0
  for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += math.prod(sh.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
  return total


def describe(mesh: Mesh, abstract_params, param_sh, abstract_opt_state=None,
             opt_sh=None, per_parameter: bool = True) -> str:
  """The start-up summary: mesh, per-device memory and (per_parameter) a table of each
  parameter's shape, partition spec and per-device shard."""
  mib = 1 / 2**20
  lines = [f"Mesh {dict(mesh.shape)} over {mesh.devices.size} devices "
           f"({jax.process_count()} process(es), platform {mesh.devices.flat[0].platform})."]
  p_bytes = _per_device_bytes(abstract_params, param_sh)
  line = f"Per device: params {p_bytes * mib:.2f} MiB"
  if abstract_opt_state is not None:
    o_bytes = _per_device_bytes(abstract_opt_state, opt_sh)
    line += f", optimizer state {o_bytes * mib:.2f} MiB, total {(p_bytes + o_bytes) * mib:.2f} MiB"
  lines.append(line + ".")
  if not per_parameter:
    return "\n".join(lines)
  for (path, leaf), sh in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                              jax.tree.leaves(param_sh)):
    lines.append(f"  {'/'.join(_path_keys(path)):<70} {str(tuple(leaf.shape)):<18} "
                 f"{str(sh.spec):<28} shard {tuple(sh.shard_shape(leaf.shape))}")
  return "\n".join(lines)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh, rule_set: Sequence,
                 ) -> dict[str, jax.Array]:
  """Global arrays from this process's rows (each process feeds its own devices).

  The global batch is the concatenation of every process's local batch in
  process order, which `make_mesh`'s device order makes contiguous.
  """
  out = {}
  for k, v in local_batch.items():
    v = np.asarray(v)
    sh = batch_sharding(mesh, rule_set, v.ndim)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sh, v, global_shape)
  return out

