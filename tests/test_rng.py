"""t5jax.rng: the counter-hash init key gives the initialisers' own distributions (tested
against closed-form laws and against threefry draws), independent streams per parameter,
and an init program of a few thousand HLO lines whatever the depth."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats as st

from t5jax import optim, partitioning, rng, train_step as steps
from t5jax.config import get_config
from t5jax.trees import flatten
from t5jax.model import T5, _dummy_inputs, init_params
from t5jax.trainer import init_state_fn
from t5jax import xla_cpu

# Wide enough for per-parameter statistics, small enough to init in a second.
CONFIG = get_config("tiny", d_model=256, d_ff=512, num_heads=4, d_kv=64, num_layers=2,
                    vocab_size=2048, scan_layers=True)
TRUNCATION = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


def _expected_std(path: tuple[str, ...]) -> float | None:
  """The std T5X's initialisers give each kernel of CONFIG (None: not a kernel)."""
  d, h, k, f = CONFIG.d_model, CONFIG.num_heads, CONFIG.d_kv, CONFIG.d_ff
  fan_in = {"query": d, "key": d, "value": d, "wi_0": d, "wi_1": d, "out": h * k, "wo": f,
            "logits_dense": d}.get(path[-1])
  if fan_in is None:
    return None
  return (fan_in ** -0.5) * (k ** -0.5 if path[-1] == "query" else 1.0)


def _init(key):
  return flatten(nn.meta.unbox(T5(CONFIG).init(key, *_dummy_inputs())["params"]))


@pytest.fixture(scope="module")
def draws():
  hashed = flatten(init_params(CONFIG, jax.random.PRNGKey(0)))
  threefry = _init(jax.random.PRNGKey(0))  # Flax's default key: the reference draw
  return hashed, threefry


def test_kernels_follow_the_truncated_normal_law(draws):
  """Each kernel (every layer's slice too) is T5X's truncated normal: KS test against the
  closed-form law, its std and its bounds (+-2 sigma of the untruncated normal)."""
  hashed, _ = draws
  p_values = []
  for path, x in hashed.items():
    std = _expected_std(path)
    if std is None:
      continue
    x = np.asarray(x)
    layers = x.reshape(x.shape[0], -1) if "layers" in path else x.reshape(1, -1)
    for values in layers:  # each scanned layer draws its own
      z = values / (std / TRUNCATION)
      p_values.append(st.kstest(z, st.truncnorm(-2, 2).cdf).pvalue)
      assert np.abs(z).max() <= 2.0 + 1e-6, path
      assert values.std() == pytest.approx(std, rel=0.05), path
  assert len(p_values) >= 30
  # Under the law p-values are uniform: none tiny, and not piled up low.
  assert min(p_values) > 1e-4 and np.mean(np.array(p_values) < 0.05) < 0.2, p_values


def test_same_distributions_as_threefry(draws):
  """Parameter by parameter, the hash key's draw and threefry's come from one law (two-sample
  KS), embeddings (normal, std 1) and position tables (uniform) included."""
  hashed, threefry = draws
  p_values = {path: st.ks_2samp(np.ravel(hashed[path]), np.ravel(threefry[path])).pvalue
              for path in hashed if np.std(threefry[path]) > 0 and np.size(hashed[path]) > 100}
  assert min(p_values.values()) > 1e-4, p_values
  assert np.mean([p < 0.05 for p in p_values.values()]) < 0.25, p_values
  for path in hashed:  # norms still start at one
    if path[-1] == "scale":
      np.testing.assert_array_equal(hashed[path], 1.0)


def test_parameters_and_layers_draw_independent_streams(draws):
  hashed, _ = draws
  chunks = [np.ravel(x)[:20_000] for p, x in hashed.items()
            if "layers" not in p and np.size(x) >= 20_000]
  chunks += [row for p, x in hashed.items() if "layers" in p and np.size(x[0]) >= 20_000
             for row in np.reshape(x, (x.shape[0], -1))[:, :20_000]]  # each layer's own
  corr = np.corrcoef(np.stack(chunks))
  off_diagonal = np.abs(corr[~np.eye(len(chunks), dtype=bool)])
  assert off_diagonal.max() < 0.04  # 20,000 draws: a pair's std is 0.007
  assert len({x.tobytes()[:4096] for x in chunks}) == len(chunks)


