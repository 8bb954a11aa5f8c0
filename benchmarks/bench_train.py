"""Training throughput: t5jax's train step vs HF transformers T5 (PyTorch and Flax), one run.

    .venv/bin/python benchmarks/bench_train.py                # CPU: t5.1.0/t5.1.1-small, 4 x 256/64,
                                                              # float32 and bfloat16
    .venv/bin/python benchmarks/bench_train.py --full         # + base presets
    .venv/bin/python benchmarks/bench_train.py --gpu          # t5.1.1-base, 128 x 512/114, bf16
        [--presets a,b] [--batch 4] [--input_len 256] [--target_len 64] [--dtype float32,bfloat16]
        [--steps 5] [--repeats 3] [--no_hf] [--no_hf_flax] [--results PATH | --no_write]
    .venv/bin/python benchmarks/bench_train.py --peft lora,ia3,prompt  # t5jax only: each
        # parameter-efficient method against full finetuning, same model and shape

Same shape, same batch and the same random weights on every side (t5jax
params exported with save_hf), same optimizer family: Adafactor with T5's
settings (factored second moments, decay 0.8, update clipping 1.0, parameter
scale, no momentum, lr 0.01). tokens = batch * (input_len + target_len) per
step. MFU uses the encoder-decoder FLOP count of t5jax/flops.py over a peak
measured in this run in the row's dtype (a float32 or a bfloat16 matmul with
float32 accumulation; bf16 on GPU), so within a dtype the MFU column compares
the peers on one scale. Compilation is excluded. Each peer is set up and warmed
up on its own, then the timed blocks alternate between the peers (t5jax, HF
PyTorch, HF Flax, t5jax, ...), so the machine's drifting speed touches each
alike. On CPU the memory column is the process's peak RSS above the RSS where
the row's setup began (the peers stay alive side by side).

bfloat16 means float32 parameters and optimizer state with bfloat16 matmul
inputs and float32 accumulation on every side: t5jax's `dtype='bfloat16'`,
HF PyTorch under torch.autocast(bfloat16), HF Flax with dtype=bfloat16. On
CPUs with AMX / AVX512-BF16 (this project's Xeon VM) such matmuls run ~4x the
float32 peak.

The HF peers are optional: rows are skipped, with the reason printed, when
torch / transformers are missing or the peer fails (HF's Flax T5 in
transformers 4.57 calls jnp.clip(a_max=...), removed in JAX 0.10: a shim for
this process only is installed before it runs).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import functools
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from t5jax import flops  # noqa: E402
from t5jax.benchmark import TrainStepRunner, format_count, synthetic_batch  # noqa: E402
from t5jax.config import get_config  # noqa: E402
from t5jax.model import count_params, init_params  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LR = 0.01  # T5X pretraining: 1/sqrt(max(step, 10k)) is 0.01 for the first 10k steps


# ----------------------------------------------------------------------------- peak FLOP/s

def _best_time(fn, repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def measure_peaks(on_gpu: bool, n: int, dtype: str = "float32", repeats: int = 5) -> dict:
  """Square-matmul FLOP/s in the run's dtype: JAX (the MFU denominator), plus torch (and
  numpy in float32) for reference on CPU. A bfloat16 peak on CPU uses AMX/AVX512-BF16
  where the CPU has them (it is ~4x the float32 peak on this project's Xeon VM)."""
  x = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((n, n)),
                                 jnp.dtype(dtype)))
  # float32 accumulation, as the model's matmuls (a bfloat16 result is a slow path on CPU)
  matmul = jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32))
  peaks = {"jax": 2 * n ** 3 / _best_time(lambda: matmul(x, x).block_until_ready(), repeats)}
  if not on_gpu:
    a = np.array(x, np.float32)
    if dtype == "float32":
      peaks["numpy"] = 2 * n ** 3 / _best_time(lambda: a @ a, repeats)
    try:
      import torch
      torch.set_num_threads(os.cpu_count())
      t = torch.from_numpy(a).to(getattr(torch, dtype))
      peaks["torch"] = 2 * n ** 3 / _best_time(lambda: t @ t, repeats)
    except ImportError:
      pass
  return peaks


# ----------------------------------------------------------------------------- memory

def _reset_peak_rss() -> bool:
  """Resets the kernel's high-water RSS of this process (Linux >= 4.0)."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _proc_status_bytes(field: str) -> int | None:
  """A memory field of /proc/self/status ("VmRSS", "VmHWM") in bytes; None off Linux."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _current_rss_bytes() -> int | None:
  return _proc_status_bytes("VmRSS")


