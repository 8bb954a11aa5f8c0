"""config.scan_layers: scanned stacks compute, train and shard as per-layer ones.

Scanned params are the per-layer ones stacked by `scan_params`, so every check
compares the two layouts on the same weights.
"""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from synthetic_batches import FAST_COMPILE, make_batch
from t5jax import checkpoints, partitioning as pt
from t5jax.config import get_config
from t5jax.conversion import load_checkpoint, save_checkpoint, t5x
from t5jax.trees import flatten, unflatten
from t5jax.losses import LossConfig
from t5jax.model import T5, count_params, init_cache, init_params, logical_axes, scan_params, unscan_params
from t5jax.optim import OptimizerConfig, make_optimizer
from t5jax.train_step import jit_steps, make_train_step, state_shardings
from t5jax.trainer import create_state

# Different depths per stack: the stacks are scanned (and optimized) separately.
CONFIG = get_config("tiny", vocab_size=128, num_decoder_layers=3)
SCANNED = CONFIG.replace(scan_layers=True)
# Factor at 32 so the tiny model's matrices get factored second moments.
OPT = OptimizerConfig(learning_rate=0.05, schedule="constant", min_dim_size_to_factor=32)


@functools.lru_cache(maxsize=None)
def per_layer_params():
  init = jax.jit(lambda: init_params(CONFIG, jax.random.PRNGKey(0)), compiler_options=FAST_COMPILE)
  return jax.device_get(init())


def scanned_params():
  return scan_params(CONFIG, per_layer_params())[1]


def run_steps(config, params, mesh_config=pt.MeshConfig(1, 1), num_steps=3):
  devices = jax.devices()[:1] if mesh_config.data == mesh_config.model == 1 else None
  mesh = pt.make_mesh(mesh_config, devices)
  rule_set = pt.rules(mesh_config.rules)
  tx = make_optimizer(OPT)
  _, sh = state_shardings(mesh, config, rule_set, tx)
  compiled = jit_steps(mesh, rule_set, sh, make_train_step(config, tx, LossConfig()),
                       compiler_options=FAST_COMPILE)
  state = create_state(config, tx, mesh, rule_set, sh, params=params,
                       compiler_options=FAST_COMPILE)
  losses = []
  for step in range(num_steps):
    batch = pt.global_batch(make_batch(step), mesh, rule_set)
    state, metrics = compiled.train_step(state, batch, jax.random.PRNGKey(100 + step))
    losses.append(float(metrics["loss"]))
  return losses, state, sh


@pytest.fixture(scope="module")
def reference():
  losses, state, _ = run_steps(CONFIG, per_layer_params())
  return losses, jax.device_get(state.params)


