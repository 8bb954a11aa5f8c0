"""The model configuration: one frozen dataclass plus the T5 presets.

Imports nothing but the standard library (and t5jax.errors) so that any module
(gin configs, checkpoint importers, benchmarks) can read a config without
building a model.
Numbers come from docs/t5_facts.md ("Presets"; sources: the T5 paper, T5X
gin files, HF configs); `tests/test_model.py` checks every preset's
parameter count.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers

from t5jax.errors import UnknownNameError, UsageError

FEED_FORWARD_KINDS = ("relu", "gated-gelu", "gated-silu")
REMAT_POLICIES = ("none", "full", "save_dots")
# Name of the scanned layer stack (a param path key) and of its stacked axis
# (a logical axis name); t5jax.optim finds stacked parameters by this key.
SCANNED_LAYERS = "layers"


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class UnknownFieldError(UsageError, TypeError):
  """T5Config.replace with a field T5Config lacks; also a TypeError, as a bad keyword is."""


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder (field names follow HF's T5Config)."""

  vocab_size: int = 32128
  d_model: int = 512
  num_heads: int = 8
  d_kv: int = 64  # per-head width; num_heads * d_kv need not equal d_model
  d_ff: int = 2048
  num_layers: int = 6  # encoder layers
  num_decoder_layers: int | None = None  # None: same as num_layers
  # "relu" (T5.1.0), "gated-gelu" (T5.1.1, mT5, ByT5, FLAN-T5), "gated-silu" (UL2)
  feed_forward_proj: str = "relu"
  # Tied (T5.1.0): logits = (h * d_model**-0.5) @ E^T. Untied (T5.1.1): own head.
  tie_word_embeddings: bool = True
  # Only read when tied. False is the transformers-5.x form of a T5.1.1
  # checkpoint saved without its lm_head (tied, no rescale).
  scale_tied_logits: bool = True
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  # Activation dtype of matmuls and the residual stream. Parameters are always
  # float32; norms, softmax and logits are computed in float32.
  dtype: str = "float32"
  # Rematerialisation of each layer in the backward pass (see REMAT_POLICIES).
  remat_policy: str = "none"
  # Run each stack's layers as one nn.scan over a layer body: parameters are
  # stacked along a leading "layers" axis (`encoder/layers/...` instead of
  # `encoder/layers_0/...`), so compile time no longer grows with depth.
  # Incremental decoding needs the per-layer form: t5jax.model.unscan_params.
  scan_layers: bool = False
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0

  def __post_init__(self):
    if self.feed_forward_proj not in FEED_FORWARD_KINDS:
      raise UsageError(
          f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected one "
          f"of {FEED_FORWARD_KINDS}.")
    if self.remat_policy not in REMAT_POLICIES:
      raise UsageError(
          f"T5Config.remat_policy={self.remat_policy!r}: expected one of "
          f"{REMAT_POLICIES}.")
    for name in ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff",
                 "num_layers", "relative_attention_num_buckets"):
      value = getattr(self, name)
      if not _is_int(value) or value < 1:
        raise UsageError(f"T5Config.{name}={value!r} must be an integer >= 1.")
    if self.num_decoder_layers is not None and (not _is_int(self.num_decoder_layers)
                                                or self.num_decoder_layers < 1):
      raise UsageError(
          f"T5Config.num_decoder_layers={self.num_decoder_layers} must be >= 1 "
          "(or None for the same as num_layers).")

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  def replace(self, **overrides) -> "T5Config":
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
    if unknown:
      raise UnknownFieldError(f"T5Config has no field(s) {unknown}; fields: "
                              f"{[f.name for f in dataclasses.fields(self)]}")
    return dataclasses.replace(self, **overrides)


def _v10(d_model, num_heads, d_kv, d_ff, layers):
  return T5Config(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                  num_layers=layers, feed_forward_proj="relu",
                  tie_word_embeddings=True, dropout_rate=0.1)


def _v11(d_model, num_heads, d_kv, d_ff, layers):
  # T5.1.1 turned dropout off for pre-training; finetune configs set 0.1.
  return T5Config(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                  num_layers=layers, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, dropout_rate=0.0)