def _peak_rss_bytes() -> int:
  """VmHWM (reset per row where the kernel allows) else getrusage's process max RSS."""
  peak = _proc_status_bytes("VmHWM")
  return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
  """Peak memory of one row: device bytes on accelerators, process peak RSS on CPU."""

  def __init__(self, on_gpu: bool, torch_cuda: bool = False):
    self.on_gpu, self.torch_cuda = on_gpu, torch_cuda

  def __enter__(self):
    self.rss_start = _current_rss_bytes()
    self.rss_reset = _reset_peak_rss()
    if self.torch_cuda:
      import torch
      torch.cuda.reset_peak_memory_stats()
      self.torch_start = torch.cuda.memory_allocated()
    return self

  def __exit__(self, *exc):
    if self.torch_cuda:
      import torch
      # other HF variants' models stay alive beside this one: what this row added
      self.bytes = torch.cuda.max_memory_allocated() - self.torch_start
      self.label = "torch peak allocated above the row's start"
    elif self.on_gpu:
      # XLA keeps a high-water mark since process start (no reset): rows run
      # largest-first would mask later ones, so each row reports the maximum so far.
      stats = jax.devices()[0].memory_stats() or {}
      self.bytes, self.label = stats.get("peak_bytes_in_use"), "device peak_bytes_in_use"
    elif self.rss_reset and self.rss_start is not None:
      # the peers' runners stay alive side by side, so each CPU row reports what
      # its own setup and first steps added to the process (its state, activations)
      self.bytes = _peak_rss_bytes() - self.rss_start
      self.label = "process peak RSS above the row's starting RSS"
    else:
      self.bytes, self.label = _peak_rss_bytes(), "process max RSS (getrusage, cumulative)"
    return False


# ----------------------------------------------------------------------------- t5jax

class Runner:
  """One peer, compiled and warmed up: `block()` times args.steps more steps (seconds
  per step); `loss()` is the last step's loss."""

  def __init__(self, block, loss, compile_s=None, estimate=None):
    self.block, self.loss, self.compile_s = block, loss, compile_s
    self.estimate = estimate  # XLA's planned peak bytes of the step (t5jax only)


def t5jax_runner(config, args, optimizer=None) -> Runner:
  extra = {} if optimizer is None else {"optimizer": optimizer}
  runner = TrainStepRunner(config, args.batch, args.input_len, args.target_len,
                           warmup_steps=args.warmup, compiler_options=args.compiler_options,
                           **extra)
  return Runner(lambda: runner.block(args.steps), lambda: runner.loss, runner.warmup_time,
                xla_peak_bytes(runner))


def xla_peak_bytes(runner: TrainStepRunner) -> int | None:
  """XLA's own plan for the step being timed (memory_analysis of its executable, as
  benchmarks/memory_estimate.py reads it): arguments + outputs - donated + temporaries;
  set beside the measured peak. None where the backend reports no analysis."""
  from t5jax import partitioning
  try:
    with partitioning.activate(runner.compiled.mesh, runner.compiled.rule_set):
      m = runner.compiled.train.lower(runner.state, runner.batch, runner.rng).compile() \
          .memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)
  except Exception:  # noqa: BLE001 (an estimate is optional)
    return None


# ----------------------------------------------------------------------------- HF PyTorch

def _torch_cuda(args) -> bool:
  if not args.on_gpu:
    return False
  import torch
  return torch.cuda.is_available()


# --hf_variants: '+'-joined choices of attention, optimizer and torch.compile for the HF
# PyTorch peer; each variant is its own row.
HF_ATTENTION = ("eager", "sdpa")
HF_OPTIMIZERS = ("adafactor", "adamw")


def parse_hf_variant(text: str) -> dict:
  """'sdpa+adamw+compile' -> {attention, optimizer, compile}; defaults eager, adafactor, off."""
  variant = {"attention": "eager", "optimizer": "adafactor", "compile": False}
  for token in (t for t in text.split("+") if t):
    if token in HF_ATTENTION:
      variant["attention"] = token
    elif token in HF_OPTIMIZERS:
      variant["optimizer"] = token
    elif token == "compile":
      variant["compile"] = True
    else:
      raise SystemExit(f"--hf_variants: {token!r} in {text!r} is none of "
                       f"{', '.join(HF_ATTENTION + HF_OPTIMIZERS)}, compile.")
  return variant


