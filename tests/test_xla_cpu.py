"""The XLA-CPU path (`t5jax.xla_cpu`) against the standard path: the same function.

Tests elsewhere run on whatever path `T5JAX_CPU_KERNELS` picks (the CPU path on
this machine); the HF parity and decoding tests run on both (`both_paths`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from t5jax import losses, ops, optim, xla_cpu
from t5jax import train_step as ts
from t5jax.benchmark import synthetic_batch
from t5jax.config import T5Config, get_config
from t5jax.layers import relative_position_bucket
from t5jax.rng import counter_bits, index_bits, element_index as _element_index
from t5jax.model import T5, init_params

SMALL = dict(vocab_size=96, d_model=32, num_heads=4, d_kv=8, d_ff=48, num_layers=2,
             dropout_rate=0.0)
CONFIGS = {
    "v1.0": T5Config(**SMALL, feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": T5Config(**SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                     num_decoder_layers=3),
}


def _batch(config, batch=4, inputs=12, targets=7):
  return {k: jnp.asarray(v) for k, v in synthetic_batch(batch, inputs, targets,
                                                        config.vocab_size).items()}


def _loss(config, batch):
  def loss(params):
    logits = T5(config).apply({"params": params}, batch["encoder_input_tokens"],
                              batch["decoder_input_tokens"])
    objective, stats = losses.loss_sums(logits, batch, losses.LossConfig())
    return objective / stats["num_tokens"]
  return loss


def _on_both_paths(fn):
  out = {}
  for name, on in (("cpu_kernels", True), ("standard", False)):
    with xla_cpu.forced(on):
      out[name] = jax.device_get(fn())
  return out["cpu_kernels"], out["standard"]


def _assert_trees_close(a, b, rtol, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                               rtol=rtol, atol=atol)


def test_switch_reads_the_environment(monkeypatch):
  monkeypatch.setenv(xla_cpu.ENV, "off")
  assert not xla_cpu.enabled()
  monkeypatch.setenv(xla_cpu.ENV, "on")
  assert xla_cpu.enabled()
  monkeypatch.setenv(xla_cpu.ENV, "auto")
  assert xla_cpu.enabled() == (jax.default_backend() == "cpu")
  with xla_cpu.forced(False):
    assert not xla_cpu.enabled()
  monkeypatch.setenv(xla_cpu.ENV, "fast")
  with pytest.raises(ValueError, match="T5JAX_CPU_KERNELS='fast': expected one of auto, on, off"):
    xla_cpu.enabled()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="auto is the CPU path on CPU only")
def test_auto_runs_the_bfloat16_kernels_only_where_the_cpu_multiplies_bfloat16(monkeypatch):
  """auto: the bfloat16 einsum kernel (a custom VJP) and [out, in] decoding weights where
  the CPU has AMX-BF16 or AVX512-BF16; elsewhere the standard dot, the other CPU kernels
  still on. `on` runs them on any CPU."""
  config = get_config("tiny", dtype="bfloat16")

  def kernel_in_grad():
    grad = jax.grad(lambda a, b: jnp.sum(ops.einsum("mk,kn->mn", a, b, jnp.bfloat16,
                                                    jnp.float32)))
    return "custom_vjp" in str(jax.make_jaxpr(grad)(jnp.ones((4, 8)), jnp.ones((8, 16))))

  monkeypatch.setenv(xla_cpu.ENV, "auto")
  for flags, expected in ((frozenset({"avx2", "fma"}), False),
                          (frozenset({"avx2", "avx512_bf16"}), True),
                          (frozenset({"amx_bf16", "amx_tile"}), True)):
    monkeypatch.setattr(xla_cpu, "cpu_flags", lambda f=flags: f)
    assert xla_cpu.enabled() and xla_cpu.bf16_kernels() == expected, flags
    assert kernel_in_grad() == expected
    assert ops.decode_layout(config.dtype, config.scan_layers) == expected
    assert ("bfloat16 kernels on" if expected else "bfloat16 kernels off") in xla_cpu.describe()
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx2"}))
  monkeypatch.setenv(xla_cpu.ENV, "on")
  assert xla_cpu.bf16_kernels() and kernel_in_grad()
  monkeypatch.setenv(xla_cpu.ENV, "off")
  assert not xla_cpu.bf16_kernels() and "standard path" in xla_cpu.describe()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_gradients_and_adafactor_steps_agree(name):
  """float32: the loss, every gradient and three Adafactor steps (fused on the CPU path,
  optax's on the standard one) agree to float32 rounding."""
  config = CONFIGS[name]
  params = init_params(config, jax.random.PRNGKey(0))
  batch = _batch(config)

  def run():
    value, grads = jax.jit(jax.value_and_grad(_loss(config, batch)))(params)
    tx = optim.make_optimizer(optim.OptimizerConfig(learning_rate=0.01, warmup_steps=1))
    step = jax.jit(ts.make_train_step(config, tx, losses.LossConfig()))
    state = ts.init_state(params, tx)
    for i in range(3):
      state, _ = step(state, batch, jax.random.PRNGKey(i))
    return value, grads, state.params, state.opt_state

  cpu, standard = _on_both_paths(run)
  np.testing.assert_allclose(cpu[0], standard[0], rtol=1e-6)
  _assert_trees_close(cpu[1], standard[1], rtol=1e-4, atol=1e-6)
  _assert_trees_close(cpu[2], standard[2], rtol=1e-5, atol=1e-6)
  assert jax.tree.structure(cpu[3]) == jax.tree.structure(standard[3])
  _assert_trees_close(cpu[3], standard[3], rtol=1e-4, atol=1e-10)


def test_bfloat16_paths_agree_to_bfloat16_rounding():
  """bfloat16: the CPU path keeps float32 weight gradients unrounded and the standard
  path rounds them to bfloat16 (as T5X), so they agree to bfloat16 precision."""
  config = CONFIGS["v1.1"].replace(dtype="bfloat16")
  params = init_params(config, jax.random.PRNGKey(1))
  batch = _batch(config)
  cpu, standard = _on_both_paths(
      lambda: jax.jit(jax.value_and_grad(_loss(config, batch)))(params))
  np.testing.assert_allclose(cpu[0], standard[0], rtol=1e-2)
  for g_cpu, g_std in zip(jax.tree.leaves(cpu[1]), jax.tree.leaves(standard[1])):
    assert g_cpu.dtype == g_std.dtype == np.float32
    assert np.abs(g_cpu - g_std).max() <= 0.05 * np.abs(g_std).max() + 1e-8


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("on", [True, False], ids=["cpu_kernels", "standard"])
def test_save_dots_saves_matmul_outputs_and_full_saves_none(capsys, on, dtype):
  """`remat_policy` means what it says on both paths and in both dtypes: under
  save_dots the backward pass keeps every matmul output of the layers, under full none."""
  config = CONFIGS["v1.1"].replace(num_layers=1, num_decoder_layers=1, dtype=dtype)
  params = init_params(config, jax.random.PRNGKey(0))
  enc, dec = jnp.ones((2, 5), jnp.int32), jnp.ones((2, 3), jnp.int32)

  def matmul_residuals(policy):
    cfg = config.replace(remat_policy=policy)
    with xla_cpu.forced(on):
      print_saved_residuals(lambda p: T5(cfg).apply({"params": p}, enc, dec).sum(), params)
    lines = capsys.readouterr().out.splitlines()
    return [l for l in lines if "output of dot_general" in l or xla_cpu.DOT_NAME in l]

  assert matmul_residuals("full") == []
  saved = matmul_residuals("save_dots")
  # Per layer: q, k, v, scores, context and out of each attention, and the MLP's wi_0
  # and wi_1 (its wo output needs no saving): 8 in the encoder layer, 14 in the decoder
  # layer. The same on both paths and in both dtypes.
  assert len(saved) == 22, "\n".join(saved)


@pytest.mark.parametrize("on", [True, False], ids=["cpu_kernels", "standard"])
def test_forward_mode_equals_reverse_mode(on):
  """jax.jvp of the loss along a direction equals <grad, direction> (float32, both paths)."""
  config = CONFIGS["v1.0"]
  params = init_params(config, jax.random.PRNGKey(2))
  batch = _batch(config)
  direction = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=jnp.float32)).reshape(
      x.shape), params)
  with xla_cpu.forced(on):
    loss = _loss(config, batch)
    _, forward = jax.jit(lambda p, t: jax.jvp(loss, (p,), (t,)))(params, direction)
    grads = jax.jit(jax.grad(loss))(params)
  reverse = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
  np.testing.assert_allclose(forward, reverse, rtol=1e-4)