def test_init_key_keeps_the_seed_and_the_trees():
  """PRNGKey(s) and key(s) give one init; seeds differ; shapes equal threefry's init."""
  a = init_params(CONFIG, jax.random.PRNGKey(3))
  b = init_params(CONFIG, jax.random.key(3))
  c = init_params(CONFIG, jax.random.PRNGKey(4))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a["encoder"]["layers"]["mlp"]["wo"], c["encoder"]["layers"]["mlp"]["wo"])
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert shapes(a) == shapes(nn.meta.unbox(T5(CONFIG).init(jax.random.PRNGKey(0),
                                                             *_dummy_inputs())["params"]))
  key = rng.init_key(jax.random.PRNGKey(3))
  assert rng.IMPL_NAME in str(key.dtype)
  assert rng.init_key(jax.random.key(0, impl="rbg")).shape == ()  # other key shapes: as given


def test_bits_of_every_width_are_uniform():
  key = rng.init_key(jax.random.PRNGKey(0))
  for dtype, width in ((jnp.uint8, 8), (jnp.uint16, 16), (jnp.uint32, 32)):
    bits = np.asarray(jax.random.bits(key, (200_000,), dtype)).astype(np.float64)
    assert bits.dtype == np.float64 and abs(bits.mean() / 2 ** width - 0.5) < 0.01, width
  u = np.asarray(jax.random.uniform(key, (200_000,)))
  assert st.kstest(u, "uniform").pvalue > 1e-4


def test_truncated_normal_equals_jax_and_flax():
  """The central-branch sampler is jax.random.truncated_normal up to rounding, and
  dense_init is Flax's fan-in variance scaling, for the same keys."""
  from t5jax.layers import dense_init
  key = jax.random.PRNGKey(0)
  np.testing.assert_allclose(rng.truncated_normal(key, -2.0, 2.0, (500, 400)),
                             jax.random.truncated_normal(key, -2.0, 2.0, (500, 400)), atol=1e-6)
  wide = rng.truncated_normal(key, -4.0, 4.0, (1000,))  # tails: jax's own sampler
  np.testing.assert_array_equal(wide, jax.random.truncated_normal(key, -4.0, 4.0, (1000,)))
  for shape, fan_in, fan_out, scale in (((64, 4, 16), 0, (1, 2), 1 / 16),
                                        ((4, 16, 64), (0, 1), 2, 1.0), ((64, 128), 0, 1, 2.0)):
    ours = dense_init(fan_in, fan_out, scale)(key, shape)
    flax_init = nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                                 in_axis=fan_in, out_axis=fan_out)
    np.testing.assert_allclose(ours, flax_init(key, shape), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset", ["t5.1.1-base", "t5.1.0-base", "byt5-base"])
def test_init_program_stays_small(preset):
  """The fresh init of a scanned preset (params + Adafactor state, bf16, the standard path)
  compiles to under 5,000 optimized HLO lines; threefry made it 13,000+ (and 71,000+
  unrolled). Lowered and compiled from abstract shapes: nothing is allocated."""
  config = get_config(preset, dtype="bfloat16")
  assert config.scan_layers  # every real preset scans
  mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
  tx = optim.make_optimizer(optim.OptimizerConfig())
  with xla_cpu.forced(False):
    _, state_sh = steps.state_shardings(mesh, config, partitioning.rules("1d"), tx)
    compiled = init_state_fn(config, tx, mesh, state_sh).lower(
        jax.ShapeDtypeStruct((), jnp.uint32)).compile()
  assert len(compiled.as_text().splitlines()) < 5000