def hf_peer_name(variant: dict) -> str:
  """'HF PyTorch' for the default (eager attention, Adafactor), else the choices named."""
  parts = ([variant["attention"]] if variant["attention"] != "eager" else []) + (
      ["AdamW"] if variant["optimizer"] == "adamw" else []) + (
      ["torch.compile"] if variant["compile"] else [])
  return "HF PyTorch" + (f" ({', '.join(parts)})" if parts else "")


def hf_torch_runner(hf_dir: str, config, args, dtype: str, variant: dict | None = None) -> Runner:
  import torch
  import transformers
  from transformers.optimization import Adafactor

  variant = variant or parse_hf_variant("")
  torch.set_num_threads(os.cpu_count())
  cuda = _torch_cuda(args)
  device = "cuda" if cuda else "cpu"
  # attn_implementation='sdpa' raises where this transformers' T5 has no SDPA path: the
  # row is then skipped with that reason.
  model = transformers.T5ForConditionalGeneration.from_pretrained(
      hf_dir, attn_implementation=variant["attention"]).to(device).train()
  if variant["optimizer"] == "adamw":  # fused CUDA kernel on a GPU, as users run it
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda or None)
  else:
    # T5's Adafactor: factored, decay -0.8, clip 1.0, eps (1e-30, 1e-3), no momentum,
    # parameter-scaled updates at a fixed lr 0.01 (as t5jax's rsqrt schedule early on).
    opt = Adafactor(model.parameters(), lr=LR, scale_parameter=True, relative_step=False,
                    warmup_init=False)
  forward = torch.compile(model) if variant["compile"] else model
  batch = {k: torch.as_tensor(v).to(device) for k, v in synthetic_batch(
      args.batch, args.input_len, args.target_len, config.vocab_size).items()}
  # Same compute dtype as t5jax: float32 params, bfloat16 matmuls under autocast.
  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def step():
    with autocast:
      out = forward(input_ids=batch["encoder_input_tokens"].long(),
                  attention_mask=(batch["encoder_input_tokens"] > 0).long(),
                  decoder_input_ids=batch["decoder_input_tokens"].long(),
                  labels=batch["decoder_target_tokens"].long())
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
      torch.cuda.synchronize()
    return out.loss

  last = {}
  start = time.perf_counter()
  for _ in range(max(args.warmup, 1)):  # torch.compile compiles here
    last["loss"] = step()
  compile_s = time.perf_counter() - start

  def block():
    start = time.perf_counter()
    for _ in range(args.steps):
      last["loss"] = step()
    return (time.perf_counter() - start) / args.steps
  return Runner(block, lambda: float(last["loss"].detach().float().cpu()), compile_s)


# ----------------------------------------------------------------------------- HF Flax

def install_jnp_clip_shim() -> None:
  """transformers 4.57's Flax T5 calls jnp.clip(x, a_max=...): JAX 0.10 only takes min/max."""
  original = jnp.clip
  if getattr(original, "_t5jax_shim", False):
    return

  def clip(arr=None, /, min=None, max=None, *, a_min=None, a_max=None, **kwargs):
    return original(arr, min if a_min is None else a_min, max if a_max is None else a_max,
                    **kwargs)
  clip._t5jax_shim = True
  jnp.clip = clip