def test_forward_mode_in_bfloat16():
  """Standard path: works. CPU path: a clear error naming the switch."""
  config = CONFIGS["v1.0"].replace(dtype="bfloat16")
  params = init_params(config, jax.random.PRNGKey(2))
  loss = _loss(config, _batch(config))
  tangent = jax.tree.map(jnp.ones_like, params)
  jvp = jax.jit(lambda p, t: jax.jvp(loss, (p,), (t,)))
  with xla_cpu.forced(False):
    _, value = jvp(params, tangent)
  assert np.isfinite(value)
  with xla_cpu.forced(True), pytest.raises(TypeError, match="T5JAX_CPU_KERNELS=off"):
    jvp(params, tangent)


# ----------------------------------------------------------------------------
# Dropout bits (shared by both paths).

def test_index_bits_differ_at_i_and_i_plus_2_32():
  seed = jax.random.bits(jax.random.PRNGKey(0), (2,), jnp.uint32)
  low = jnp.arange(100_000, dtype=jnp.uint32) * jnp.uint32(40_503)  # spread over 2**32
  first = np.asarray(index_bits(seed, low, jnp.zeros_like(low)))
  second = np.asarray(index_bits(seed, low, jnp.ones_like(low)))  # the same low word + 2**32
  assert np.mean(first == second) < 1e-3
  assert len(np.unique(first)) == len(first)  # one block: a bijection of low
  np.testing.assert_array_equal(first, index_bits(seed, low))  # high = 0 is the 1-word form