def _gated(vocab_size, d_model, num_heads, d_kv, d_ff, layers, decoder_layers=None,
           feed_forward_proj="gated-gelu", dropout_rate=0.0):
  """A T5.1.1-style (untied head, gated feed-forward) model of another family."""
  return T5Config(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads, d_kv=d_kv,
                  d_ff=d_ff, num_layers=layers, num_decoder_layers=decoder_layers,
                  feed_forward_proj=feed_forward_proj, tie_word_embeddings=False,
                  dropout_rate=dropout_rate)


# mT5: T5.1.1 dimensions, SentencePiece vocab of 250,000 + 100 sentinels padded to 250112.
_MT5_VOCAB = 250112
# ByT5: 256 bytes + 3 special ids (+ 125 unused), padded to 384.
_BYT5_VOCAB = 384


PRESETS: dict[str, T5Config] = {
    "t5.1.0-small": _v10(512, 8, 64, 2048, 6),
    "t5.1.0-base": _v10(768, 12, 64, 3072, 12),
    "t5.1.0-large": _v10(1024, 16, 64, 4096, 24),
    "t5.1.0-3b": _v10(1024, 32, 128, 16384, 24),
    "t5.1.0-11b": _v10(1024, 128, 128, 65536, 24),
    "t5.1.1-small": _v11(512, 6, 64, 1024, 8),
    "t5.1.1-base": _v11(768, 12, 64, 2048, 12),
    "t5.1.1-large": _v11(1024, 16, 64, 2816, 24),
    "t5.1.1-xl": _v11(2048, 32, 64, 5120, 24),
    "t5.1.1-xxl": _v11(4096, 64, 64, 10240, 24),
    # mT5 (Xue et al. 2021; T5X mt5/*.gin, HF MT5Config).
    "mt5-small": _gated(_MT5_VOCAB, 512, 6, 64, 1024, 8),
    "mt5-base": _gated(_MT5_VOCAB, 768, 12, 64, 2048, 12),
    "mt5-large": _gated(_MT5_VOCAB, 1024, 16, 64, 2816, 24),
    "mt5-xl": _gated(_MT5_VOCAB, 2048, 32, 64, 5120, 24),
    "mt5-xxl": _gated(_MT5_VOCAB, 4096, 64, 64, 10240, 24),
    # ByT5 (Xue et al. 2022, Table 1; T5X byt5/*.gin): encoder 3x the decoder's depth.
    "byt5-small": _gated(_BYT5_VOCAB, 1472, 6, 64, 3584, 12, 4),
    "byt5-base": _gated(_BYT5_VOCAB, 1536, 12, 64, 3968, 18, 6),
    "byt5-large": _gated(_BYT5_VOCAB, 1536, 16, 64, 3840, 36, 12),
    "byt5-xl": _gated(_BYT5_VOCAB, 2560, 32, 64, 6720, 36, 12),
    "byt5-xxl": _gated(_BYT5_VOCAB, 4672, 64, 64, 12352, 36, 12),
    # FLAN-T5 (Chung et al. 2022): T5.1.1 checkpoints instruction-finetuned; the HF
    # configs keep the T5.1.1 shapes and set dropout 0.1.
    "flan-t5-small": _gated(32128, 512, 6, 64, 1024, 8, dropout_rate=0.1),
    "flan-t5-base": _gated(32128, 768, 12, 64, 2048, 12, dropout_rate=0.1),
    "flan-t5-large": _gated(32128, 1024, 16, 64, 2816, 24, dropout_rate=0.1),
    "flan-t5-xl": _gated(32128, 2048, 32, 64, 5120, 24, dropout_rate=0.1),
    "flan-t5-xxl": _gated(32128, 4096, 64, 64, 10240, 24, dropout_rate=0.1),
    # UL2 20B (Tay et al. 2022; HF google/ul2 config.json): gated SiLU, d_kv 256.
    "ul2": _gated(32128, 4096, 16, 256, 16384, 32, feed_forward_proj="gated-silu",
                  dropout_rate=0.1),
    # For tests and the CPU demo: T5.1.1-style, a few layers, narrow.
    "tiny": T5Config(d_model=64, num_heads=4, d_kv=16, d_ff=128, num_layers=2,
                     feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                     dropout_rate=0.0),
}


def get_config(name: str, **overrides) -> T5Config:
  """Returns preset `name` (see PRESETS) with any field overridden."""
  if name not in PRESETS:
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"Unknown T5 preset {name!r}.{hint} Presets: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]
