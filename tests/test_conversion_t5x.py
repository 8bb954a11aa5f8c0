"""Original T5 (Mesh TF), T5X and orbax checkpoints, checked against HF transformers.

The TF case uses HF's own TF-checkpoint importer as the reference. The T5X
cases write checkpoints in T5X's layout by hand (names and shapes per T5X's
network.py), from HF weights, and compare logits with the HF model.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # noqa: F401 (imported before transformers, as the other HF tests)
import transformers

from hf_reference import batch, hf_forward, hf_model, state_dict
from t5jax.conversion import FORMATS, detect_format, load_checkpoint, save_checkpoint
from t5jax.model import T5

TOL = 1e-4
CASES = {
    "t5.1.0-style": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5.1.1-style": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                         num_decoder_layers=3),
}


def _logits(config, params, enc, dec):
  return np.asarray(T5(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))


def mesh_tf_variables(model):
  """HF weights under Mesh TF names (the layout of the original T5 checkpoints)."""
  sd, cfg, out = state_dict(model), model.config, {}
  out["shared/embedding"] = sd["shared.weight"]
  subs = {"encoder": ["SelfAttention", "DenseReluDense"],
          "decoder": ["SelfAttention", "EncDecAttention", "DenseReluDense"]}
  for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    out[f"{stack}/block_000/layer_000/SelfAttention/relative_attention_bias"] = sd[
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T
    out[f"{stack}/final_layer_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    for i in range(layers):
      for j, sub in enumerate(subs[stack]):
        tf, pt = f"{stack}/block_{i:03d}/layer_{j:03d}", f"{stack}.block.{i}.layer.{j}"
        out[f"{tf}/layer_norm/scale"] = sd[f"{pt}.layer_norm.weight"]
        names = (["wi_0", "wi_1", "wo"] if cfg.is_gated_act else ["wi", "wo"]) \
            if sub == "DenseReluDense" else ["q", "k", "v", "o"]
        for w in names:
          suffix = f"{w}/kernel" if sub == "DenseReluDense" else w
          out[f"{tf}/{sub}/{suffix}"] = sd[f"{pt}.{sub}.{w}.weight"].T
  if not cfg.tie_word_embeddings:
    out["decoder/logits/kernel"] = sd["lm_head.weight"].T
  return out


def write_tf_checkpoint(variables, prefix):
  import tensorflow as tf
  with tf.Graph().as_default():
    tf_vars = [tf.compat.v1.Variable(v, name=k) for k, v in variables.items()]
    # An Adafactor slot and the step, as in real checkpoints: must be skipped.
    tf_vars.append(tf.compat.v1.Variable(np.zeros(3, np.float32),
                                         name="encoder/block_000/layer_000/SelfAttention/q_slot_vc"))
    tf_vars.append(tf.compat.v1.Variable(np.int64(100), name="global_step"))
    saver = tf.compat.v1.train.Saver(tf_vars)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      return saver.save(sess, prefix)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mesh_tf_checkpoint_matches_hf_importer(case, tmp_path):
  source = hf_model(seed=5, **CASES[case])
  prefix = write_tf_checkpoint(mesh_tf_variables(source), str(tmp_path / "model.ckpt"))
  # Reference: HF's own importer, into a fresh model of the same config.
  reference = transformers.T5ForConditionalGeneration(source.config).eval()
  transformers.models.t5.modeling_t5.load_tf_weights_in_t5(reference, source.config, prefix)
  if source.config.tie_word_embeddings:
    reference.tie_weights()
  assert detect_format(str(tmp_path)) == "tf"
  config, params = load_checkpoint(str(tmp_path))
  enc, dec = batch(seed=5)
  _, ref_logits = hf_forward(reference, enc, dec)
  _, src_logits = hf_forward(source, enc, dec)
  np.testing.assert_allclose(ref_logits, src_logits, atol=TOL)  # HF read everything
  assert np.abs(_logits(config, params, enc, dec) - ref_logits).max() <= TOL
  assert config.decoder_layers == source.config.num_decoder_layers


def t5x_tree(model):
  """HF weights in T5X's parameter tree (flat [embed, heads*kv] kernels)."""
  sd, cfg = state_dict(model), model.config
  tree = {"token_embedder": {"embedding": sd["shared.weight"]}}
  subs = {"encoder": [("SelfAttention", "attention", "pre_attention_layer_norm")],
          "decoder": [("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                      ("EncDecAttention", "encoder_decoder_attention",
                       "pre_cross_attention_layer_norm")]}
  for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    node = tree[stack] = {
        "relpos_bias": {"rel_embedding": sd[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T},
        f"{stack}_norm": {"scale": sd[f"{stack}.final_layer_norm.weight"]}}
    for i in range(layers):
      layer = node[f"layers_{i}"] = {}
      for j, (pt_name, name, norm) in enumerate(subs[stack]):
        pt = f"{stack}.block.{i}.layer.{j}"
        layer[norm] = {"scale": sd[f"{pt}.layer_norm.weight"]}
        layer[name] = {ours: {"kernel": sd[f"{pt}.{pt_name}.{w}.weight"].T}
                       for w, ours in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out"))}
      pt = f"{stack}.block.{i}.layer.{len(subs[stack])}"
      layer["pre_mlp_layer_norm"] = {"scale": sd[f"{pt}.layer_norm.weight"]}
      layer["mlp"] = {w: {"kernel": sd[f"{pt}.DenseReluDense.{w}.weight"].T}
                      for w in (["wi_0", "wi_1", "wo"] if cfg.is_gated_act else ["wi", "wo"])}
  if not cfg.tie_word_embeddings:
    tree["decoder"]["logits_dense"] = {"kernel": sd["lm_head.weight"].T}
  return tree


def test_t5x_msgpack_with_tensorstore_arrays(tmp_path):
  import tensorstore as ts
  from flax import serialization
  source = hf_model(seed=6, **CASES["t5.1.1-style"])
  tree = t5x_tree(source)
  # As T5X writes them: big (partitioned) arrays go to zarr folders named by
  # their '.'-joined path, relative to the checkpoint folder; the rest inline.
  ckpt = tmp_path / "checkpoint_1000"
  ckpt.mkdir()

  def to_state(node, path):
    if isinstance(node, dict):
      return {k: to_state(v, path + (k,)) for k, v in node.items()}
    if node.size < 256:
      return node
    name = ".".join(("target",) + path)
    spec = {"driver": "zarr", "dtype": "float32",
            "kvstore": {"driver": "file", "path": name},
            "metadata": {"shape": list(node.shape), "chunks": list(node.shape),
                         "compressor": {"id": "gzip"}}}
    store = ts.open({**spec, "kvstore": {"driver": "file", "path": str(ckpt / name)}},
                    create=True, open=True).result()
    store.write(node).result()
    return spec

  state = {"target": to_state(tree, ()), "state": {"step": np.int64(1000)}}
  (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(state))
  assert detect_format(str(ckpt)) == "t5x"
  config, params = load_checkpoint(str(ckpt))
  enc, dec = batch(seed=6)
  assert np.abs(_logits(config, params, enc, dec) - hf_forward(source, enc, dec)[1]).max() <= TOL


def test_orbax_t5x_tree(tmp_path):
  import orbax.checkpoint as ocp
  source = hf_model(seed=7, **CASES["t5.1.0-style"])
  ocp.PyTreeCheckpointer().save(str(tmp_path / "ckpt"), {"params": t5x_tree(source)})
  config, params = load_checkpoint(str(tmp_path / "ckpt"))
  assert config.tie_word_embeddings and not config.is_gated
  enc, dec = batch(seed=7)
  assert np.abs(_logits(config, params, enc, dec) - hf_forward(source, enc, dec)[1]).max() <= TOL


def test_t5jax_format_round_trip(tmp_path):
  config, params = load_checkpoint_from_hf(tmp_path)
  save_checkpoint(str(tmp_path / "t5jax"), config, params, format="t5jax")
  config2, params2 = load_checkpoint(str(tmp_path / "t5jax"))
  assert config2 == config
  for a, b in zip(sorted(_flat(params).items()), sorted(_flat(params2).items())):
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


def load_checkpoint_from_hf(tmp_path):
  hf_model(seed=8, **CASES["t5.1.1-style"]).save_pretrained(str(tmp_path / "hf"))
  return load_checkpoint(str(tmp_path / "hf"))


def _flat(params):
  from t5jax.trees import flatten
  return flatten(params)


def test_unknown_format_lists_supported(tmp_path):
  (tmp_path / "weights.bin").write_bytes(b"junk")
  with pytest.raises(ValueError, match="Supported") as err:
    load_checkpoint(str(tmp_path))
  assert all(name in str(err.value) for name in FORMATS)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_checkpoint(str(tmp_path / "nope"))