def test_large_masks_index_elements_with_two_words():
  """Past `max_low` elements (2**32; lowered here) each element keeps its own index."""
  low, high = _element_index((6, 4, 8), max_low=32)
  pairs = set(zip(np.asarray(low).ravel().tolist(), np.asarray(high).ravel().tolist()))
  assert len(pairs) == 6 * 4 * 8
  bits = np.asarray(counter_bits(jax.random.PRNGKey(3), (6, 4, 8), max_low=32))
  assert len({row.tobytes() for row in bits}) == 6  # no row repeats another's mask
  # A 2**35-element mask (t5.1.0-11b attention dropout at batch 256) traces.
  shape = (256, 128, 512, 512)
  out = jax.eval_shape(lambda k: counter_bits(k, shape), jax.random.PRNGKey(0))
  assert out.shape == shape and out.dtype == jnp.uint32


# ----------------------------------------------------------------------------
# The CPU path's kernels, one by one, against plain autodiff.

def test_position_bias_gradient_equals_plain_einsum():
  pos = jnp.arange(40)
  one_hot = jax.nn.one_hot(relative_position_bucket(pos[None] - pos[:, None], True, 32, 128), 32)
  table = jax.random.normal(jax.random.PRNGKey(0), (4, 32))
  weights = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 40, 40))
  loss = lambda lookup: lambda t: jnp.sum(jnp.sin(lookup(t, one_hot)[None] * weights))
  got = jax.grad(loss(xla_cpu.position_bias))(table)
  want = jax.grad(loss(lambda t, o: jnp.einsum("hb,qkb->hqk", t, o)))(table)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4, 5])
def test_shared_bias_gradient_sums_the_batch(batch):
  scores = jax.random.normal(jax.random.PRNGKey(0), (batch, 2, 3, 3))
  bias = jax.random.normal(jax.random.PRNGKey(1), (1, 2, 3, 3))
  loss = lambda add: lambda s, b: jnp.sum(jnp.sin(add(s, b)) * jnp.arange(batch)[:, None, None, None])
  got = jax.grad(loss(xla_cpu.add_shared_bias), argnums=(0, 1))(scores, bias)
  want = jax.grad(loss(jnp.add), argnums=(0, 1))(scores, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  tangents = (jnp.cos(scores), jnp.cos(bias))
  got = jax.jvp(xla_cpu.add_shared_bias, (scores, bias), tangents)
  want = jax.jvp(jnp.add, (scores, bias), tangents)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-6)


@pytest.mark.parametrize("spec,a_shape,b_shape", [
    ("...k,kn->...n", (2, 5, 8), (8, 6)),              # projections, MLP
    ("bqhd,bkhd->bhqk", (2, 3, 4, 5), (2, 7, 4, 5)),   # attention scores
    ("bhqk,bkhd->bqhd", (2, 4, 3, 7), (2, 7, 4, 5)),   # attention output
    ("bld,vd->blv", (2, 3, 8), (11, 8)),               # tied logits
])
def test_low_precision_einsum_accumulates_in_float32_both_ways(spec, a_shape, b_shape):
  """The CPU path's bfloat16 einsum: its custom backward = float32 math on the
  bfloat16-rounded operands and cotangent; a float32 operand gets a float32 gradient,
  a bfloat16 one bfloat16."""
  einsum = xla_cpu.einsum
  rnd = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  a = jax.random.normal(keys[0], a_shape)
  b = jax.random.normal(keys[1], b_shape)
  out = jnp.einsum(spec, a, b)
  weights = rnd(jax.random.normal(keys[2], out.shape))  # the cotangent, exact in bf16
  loss = lambda f: lambda a, b: jnp.sum(f(a, b).astype(jnp.float32) * weights)
  got_out = jax.jit(lambda a, b: einsum(spec, a, b, jnp.bfloat16, jnp.float32))(a, b)
  np.testing.assert_allclose(got_out, jnp.einsum(spec, rnd(a), rnd(b)), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(lambda a, b: einsum(spec, a, b, jnp.bfloat16, jnp.float32)),
                         argnums=(0, 1)))(a, b)
  want = jax.grad(loss(lambda a, b: jnp.einsum(spec, a, b)), argnums=(0, 1))(rnd(a), rnd(b))
  for g, w in zip(got, want):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  g_a, g_b = jax.grad(loss(lambda a, b: einsum(spec, a, b, jnp.bfloat16)), argnums=(0, 1))(
      a.astype(jnp.bfloat16), b)
  assert (g_a.dtype, g_b.dtype) == (jnp.bfloat16, jnp.float32)