def assert_trees_close(a, b, rtol=2e-4, atol=2e-5):
  fa, fb = flatten(a), flatten(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_allclose(fa[k], fb[k], rtol=rtol, atol=atol, err_msg="/".join(k))


def test_scanned_logits_equal_per_layer_logits():
  batch = make_batch(0, batch_size=4)
  enc, dec = batch["encoder_input_tokens"], batch["decoder_input_tokens"]
  forward = lambda cfg: jax.jit(functools.partial(T5(cfg).apply, deterministic=True),
                                compiler_options=FAST_COMPILE)
  want = forward(CONFIG)({"params": per_layer_params()}, enc, dec)
  got = forward(SCANNED)({"params": scanned_params()}, enc, dec)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The stacked axis is a logical axis of its own, and only shape-checked init
  # of the scanned model gives the stacked shapes that scan_params makes.
  axes = logical_axes(SCANNED)
  assert tuple(axes["encoder"]["layers"]["attention"]["query"]) == ("layers", "embed", "heads", "kv")
  assert tuple(axes["decoder"]["layers"]["mlp"]["wo"]) == ("layers", "mlp", "embed")
  assert tuple(axes["encoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
  shapes = jax.eval_shape(lambda: init_params(SCANNED, jax.random.PRNGKey(0)))
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(np.shape, scanned_params())
  assert count_params(SCANNED) == count_params(CONFIG)


def test_scan_unscan_round_trip_is_exact():
  params = per_layer_params()
  config, stacked = scan_params(CONFIG, params)
  assert config.scan_layers and "layers_0" not in stacked["encoder"]
  assert stacked["decoder"]["layers"]["mlp"]["wi_0"].shape == (3, 64, 128)
  assert isinstance(stacked["encoder"]["layers"]["mlp"]["wo"], np.ndarray)  # host stays host
  back_config, back = unscan_params(config, stacked)
  assert back_config == CONFIG
  fa, fb = flatten(back), flatten(params)
  assert fa.keys() == fb.keys()
  assert all(np.array_equal(fa[k], fb[k]) for k in fa)
  # Already in the asked-for layout: unchanged.
  assert unscan_params(CONFIG, params)[1] == params
  assert flatten(scan_params(config, stacked)[1]).keys() == flatten(stacked).keys()
  # Incremental decoding refuses scanned stacks and says what to do.
  with pytest.raises(ValueError, match="unscan_params"):
    init_cache(SCANNED, 2, 4, 6)


def test_adafactor_treats_each_layer_as_its_own_tensor():
  """A stacked [L, ...] leaf gets per-layer factoring, clipping and parameter scale."""
  rng = np.random.default_rng(0)
  layers = [{"mlp": rng.normal(size=(64, 128)).astype(np.float32) * (i + 1),
             "query": rng.normal(size=(64, 4, 16)).astype(np.float32)} for i in range(3)]
  per_layer = {"embedding": rng.normal(size=(128, 64)).astype(np.float32),
               **{f"layers_{i}": p for i, p in enumerate(layers)}}
  stacked = {"embedding": per_layer["embedding"],
             "layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}
  tx = make_optimizer(OPT)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params):
    state = tx.init(params)
    for step in range(3):
      grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)
      updates, state = tx.update(grads, state, params)
      params = jax.tree.map(jnp.add, params, updates)
    return params

  got, want = run(stacked), run(per_layer)
  np.testing.assert_allclose(got["embedding"], want["embedding"], rtol=1e-6)
  for i in range(3):
    for name in ("mlp", "query"):
      np.testing.assert_allclose(got["layers"][name][i], want[f"layers_{i}"][name],
                                 rtol=1e-5, atol=1e-6)


def test_training_matches_per_layer_training(reference):
  ref_losses, ref_params = reference
  losses, state, _ = run_steps(SCANNED, scanned_params())
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert ref_losses[-1] < ref_losses[0]
  assert_trees_close(unscan_params(SCANNED, jax.device_get(state.params))[1], ref_params)


def test_sharded_2d_with_remat_keeps_layers_axis_unsharded(reference):
  """Scan + remat 'full' (nn.remat inside the scan) + 2-D sharding over the 8
  simulated devices: one compile covers the three together, as large runs use them."""
  ref_losses, ref_params = reference
  losses, state, sh = run_steps(SCANNED.replace(remat_policy="full"), scanned_params(),
                                pt.MeshConfig(4, 2, "2d"))
  np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
  assert_trees_close(unscan_params(SCANNED, jax.device_get(state.params))[1], ref_params)
  wi = state.params["encoder"]["layers"]["mlp"]["wi_0"]
  assert wi.sharding.spec == P(None, "data", "model") and len(wi.addressable_shards) == 8
  for path, s in jax.tree_util.tree_flatten_with_path(sh.params)[0]:
    if "layers" in pt._path_keys(path):
      assert s.spec[0] is None, path
  # Factored Adafactor statistics keep the leading layers axis, unsharded,
  # and the sharding of the parameter axis they keep.
  stats = [(s.spec, x.shape) for x, s in zip(jax.tree.leaves(state.opt_state),
                                              jax.tree.leaves(sh.opt_state))
           if x.ndim == 2 and x.shape[0] == CONFIG.num_layers]
  assert (P(None, "data"), (2, 64)) in stats and (P(None, "model"), (2, 128)) in stats


def test_checkpoints_convert_at_the_boundary(tmp_path):
  params = per_layer_params()
  config, stacked = scan_params(CONFIG, params)
  # HF export of a scanned model writes per-layer tensors; import gives either layout.
  save_checkpoint(str(tmp_path / "hf"), config, stacked, format="hf")
  loaded_config, loaded = load_checkpoint(str(tmp_path / "hf"))
  assert not loaded_config.scan_layers and "layers_1" in loaded["encoder"]
  assert_trees_close(loaded, params, rtol=0, atol=0)
  loaded_config, loaded = load_checkpoint(str(tmp_path / "hf"), scan_layers=True)
  assert loaded_config.scan_layers
  assert_trees_close(loaded, stacked, rtol=0, atol=0)
  # A t5jax folder keeps the layout it was saved in, unless asked otherwise.
  save_checkpoint(str(tmp_path / "t5jax"), config, stacked, format="t5jax")
  loaded_config, loaded = load_checkpoint(str(tmp_path / "t5jax"))
  assert loaded_config == config
  assert_trees_close(loaded, stacked, rtol=0, atol=0)
  assert_trees_close(load_checkpoint(str(tmp_path / "t5jax"), scan_layers=False)[1], params,
                     rtol=0, atol=0)


def test_runs_from_before_scan_layers_still_resume(tmp_path):
  stored = dataclasses.asdict(CONFIG)
  del stored["scan_layers"]  # a model_config.json written before the field existed
  (tmp_path / "model_config.json").write_text(json.dumps(stored))
  assert checkpoints.check_model_config(str(tmp_path), CONFIG) == {}
  # scan_layers changes no parameter: a resume may switch it (the layout is converted).
  assert checkpoints.check_model_config(str(tmp_path), SCANNED) == {"scan_layers": (False, True)}


@pytest.mark.parametrize("scan_axis", [1, 0])
def test_t5x_scanned_tree(scan_axis):
  """T5X names scanned params `<stack>/layers/...`, stacked along param_scan_axis
  (1 by default), with [embed, heads*kv] kernels; scalable_t5 also keeps a
  relative position table per layer (equal here, so it is accepted)."""
  params = per_layer_params()
  flat = {}
  for path, v in flatten(params).items():
    if path[-1] in ("query", "key", "value"):
      v = v.reshape(v.shape[0], -1)
    elif path[-1] == "out":
      v = v.reshape(-1, v.shape[-1])
    flat[path + ("kernel",) if v.ndim == 2 and path[-1] != "embedding"
         and path[-1] != "rel_embedding" else path] = v
  tree = unflatten(flat)
  for stack, n in (("encoder", CONFIG.num_layers), ("decoder", CONFIG.decoder_layers)):
    layers = [tree[stack].pop(f"layers_{i}") for i in range(n)]
    table = tree[stack].pop("relpos_bias")["rel_embedding"]
    for layer in layers:
      layer["relative_posemb"] = {"rel_embedding": table}
    tree[stack]["layers"] = jax.tree.map(lambda *xs: np.stack(xs, axis=scan_axis), *layers)
  config, loaded = t5x._from_param_tree({"target": tree}, "t5x scanned", {})
  assert config == CONFIG.replace(dropout_rate=0.0)
  assert_trees_close(loaded, params, rtol=0, atol=0)
  # A table per layer that differs cannot be shared: refused by name.
  tree["decoder"]["layers"]["relative_posemb"]["rel_embedding"] = np.random.default_rng(0).normal(
      size=tree["decoder"]["layers"]["relative_posemb"]["rel_embedding"].shape)
  with pytest.raises(ValueError, match="per-layer relative position tables"):
    t5x._from_param_tree({"target": tree}, "t5x scanned", {})
