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
import re

from t5jax.errors import UnknownNameError, UsageError

FEED_FORWARD_KINDS = ("relu", "gated-gelu", "gated-silu")
REMAT_POLICIES = ("none", "full", "save_dots")
# T5Config.matmul_precision: 'highest' runs float32 matmuls in float32 on every backend;
# 'default' (alias 'tf32') lets the backend pick its fast path (TF32 on Ampere and later
# GPUs, bfloat16 passes on TPUs); 'high' is the middle setting (3-pass bf16 on TPU).
MATMUL_PRECISIONS = ("highest", "high", "default", "tf32")
# Name of the scanned layer stack (a param path key) and of its stacked axis
# (a logical axis name); t5jax.optim finds stacked parameters by this key.
SCANNED_LAYERS = "layers"


# The fields that fix a model's parameter shapes and what they compute: two configs that
# differ in one of them cannot share parameters (the others: dtype, dropout, layout...).
ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "num_heads", "d_kv", "d_ff", "num_layers",
                       "decoder_layers", "feed_forward_proj", "tie_word_embeddings",
                       "relative_attention_num_buckets")
ADAPTER_METHODS = ("lora", "ia3", "prompt", "norm")
PROMPT_INITS = ("vocab", "text", "random")
# The kernels LoRA / IA3 can target, by their t5jax names; HF's short names are aliases.
ATTENTION_KERNELS = ("query", "key", "value", "out")
KERNEL_ALIASES = {"q": "query", "k": "key", "v": "value", "o": "out"}
# PEFT's defaults for T5 (peft.utils.constants): LoRA q, v; IA3 k, v, wo.
DEFAULT_TARGETS = {"lora": ("query", "value"), "ia3": ("key", "value", "wo")}


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class UnknownFieldError(UsageError, TypeError):
  """T5Config.replace with a field T5Config lacks; also a TypeError, as a bad keyword is."""


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
  """A parameter-efficient finetuning method (t5jax.peft); `T5Config.adapter`.

  method:
    'lora'   W x + (alpha / rank) * B A dropout(x) on each targeted kernel
             (A: kaiming-uniform as PEFT, B: zeros, so training starts at the base).
    'ia3'    learned vectors (init ones) scaling the outputs of targeted kernels,
             except `wo`, whose input (the MLP's inner activation) is scaled.
    'prompt' num_virtual_tokens learned embeddings prepended to every encoder input.
             num_transformer_submodules=2 (HF PEFT's default for T5) also keeps a
             decoder table of num_virtual_tokens rows, as PEFT does: PEFT (0.21)
             saves it but its T5 forward and generate never apply it (no gradient
             reaches it), so t5jax keeps it unused too and exports it unchanged.
    'norm'   no new parameters: only the RMSNorm scales train (T5 has no biases,
             so this is its analogue of BitFit).
  target_modules: LoRA / IA3 targets, regular expressions matched against kernel
  paths such as 'encoder/layers_0/attention/query', 'decoder/layers_3/
  encoder_decoder_attention/value' or 'decoder/layers_1/mlp/wo'; a pattern
  matches a path it fully matches or that ends in '/' + pattern, so 'query' is
  every query kernel. HF's short names q, k, v, o are accepted too. Empty: PEFT's
  T5 defaults (LoRA query, value; IA3 key, value, wo).
  """

  method: str = "lora"
  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  target_modules: tuple[str, ...] = ()
  num_virtual_tokens: int = 20
  prompt_init: str = "vocab"  # 'vocab': rows of sampled token embeddings; 'text'; 'random'
  prompt_init_text: str | None = None
  num_transformer_submodules: int = 1  # prompt: 2 adds PEFT's (unused) decoder table

  def __post_init__(self):
    if self.method not in ADAPTER_METHODS:
      close = difflib.get_close_matches(str(self.method), ADAPTER_METHODS, n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise UsageError(f"AdapterConfig.method={self.method!r}: expected one of "
                       f"{ADAPTER_METHODS}.{hint}")
    if isinstance(self.target_modules, str):
      object.__setattr__(self, "target_modules", (self.target_modules,))
    else:
      object.__setattr__(self, "target_modules", tuple(self.target_modules))
    if not _is_int(self.rank) or self.rank < 1:
      raise UsageError(f"AdapterConfig.rank={self.rank!r} must be an integer >= 1.")
    if not 0.0 <= self.dropout < 1.0:
      raise UsageError(f"AdapterConfig.dropout={self.dropout!r} must be in [0, 1).")
    if not _is_int(self.num_virtual_tokens) or self.num_virtual_tokens < 1:
      raise UsageError(f"AdapterConfig.num_virtual_tokens={self.num_virtual_tokens!r} must "
                       "be an integer >= 1.")
    if self.num_transformer_submodules not in (1, 2):
      raise UsageError(f"AdapterConfig.num_transformer_submodules="
                       f"{self.num_transformer_submodules!r}: 1 (encoder prompt) or 2 (and "
                       "PEFT's decoder table).")
    if self.prompt_init not in PROMPT_INITS:
      raise UsageError(f"AdapterConfig.prompt_init={self.prompt_init!r}: expected one of "
                       f"{PROMPT_INITS}.")
    if self.method == "prompt" and self.prompt_init == "text" and not self.prompt_init_text:
      raise UsageError("AdapterConfig.prompt_init='text' needs AdapterConfig.prompt_init_text, "
                       "e.g. 'Classify the sentiment of this review:'.")
    for pattern in self.target_modules:
      try:
        re.compile(pattern)
      except re.error as e:
        raise UsageError(f"AdapterConfig.target_modules: {pattern!r} is not a regular "
                         f"expression ({e}).") from None

  @property
  def scaling(self) -> float:
    """LoRA's alpha / rank (PEFT without rslora)."""
    return self.alpha / self.rank

  @property
  def targets(self) -> tuple[str, ...]:
    """target_modules with HF aliases expanded, or the method's PEFT default."""
    patterns = self.target_modules or DEFAULT_TARGETS.get(self.method, ())
    return tuple(KERNEL_ALIASES.get(p, p) for p in patterns)

  def matches(self, path: str) -> bool:
    """Whether kernel path `path` (e.g. 'encoder/layers_0/attention/query') is targeted."""
    if self.method not in DEFAULT_TARGETS:
      return False
    return any(re.fullmatch(p, path) or re.fullmatch(f".*/(?:{p})", path)
               for p in self.targets)


def kernel_paths(config: "T5Config") -> list[str]:
  """Every kernel path LoRA / IA3 can target in `config`'s model (per-layer names)."""
  mlp = ("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")
  out = []
  for stack, layers, blocks in (("encoder", config.num_layers, ("attention",)),
                                ("decoder", config.decoder_layers,
                                 ("self_attention", "encoder_decoder_attention"))):
    for i in range(layers):
      for block in blocks:
        out += [f"{stack}/layers_{i}/{block}/{k}" for k in ATTENTION_KERNELS]
      out += [f"{stack}/layers_{i}/mlp/{k}" for k in mlp]
  return out


def layer_targets(config: "T5Config", stack: str, layer: int | None, block: str) -> tuple:
  """The kernels of `block` ('attention', 'mlp', ...) in layer `layer` of `stack` that
  the adapter targets (() without a LoRA / IA3 adapter). layer=None: a scanned stack,
  whose layers must all agree (they share one layer body)."""
  adapter = config.adapter
  if adapter is None or adapter.method not in DEFAULT_TARGETS:
    return ()
  kernels = (("wi_0", "wi_1", "wo") if config.is_gated else ("wi", "wo")) \
      if block == "mlp" else ATTENTION_KERNELS
  count = config.num_layers if stack == "encoder" else config.decoder_layers
  pick = lambda i: tuple(k for k in kernels if adapter.matches(f"{stack}/layers_{i}/{block}/{k}"))
  if layer is not None:
    return pick(layer)
  chosen = {pick(i) for i in range(count)}
  if len(chosen) > 1:
    raise UsageError(
        f"AdapterConfig.target_modules={adapter.target_modules} targets different kernels in "
        f"different layers of {stack}/{block}, but scan_layers=True runs one shared layer "
        "body: target every layer alike, or set model_config.scan_layers = False.")
  return chosen.pop()


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
  # Precision of every matmul (see MATMUL_PRECISIONS). None: 'highest' for a float32
  # model, so float32 means float32 on GPUs too (XLA:GPU would otherwise run TF32), and
  # 'default' for bfloat16 / float16 models, whose operands are 16-bit anyway.
  matmul_precision: str | None = None
  # Rematerialisation of each layer in the backward pass (see REMAT_POLICIES).
  remat_policy: str = "none"
  # Run each stack's layers as one nn.scan over a layer body: parameters are
  # stacked along a leading "layers" axis (`encoder/layers/...` instead of
  # `encoder/layers_0/...`), so compile time no longer grows with depth. Every
  # preset but `tiny` scans (as T5X's T5.1.1 configs do); decoding and HF / PEFT
  # export unscan by themselves (t5jax.model.unscan_params).
  scan_layers: bool = False
  pad_token_id: int = 0
  eos_token_id: int = 1
  decoder_start_token_id: int = 0
  # Parameter-efficient finetuning (t5jax.peft); None: the plain model, unchanged.
  adapter: AdapterConfig | None = None

  def __post_init__(self):
    if isinstance(self.adapter, dict):  # read back from JSON (model_config.json, meta)
      object.__setattr__(self, "adapter", AdapterConfig(**self.adapter))
    if self.adapter is not None and not isinstance(self.adapter, AdapterConfig):
      raise UsageError(f"T5Config.adapter={self.adapter!r}: expected an AdapterConfig or None.")
    if self.feed_forward_proj not in FEED_FORWARD_KINDS:
      raise UsageError(
          f"T5Config.feed_forward_proj={self.feed_forward_proj!r}: expected one "
          f"of {FEED_FORWARD_KINDS}.")
    if self.matmul_precision is not None and self.matmul_precision not in MATMUL_PRECISIONS:
      raise UsageError(
          f"T5Config.matmul_precision={self.matmul_precision!r}: expected None (from the "
          f"dtype) or one of {MATMUL_PRECISIONS}.")
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
    if self.adapter is not None and self.adapter.method in DEFAULT_TARGETS:
      paths = kernel_paths(self)
      for pattern in self.adapter.targets:
        one = dataclasses.replace(self.adapter, target_modules=(pattern,))
        if not any(one.matches(p) for p in paths):
          raise UsageError(
              f"AdapterConfig.target_modules: {pattern!r} matches no kernel of this model. "
              f"Kernel paths look like {paths[0]!r}, {paths[-1]!r}; use a kernel name "
              f"({', '.join(ATTENTION_KERNELS)}, wi / wi_0 / wi_1, wo) or a regular "
              "expression over such paths.")

  @property
  def decoder_layers(self) -> int:
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def dot_precision(self) -> str:
    """matmul_precision resolved: 'highest' / 'high' / 'default' ('tf32' is 'default')."""
    if self.matmul_precision is None:
      dtype = getattr(self.dtype, "name", None) or getattr(self.dtype, "__name__", self.dtype)
      return "highest" if str(dtype) == "float32" else "default"
    return "default" if self.matmul_precision == "tf32" else self.matmul_precision

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
                  tie_word_embeddings=True, dropout_rate=0.1, scan_layers=True)


def _v11(d_model, num_heads, d_kv, d_ff, layers):
  # T5.1.1 turned dropout off for pre-training; finetune configs set 0.1.
  return T5Config(d_model=d_model, num_heads=num_heads, d_kv=d_kv, d_ff=d_ff,
                  num_layers=layers, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, dropout_rate=0.0, scan_layers=True)


def _gated(vocab_size, d_model, num_heads, d_kv, d_ff, layers, decoder_layers=None,
           feed_forward_proj="gated-gelu", dropout_rate=0.0):
  """A T5.1.1-style (untied head, gated feed-forward) model of another family."""
  return T5Config(vocab_size=vocab_size, d_model=d_model, num_heads=num_heads, d_kv=d_kv,
                  d_ff=d_ff, num_layers=layers, num_decoder_layers=decoder_layers,
                  feed_forward_proj=feed_forward_proj, tie_word_embeddings=False,
                  dropout_rate=dropout_rate, scan_layers=True)


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
    # For tests and the CPU demo: T5.1.1-style, a few layers, narrow. Per-layer: on
    # XLA-CPU an unrolled step of a shallow model runs faster than a scanned one
    # (t5.1.1-small f32: 2.25 vs 2.54 s), and compile time is small at 2 layers.
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