@pytest.mark.parametrize("rows", [1, 2, 7, 64, 131])
def test_tree_sum_leading_is_sum(rows):
  x = np.random.default_rng(rows).normal(size=(rows, 5, 3)).astype(np.float32)
  got = jax.jit(xla_cpu.tree_sum_leading)(x)
  assert got.shape == (1, 5, 3)
  np.testing.assert_allclose(got, x.sum(axis=0, keepdims=True), rtol=1e-5, atol=1e-5)


def test_first_argmax_is_argmax():
  x = jnp.array([[0.0, 3.0, 3.0, -1.0], [5.0, 1.0, 5.0, 5.0], [-2.0, -1.0, -3.0, -1.5]])
  np.testing.assert_array_equal(xla_cpu.first_argmax(x), jnp.argmax(x, axis=-1))
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 1000))
  np.testing.assert_array_equal(xla_cpu.first_argmax(x), jnp.argmax(x, axis=-1))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_attention_equals_explicit_on_packed_padded_rows(name):
  """Attention dropout off: the standard path's `jax.nn.dot_product_attention` (bias and
  mask folded into one additive bias) against the explicit einsum-softmax-einsum of the
  CPU path, on packed rows with segment ids and padding: encoder self-attention,
  causal decoder self-attention and cross-attention. Logits and gradients agree."""
  config = CONFIGS[name]
  params = init_params(config, jax.random.PRNGKey(5))
  rng = np.random.default_rng(5)
  enc = rng.integers(2, config.vocab_size, (3, 16)).astype(np.int32)
  dec = rng.integers(2, config.vocab_size, (3, 9)).astype(np.int32)
  enc_seg = np.array([[1] * 6 + [2] * 7 + [0] * 3, [1] * 16, [1] * 4 + [0] * 12], np.int32)
  dec_seg = np.array([[1] * 4 + [2] * 5, [1] * 9, [1] * 3 + [0] * 6], np.int32)
  enc, dec = np.where(enc_seg > 0, enc, 0), np.where(dec_seg > 0, dec, 0)
  args = [jnp.asarray(x) for x in (enc, dec, enc_seg, dec_seg)]

  def loss(p):
    logits = T5(config).apply({"params": p}, *args)
    return jnp.sum(jnp.where(args[3][..., None] > 0, jax.nn.log_softmax(logits), 0.0)[..., 7]), logits

  cpu, standard = _on_both_paths(lambda: jax.jit(jax.value_and_grad(loss, has_aux=True))(params))
  np.testing.assert_allclose(cpu[0][1], standard[0][1], rtol=1e-5, atol=1e-5)  # logits
  _assert_trees_close(cpu[1], standard[1], rtol=1e-4, atol=5e-6)


def test_fused_attention_is_the_softmax_formula():
  from t5jax.layers import NEG_INF, fused_attention
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q, k, v = (jax.random.normal(key, (2, s, 3, 4)) for key, s in zip(keys, (5, 6, 6)))
  bias = jax.random.normal(keys[3], (1, 3, 5, 6))
  mask = jnp.arange(6)[None, None, None, :] < jnp.array([6, 2])[:, None, None, None]
  scores = jnp.where(mask, jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias, NEG_INF)
  want = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, -1), v)
  np.testing.assert_allclose(fused_attention(q, k, v, mask, bias), want, rtol=1e-5, atol=1e-6)
  no_bias = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(
      jnp.where(mask, jnp.einsum("bqhd,bkhd->bhqk", q, k), NEG_INF), -1), v)
  np.testing.assert_allclose(fused_attention(q, k, v, mask, None), no_bias, rtol=1e-5, atol=1e-6)