def hf_flax_runner(hf_dir: str, config, args, dtype: str) -> Runner:
  import optax
  import transformers

  install_jnp_clip_shim()
  try:
    import torch  # noqa: F401  (from_pt needs it: then the weights are the same)
    model = transformers.FlaxT5ForConditionalGeneration.from_pretrained(
        hf_dir, from_pt=True, dtype=jnp.dtype(dtype))
  except ImportError:  # no torch: same shapes, HF's own random init
    hf_config = transformers.T5Config.from_pretrained(hf_dir)
    model = transformers.FlaxT5ForConditionalGeneration(hf_config, seed=0,
                                                        dtype=jnp.dtype(dtype))
  tx = optax.adafactor(learning_rate=LR, min_dim_size_to_factor=128, decay_rate=0.8,
                       multiply_by_parameter_scale=True, clipping_threshold=1.0, eps=1e-30)
  params = jax.device_put(model.params)
  opt_state = tx.init(params)
  batch = {k: jnp.asarray(v) for k, v in synthetic_batch(
      args.batch, args.input_len, args.target_len, config.vocab_size).items()}
  train = config.dropout_rate > 0

  def train_step(params, opt_state, batch, rng):
    def loss_fn(params):
      logits = model(batch["encoder_input_tokens"],
                     attention_mask=(batch["encoder_input_tokens"] > 0).astype(jnp.int32),
                     decoder_input_ids=batch["decoder_input_tokens"], params=params,
                     dropout_rng=rng, train=train).logits
      return optax.softmax_cross_entropy_with_integer_labels(
          logits.astype(jnp.float32), batch["decoder_target_tokens"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(train_step, donate_argnums=(0, 1))
  rng = jax.random.PRNGKey(0)
  live = {"params": params, "opt_state": opt_state}

  def steps(n):
    for _ in range(n):
      live["params"], live["opt_state"], live["loss"] = step(live["params"], live["opt_state"],
                                                             batch, rng)
    jax.block_until_ready((live["params"], live["loss"]))

  start = time.perf_counter()
  steps(max(args.warmup, 1))
  compile_s = time.perf_counter() - start

  def block():
    start = time.perf_counter()
    steps(args.steps)
    return (time.perf_counter() - start) / args.steps
  return Runner(block, lambda: float(live["loss"]), compile_s)


# ----------------------------------------------------------------------------- report

def machine_description(peaks: dict) -> str:
  device = jax.devices()[0]
  if device.platform == "cpu":
    model = platform.processor() or "unknown CPU"
    try:
      with open("/proc/cpuinfo") as f:
        model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
      pass
    what = f"{model}, {os.cpu_count()} cores (CPU)"
  else:
    what = f"{jax.device_count()} x {device.device_kind} ({device.platform})"
  versions = [f"jax {jax.__version__}"]
  for name in ("flax", "torch", "transformers"):
    try:
      versions.append(f"{name} {__import__(name).__version__}")
    except ImportError:
      versions.append(f"{name} missing")
  peak_text = "; ".join(f"{dtype}: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in p.items())
                        + " GFLOP/s" for dtype, p in peaks.items())
  try:  # other jobs on a shared machine slow every row and the peak alike
    with open("/proc/loadavg") as f:
      load = f"; load average at start {f.read().split()[0]}"
  except OSError:
    load = ""
  return f"{what}; {', '.join(versions)}; matmul peaks: {peak_text}{load}"


def _gib(n) -> str:
  return "-" if n is None else f"{n / 2 ** 30:.2f}"


def make_table(rows: list[dict], args) -> str:
  lines = ["| model | dtype | peer | step s (median) | step s (best) | tokens/s (median) | seq/s | "
           "TFLOP/s | MFU | t5jax / peer | peak mem GiB | XLA plan GiB | compile s |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['preset']} | {r['dtype']} | {r['peer']} | skipped: {r['skipped']} "
                   "| | | | | | | | | |")
      continue
    ratio = f"{r['ratio']:.2f}x" if r.get("ratio") else "-"
    compile_s = f"{r['compile_s']:.0f}" if r.get("compile_s") else "-"
    lines.append(
        f"| {r['preset']} | {r['dtype']} | {r['peer']} | {r['median']:.3f} | {r['best']:.3f} | "
        f"{r['tokens_per_s']:.0f} | {r['seq_per_s']:.2f} | {r['tflops']:.3f} | "
        f"{100 * r['mfu']:.1f}% | {ratio} | {_gib(r['memory'])} | {_gib(r.get('estimate'))} | "
        f"{compile_s} |")
  return "\n".join(lines)


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--gpu", action="store_true",
                      help="GPU defaults: t5.1.1-base, batch 128, 512/114, bfloat16")
  parser.add_argument("--full", action="store_true", help="also the base presets")
  parser.add_argument("--presets", default=None, help="comma-separated t5jax presets")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--input_len", type=int, default=None)
  parser.add_argument("--target_len", type=int, default=None)
  parser.add_argument("--dtype", default=None,
                      help="comma-separated activation dtypes (params stay float32)")
  parser.add_argument("--dropout", type=float, default=None,
                      help="override the preset's dropout on every side")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=3, help="timed blocks; median and best")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
  parser.add_argument("--peak_n", type=int, default=None, help="matmul size for the peak")
  parser.add_argument("--fast_compile", action="store_true",
                      help="t5jax at XLA backend optimisation level 0 (smoke tests only)")
  parser.add_argument("--no_hf", action="store_true", help="skip both HF peers")
  parser.add_argument("--no_hf_flax", action="store_true", help="skip the HF Flax peer")
  parser.add_argument("--hf_variants", default=None, metavar="V1,V2",
                      help="HF PyTorch rows, each '+'-joined from eager|sdpa, adafactor|adamw "
                           "and compile (default: 'adafactor'; with --gpu also 'sdpa+adamw' "
                           "and 'sdpa+adamw+compile', HF at its best)")
  parser.add_argument("--no_t5jax", action="store_true",
                      help="only the HF peers (e.g. each side in its own process on a GPU)")
  parser.add_argument("--results", default=os.path.join(HERE, "RESULTS.md"))
  parser.add_argument("--no_write", action="store_true", help="print only")
  parser.add_argument("--peft", default=None, metavar="METHODS",
                      help="comma-separated adapter methods (lora, ia3, prompt, norm) to time "
                           "against full finetuning, t5jax only (CPU default: t5.1.1-small)")
  args = parser.parse_args(argv)
  args.on_gpu = jax.devices()[0].platform != "cpu"
  args.compiler_options = {"xla_backend_optimization_level": 0} if args.fast_compile else None
  gpu = args.gpu or args.on_gpu
  defaults = ({"presets": "t5.1.1-base", "batch": 128, "input_len": 512, "target_len": 114,
               "dtype": "bfloat16", "peak_n": 8192,
               "hf_variants": "adafactor,sdpa+adamw,sdpa+adamw+compile"} if gpu else
              {"presets": "t5.1.0-small,t5.1.1-small" + (",t5.1.0-base,t5.1.1-base"
                                                         if args.full else ""),
               "batch": 4, "input_len": 256, "target_len": 64, "dtype": "float32,bfloat16",
               "peak_n": 2048, "hf_variants": "adafactor"})
  if gpu and args.full and args.presets is None:
    defaults["presets"] = "t5.1.1-small,t5.1.0-base,t5.1.1-base"
  for key, value in defaults.items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  return args


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  from t5jax import compilation
  compilation.enable_cache()  # a repeated run loads its executables (T5JAX_COMPILE_CACHE=0: off)
  if args.peft:
    return _run_peft(args, argv)
  return _run(args, argv)


