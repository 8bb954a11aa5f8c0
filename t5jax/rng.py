"""Counter-hash random numbers: dropout's mask bits and the key that parameter init draws from.

    bits = counter_bits(key, shape)          # dropout: uint32 bits from any jax key
    params = T5(config).init(init_key(rng), ...)  # what t5jax.model.init_params does

Both hash each element's index with a 64-bit seed (two rounds of a 32-bit integer
hash), where threefry runs 20 cipher rounds. That matters twice:

- dropout masks: on XLA-CPU `jax.random.bits` for a T5-small step's masks took
  about a third of the step;
- parameter init: threefry is unrolled in the HLO once per parameter (and once more
  per key derivation), so an init program was mostly threefry (t5.1.1-base scanned:
  13.4k optimized HLO lines; with this key, under 5k), and compile time is the
  first thing a GPU user waits for.

`init_key` gives a jax key of a PRNG implementation built on the same hash
(`jax.extend.random.define_prng_impl`): jax.random's samplers (truncated normal,
normal, uniform) and Flax's key derivation (fold_in per parameter name, split per
scanned layer) run unchanged on top of it, so initialisers keep their
distributions exactly; only the source of bits changes. Everything is elementwise
in the index, so a sharded init computes only its own shard, like iota.

For random numbers in machine learning, not for cryptography.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
# Name of the init key's PRNG implementation (shows in key dtypes: key<t5jax_hash>).
IMPL_NAME = "t5jax_hash"


def mix32(x: Array) -> Array:
  """A bijective uint32 integer hash (Wellons' lowbias32: avalanche bias ~0.17%)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def index_bits(seed: Array, low: Array, high: Array | None = None) -> Array:
  """uint32 bits of the 64-bit element index high * 2**32 + low under a 2-word seed.

  For a fixed `high`, low -> bits is a bijection (each step is), so no two elements
  of a 2**32 block share a value; `high` shifts the second round by mix(high), which
  differs for every block (mix is a bijection with mix(0) = 0).
  """
  offset = seed[1] if high is None else seed[1] ^ mix32(high)
  return mix32(mix32(low ^ seed[0]) + offset)


def element_index(shape, max_low: int = 2**32) -> tuple[Array, Array | None]:
  """(low, high) uint32 words of each element's index, shaped like `shape`.

  Below `max_low` elements it is the row-major index (high None). Above, the
  shape splits into leading axes (`high`: their row-major index) and trailing
  axes of fewer than `max_low` elements (`low`), so (low, high) is unique per
  element without 64-bit integers.
  """
  shape = tuple(shape)
  size = int(np.prod(shape, dtype=np.int64))
  if size <= max_low:
    return jax.lax.iota(jnp.uint32, size).reshape(shape), None
  split, inner = len(shape), 1
  while split > 0 and inner * shape[split - 1] <= max_low:
    split -= 1
    inner *= shape[split]
  if split == len(shape) or int(np.prod(shape[:split], dtype=np.int64)) > 2**32:
    raise ValueError(f"cannot index random bits of shape {shape}: an axis of more "
                     f"than {max_low} elements, or more than 2**64 elements.")
  ones = (1,) * (len(shape) - split)
  low = jax.lax.iota(jnp.uint32, inner).reshape((1,) * split + tuple(shape[split:]))
  high = jax.lax.iota(jnp.uint32, int(np.prod(shape[:split]))).reshape(
      tuple(shape[:split]) + ones)
  return jnp.broadcast_to(low, shape), jnp.broadcast_to(high, shape)


def counter_bits(key: Array, shape, max_low: int = 2**32) -> Array:
  """Random uint32 bits: each element's index hashed with a 64-bit seed drawn from `key`.

  Only the seed goes through jax.random, so streams follow the key tree (fold_in /
  split per layer and step). Tensors of more than 2**32 elements index with two
  words (`element_index`), so masks never repeat (`max_low` is lowered only by tests).
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  low, high = element_index(tuple(shape), max_low)
  return index_bits(seed, low, high)


# ----------------------------------------------------------------------------
# The init key: a jax PRNG implementation on the counter hash. Keys are 2 uint32
# words, as threefry's, so a threefry key's data wraps as one of these unchanged.

_FOLD = np.uint32(0x9E3779B9)  # distinct constants keep fold_in, split and bits apart
_SPLIT = np.uint32(0x5BD1E995)
_SECOND = np.uint32(0x632BE5AB)


def _seed(seed: Array) -> Array:
  seed = jnp.asarray(seed)
  high = ((seed >> 32).astype(jnp.uint32) if seed.dtype.itemsize == 8
          else jnp.zeros((), jnp.uint32))
  return jnp.stack([high, seed.astype(jnp.uint32)])


def _fold_in(key: Array, data: Array) -> Array:
  first = mix32(key[0] ^ mix32(jnp.asarray(data).astype(jnp.uint32) ^ _FOLD))
  return jnp.stack([first, mix32(key[1] + first + _SECOND)])


def _split(key: Array, shape) -> Array:
  count = int(np.prod(shape, dtype=np.int64))
  keys = jax.vmap(lambda i: _fold_in(key, i ^ _SPLIT))(jax.lax.iota(jnp.uint32, count))
  return keys.reshape(tuple(shape) + (2,))


def _bits(key: Array, bit_width: int, shape) -> Array:
  low, high = element_index(tuple(shape))
  bits = index_bits(key, low, high)
  if bit_width == 32:
    return bits
  if bit_width in (8, 16):
    return bits.astype(jnp.dtype(f"uint{bit_width}"))
  second = index_bits(jnp.stack([key[1], key[0] ^ _SECOND]), low, high)
  return (bits.astype(jnp.uint64) << 32) | second.astype(jnp.uint64)


@functools.lru_cache(maxsize=None)
def hash_impl():
  """The counter-hash PRNG implementation (one object, so key types compare equal), or
  None on a jax without `jax.extend.random.define_prng_impl` (init then uses threefry)."""
  try:
    from jax.extend.random import define_prng_impl
  except ImportError:
    return None
  return define_prng_impl(key_shape=(2,), seed=_seed, split=_split, random_bits=_bits,
                          fold_in=_fold_in, name=IMPL_NAME, tag=IMPL_NAME)


def init_key(rng) -> Array:
  """`rng` (a jax.random.PRNGKey / key, or its 2 uint32 words) as a counter-hash key.

  The same words, so seeds keep their meaning (PRNGKey(s) and key(s) give the same
  init); jit-friendly (a traced rng works). Keys of another shape (rbg's 4 words)
  are returned unchanged.
  """
  impl = hash_impl()
  if impl is None:
    return rng
  data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
  if data.shape != (2,):
    return rng
  return jax.random.wrap_key_data(data.astype(jnp.uint32), impl=impl)


# ----------------------------------------------------------------------------
# The truncated normal of T5X's kernel init, in half the program.
#
# jax.random.truncated_normal maps uniforms through erf_inv, which XLA expands into two
# polynomial branches (|x| below and above ~0.9966) joined by a select per coefficient:
# about half of every kernel's init program. A normal truncated at |z| <= 2 only ever
# reaches the central branch (|x| <= erf(2 / sqrt 2) = 0.9545), so this evaluates that
# branch alone: the same coefficients in the same order as XLA's float32 ErfInv (Giles
# 2010), hence the same values as jax.random.truncated_normal up to rounding.

_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                   0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
CENTRAL_LIMIT = 2.9  # |bound| up to which only the central branch is reached (w < 5)


def truncated_normal(key, lower: float, upper: float, shape, dtype=jnp.float32) -> Array:
  """jax.random.truncated_normal(key, lower, upper, shape, dtype) for static bounds; bounds
  beyond +-2.9 (the tails' branch) go to jax's own."""
  if not -CENTRAL_LIMIT <= lower < upper <= CENTRAL_LIMIT:
    return jax.random.truncated_normal(key, lower, upper, shape, dtype)
  f32 = np.float32
  a, b = (f32(math.erf(v / math.sqrt(2))) for v in (lower, upper))
  u = jax.random.uniform(key, tuple(shape), jnp.float32, a, b)
  w = -jnp.log1p(-u * u) - f32(2.5)
  p = jnp.full_like(w, f32(_ERFINV_CENTRAL[0]))
  for c in _ERFINV_CENTRAL[1:]:
    p = f32(c) + p * w
  out = f32(math.sqrt(2)) * (p * u)
  low, high = np.nextafter(f32(lower), f32(np.inf)), np.nextafter(f32(upper), f32(-np.inf))
  return jnp.clip(out, low, high).astype(dtype)


__all__ = ["mix32", "index_bits", "element_index", "counter_bits", "init_key", "hash_impl",
           "truncated_normal"]