# ----------------------------------------------------------------------------- --peft

class PeftRunner:
  """t5jax's training step with an adapter (t5jax.peft): the frozen base is the step's
  4th argument and only the adapter has gradients and optimizer state, as in
  `trainer.train`. Compiled and warmed up on creation, like TrainStepRunner."""

  def __init__(self, config, args, optimizer):
    from t5jax import losses, optim, partitioning, peft, train_step as ts
    from t5jax.benchmark import synthetic_batch
    from t5jax.trainer import _adapter_start, create_state
    self.steps = args.steps
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rule_set = partitioning.rules("1d")
    tx = optim.make_optimizer(optimizer)
    _, state_sh = ts.state_shardings(mesh, config, rule_set, tx)
    _, frozen_sh, _ = ts.frozen_shardings(mesh, config, rule_set)
    step_fn = ts.make_train_step(config, tx, losses.LossConfig(), None, 1)
    self.compiled = ts.jit_steps(mesh, rule_set, state_sh, step_fn,
                                 compiler_options=args.compiler_options,
                                 frozen_shardings=frozen_sh)
    base = jax.device_get(init_params(peft.base_config(config), jax.random.PRNGKey(0)))
    self.compiled.frozen, start = _adapter_start(config, base, 0, frozen_sh, None)
    del base
    self.state = create_state(config, tx, mesh, rule_set, state_sh, 0, start,
                              args.compiler_options)
    self.trainable = peft.count(start)
    self.batch = partitioning.global_batch(
        synthetic_batch(args.batch, args.input_len, args.target_len, config.vocab_size),
        mesh, rule_set)
    self.rng = jax.random.PRNGKey(0)
    start_time = time.perf_counter()
    self._steps(max(args.warmup, 1))
    jax.block_until_ready(self.metrics)
    self.compile_s = time.perf_counter() - start_time

  def _steps(self, n):
    for _ in range(n):
      self.state, self.metrics = self.compiled.train_step(self.state, self.batch, self.rng)

  def block(self) -> float:
    start = time.perf_counter()
    self._steps(self.steps)
    jax.block_until_ready((self.state, self.metrics))
    return (time.perf_counter() - start) / self.steps


PEFT_METHODS = ("lora", "ia3", "prompt", "norm")


def _run_peft(args, argv) -> list[dict]:
  """Step time and peak memory of each --peft method against full finetuning (t5jax
  only; same preset, batch and shape; AdamW for every row, as the methods' gin files)."""
  from t5jax.config import AdapterConfig
  from t5jax.optim import OptimizerConfig
  methods = [m for m in args.peft.split(",") if m]
  unknown = sorted(set(methods) - set(PEFT_METHODS))
  if unknown:
    raise SystemExit(f"--peft {args.peft}: unknown method(s) {unknown}; one of {PEFT_METHODS}.")
  preset, dtype = args.presets.split(",")[0], args.dtype.split(",")[0]
  optimizer = OptimizerConfig(name="adamw", schedule="constant", learning_rate=1e-4)
  print(f"{preset}, batch {args.batch}, {args.input_len}/{args.target_len}, {dtype}; "
        f"full finetuning vs {', '.join(methods)} (AdamW).", flush=True)
  rows, runners = [], {}
  for method in ["full"] + methods:
    adapter = None if method == "full" else AdapterConfig(method)
    config = get_config(preset, dtype=dtype, adapter=adapter)
    mem = PeakMemory(args.on_gpu)
    with mem:
      if adapter is None:
        runner = t5jax_runner(config, args, optimizer=optimizer)
        trainable = count_params(config)
      else:
        runner = PeftRunner(config, args, optimizer)
        trainable = runner.trainable
    runners[method] = runner
    rows.append({"method": method, "trainable": trainable, "total": count_params(config),
                 "memory": mem.bytes, "memory_label": mem.label, "times": []})
  for _ in range(args.repeats):  # blocks interleaved, as the peers' are
    for row in rows:
      row["times"].append(runners[row["method"]].block())
  full = statistics.median(rows[0]["times"])
  lines = ["| method | trainable params | share | step s (median) | step s (best) | "
           "vs full | peak mem GiB |", "|---|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    median = statistics.median(row["times"])
    lines.append(f"| {row['method']} | {row['trainable']:,} | "
                 f"{100 * row['trainable'] / row['total']:.3f}% | {median:.3f} | "
                 f"{min(row['times']):.3f} | {median / full:.2f}x | {_gib(row['memory'])} |")
  table = "\n".join(lines)
  header = (f"Parameter-efficient finetuning, {preset} {dtype}, batch {args.batch}, "
            f"{args.input_len}/{args.target_len}: median of {args.repeats} interleaved blocks "
            f"of {args.steps} steps; peak mem = {rows[0]['memory_label']}.")
  print(f"\n{header}\n\n{table}\n")
  if not args.no_write:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    with open(args.results, "a") as f:
      f.write(f"\n## {stamp}: parameter-efficient finetuning\n\nCommand: "
              f"`{command.strip()}`\n\n{header}\n\n{table}\n")
    print(f"Appended to {args.results}")
  return rows


def _run(args, argv) -> list[dict]:
  dtypes = args.dtype.split(",")
  peaks = {dtype: measure_peaks(args.on_gpu, args.peak_n, dtype) for dtype in dtypes}
  machine = machine_description(peaks)
  print(f"Machine: {machine}", flush=True)

  rows = []
  for dtype, preset in itertools.product(dtypes, args.presets.split(",")):
    peak = peaks[dtype]["jax"]
    overrides = {"dtype": dtype}
    if args.dropout is not None:
      overrides["dropout_rate"] = args.dropout
    config = get_config(preset, **overrides)
    step_flops = flops.train_step_flops(config, args.batch, args.input_len, args.target_len)
    tokens = args.batch * (args.input_len + args.target_len)
    print(f"\n{preset}: {format_count(count_params(config))} params, batch {args.batch}, "
          f"{args.input_len}/{args.target_len}, {dtype}, dropout {config.dropout_rate}, "
          f"{step_flops / 1e9:.1f} GFLOP/step", flush=True)
    # Each peer is set up and warmed up on its own (memory is measured there), then
    # the timed blocks alternate t5jax, HF PyTorch, HF Flax, t5jax, ... so that this
    # VM's drifting speed touches every peer alike.
    results, runners = {}, {}
    if not args.no_t5jax:
      mem = PeakMemory(args.on_gpu)
      with mem:
        runners["t5jax"] = t5jax_runner(config, args)
      results["t5jax"] = {"memory": mem.bytes, "memory_label": mem.label,
                          "estimate": runners["t5jax"].estimate}
      print(f"  t5jax: init + compile + {args.warmup} warm-up steps in "
            f"{runners['t5jax'].compile_s:.1f} s", flush=True)
    peers = [] if args.no_hf else [
        (hf_peer_name(v), functools.partial(hf_torch_runner, variant=v))
        for v in map(parse_hf_variant, args.hf_variants.split(","))] + (
        [] if args.no_hf_flax else [("HF Flax", hf_flax_runner)])
    if peers:
      with tempfile.TemporaryDirectory() as hf_dir:
        from t5jax.conversion.hf import save_hf
        # The same random weights on every side (jitted: an eager init is slow on a GPU).
        params = jax.device_get(jax.jit(lambda k: init_params(config, k))(
            jax.random.PRNGKey(0)))
        save_hf(hf_dir, config, params)
        del params
        for name, fn in peers:
          try:
            mem = PeakMemory(args.on_gpu,
                             torch_cuda=name.startswith("HF PyTorch") and _torch_cuda(args))
            with mem:
              runners[name] = fn(hf_dir, config, args, dtype)
            results[name] = {"memory": mem.bytes, "memory_label": mem.label}
          except Exception as e:  # a peer that cannot run here is skipped, not fatal
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            print(f"  {name} skipped: {reason}", flush=True)
            if os.environ.get("BENCH_DEBUG"):
              traceback.print_exc()
            results[name] = {"skipped": reason}
    for name in runners:
      results[name]["times"] = []
    for _ in range(args.repeats):
      for name, runner in runners.items():
        results[name]["times"].append(runner.block())
    for name, runner in runners.items():
      results[name].update(loss=runner.loss(), compile_s=runner.compile_s)
    del runners

    ours = statistics.median(results["t5jax"]["times"]) if "t5jax" in results else None
    for name, r in results.items():
      row = {"preset": preset, "dtype": dtype, "peer": name}
      if "skipped" in r:
        rows.append({**row, "skipped": r["skipped"]})
        continue
      median = statistics.median(r["times"])
      row.update(median=median, best=min(r["times"]), tokens_per_s=tokens / median,
                 seq_per_s=args.batch / median, tflops=step_flops / median / 1e12,
                 mfu=flops.mfu(step_flops, median, 1, peak), memory=r["memory"],
                 memory_label=r["memory_label"], compile_s=r.get("compile_s"),
                 estimate=r.get("estimate"),
                 loss=r["loss"], ratio=None if name == "t5jax" or ours is None else median / ours)
      rows.append(row)
      print(f"  {name}: {row['tokens_per_s']:.0f} tokens/s (median of {args.repeats} x "
            f"{args.steps} steps: {', '.join(f'{t:.3f}' for t in r['times'])} s/step), "
            f"MFU {100 * row['mfu']:.1f}%, loss {r['loss']:.3f}", flush=True)

  mem_label = next((r["memory_label"] for r in rows if r.get("memory_label")), "-")
  peak_text = ", ".join(f"{dtype} {p['jax'] / 1e9:.1f}" for dtype, p in peaks.items())
  header = (f"Training step, batch {args.batch}, {args.input_len}/{args.target_len}; "
            f"tokens = batch x (inputs + targets); MFU over the jax matmul peak measured in "
            f"the row's dtype ({peak_text} GFLOP/s); "
            f"median of {args.repeats} blocks of {args.steps} steps, the peers' blocks "
            f"interleaved; t5jax / peer = peer step "
            f"time / t5jax step time; peak mem = {mem_label}.")
  table = make_table(rows, args)
  print(f"\n{header}\n\n{table}\n")
  if not args.no_write:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:] if argv is None else argv)
    new = not os.path.exists(args.results)
    with open(args.results, "a") as f:
      if new:
        f.write("# t5jax benchmark results\n\nAppended by `benchmarks/bench_train.py`; "
                "newest last.\n")
      f.write(f"\n## {stamp}: training throughput\n\nMachine: {machine}.\n\n"
              f"Command: `{command.strip()}`\n\n{header}\n\n{table}\n")
    print(f"Appended to {args.results}")
  return rows


if __name__ == "__main__":
  from t5jax.hugepages import reexec_with_hugepage_malloc
  reexec_with_hugepage_malloc()  # both t5jax and the HF peers run with it
  main()
