"""Decoding throughput: t5jax cached greedy / beam-4 vs HF transformers' generate and
CTranslate2 (float32 and int8), the fastest CPU engine for T5.

    .venv/bin/python benchmarks/bench_decode.py [--preset t5.1.0-small] [--batch 4]
        [--input_len 256] [--new_tokens 64] [--repeats 5] [--dtype float32,bfloat16]
        [--no_hf] [--no_ct2]

Same random weights (t5jax params exported to HF; CTranslate2 converts that very HF
folder), same inputs, same machine, one run, all engines' calls interleaved (medians
of --repeats each). New tokens are counted as batch * new_tokens (EOS is suppressed
by banning EOS until the last token on every side: min_new_tokens for HF,
min_decoding_length for CTranslate2). Before timing, the float32 greedy tokens of
every engine are compared with t5jax's; a mismatch stops the benchmark.

CTranslate2 needs no tokenizer: `_ct2_convert` gives its converter numbered token
strings ("<pad>", "</s>", "<unk>", "t3", "t4", ...), and the inputs are passed as
those strings. Its rows are float32 and int8 (CTranslate2's weight quantization,
per output channel, with int8 x int8 matmuls), run with one thread per core.

bfloat16 rows: t5jax with `dtype='bfloat16'` (matmul weights cast to bf16 once,
`prepare_params`, float32 accumulation, norms / softmax / logits in float32) against
HF with the model converted by `.to(torch.bfloat16)`, the usual way to run
HF inference in bf16.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import numpy as np


def _time_side_by_side(fns, repeats):
  """Median seconds per call of each fn, the calls interleaved (a, b, a, b, ...) so that
  this VM's drifting speed affects both sides alike."""
  for fn in fns.values():
    fn()  # warm-up / compile
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _ct2_tokens(vocab_size):
  """Token strings for CTranslate2, one per id: T5's three specials, then "t<id>"."""
  return ["<pad>", "</s>", "<unk>"] + [f"t{i}" for i in range(3, vocab_size)]


def _ct2_convert(hf_dir, out_dir, quantization):
  """CTranslate2's own T5 converter on an HF folder that has no tokenizer."""
  import ctranslate2

  class NumberedTokens:  # the part of a tokenizer the T5 loader reads
    pad_token, eos_token, unk_token = "<pad>", "</s>", "<unk>"

    def __init__(self, vocab_size):
      self.tokens = _ct2_tokens(vocab_size)

    def get_vocab(self):
      return {t: i for i, t in enumerate(self.tokens)}

    def convert_ids_to_tokens(self, i):
      return self.tokens[i]

  class Converter(ctranslate2.converters.TransformersConverter):
    def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
      import transformers
      config = transformers.AutoConfig.from_pretrained(model_name_or_path)
      return NumberedTokens(config.vocab_size)

  Converter(hf_dir).convert(out_dir, quantization=quantization, force=True)
  return out_dir


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="t5.1.0-small")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--input_len", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32,bfloat16", help="comma-separated dtypes")
  parser.add_argument("--no_hf", action="store_true", help="skip the HF peer")
  parser.add_argument("--hf_attention", default="sdpa", choices=("sdpa", "eager"),
                      help="HF's attn_implementation (sdpa falls back to eager where T5 "
                           "has no SDPA path, transformers < 5)")
  parser.add_argument("--hf_cache", default="dynamic", choices=("dynamic", "static"),
                      help="HF generate's KV cache: its default, or preallocated")
  parser.add_argument("--no_ct2", action="store_true", help="skip the CTranslate2 peers")
  parser.add_argument("--no_int8", action="store_true",
                      help="skip t5jax's int8 rows (quantize='int8', timed with float32's)")
  args = parser.parse_args(argv)
  if not args.no_ct2:
    try:
      import ctranslate2  # noqa: F401
    except ImportError:
      print("ctranslate2 is not installed: its rows are skipped (pip install ctranslate2)")
      args.no_ct2 = True

  from t5jax import compilation
  from t5jax.config import get_config
  from t5jax.decoding import DecodeConfig, decode, prepare_params
  from t5jax.model import init_params
  compilation.enable_cache()  # a repeated run loads its executables (T5JAX_COMPILE_CACHE=0: off)

  base = get_config(args.preset, dropout_rate=0.0)
  # jitted: an eager init runs op by op, which is slow on a GPU
  params = jax.jit(lambda k: init_params(base, k))(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 32000, (args.batch, args.input_len)).astype(np.int32)
  n_tokens = args.batch * args.new_tokens

  def ours(config, method, beams, quantize=None):
    # EOS banned until the end, as HF's min_new_tokens: both sides make every token.
    cfg = DecodeConfig(method=method, num_beams=beams, max_decode_length=args.new_tokens,
                       min_decode_length=args.new_tokens, alpha=0.0)
    # once, as HF's model.to(dtype) below
    prepared = prepare_params(params, config, quantize)
    return lambda: jax.block_until_ready(decode(prepared, config, enc, cfg).tokens)

  hf_float32, ct2 = None, {}
  on_gpu = jax.devices()[0].platform == "gpu"
  if not args.no_hf or not args.no_ct2:
    import copy
    import torch
    import transformers
    from t5jax.conversion.hf import save_hf
    torch.set_num_threads(os.cpu_count())
    # On a GPU machine HF runs on the GPU too (when this torch has CUDA).
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
      save_hf(tmp, base, params)
      if not args.no_hf:
        try:  # SDPA where this transformers' T5 has it (5.x), else its eager attention
          hf_float32 = transformers.T5ForConditionalGeneration.from_pretrained(
              tmp, attn_implementation=args.hf_attention).eval().to(device)
        except ValueError as e:
          print(f"HF attn_implementation={args.hf_attention!r} unavailable here "
                f"({str(e).splitlines()[0][:100]}); HF runs its eager attention.", flush=True)
          hf_float32 = transformers.T5ForConditionalGeneration.from_pretrained(
              tmp).eval().to(device)
        print(f"HF generate: attention {hf_float32.config._attn_implementation}, "
              f"cache {args.hf_cache}.", flush=True)
      if not args.no_ct2:
        import ctranslate2
        ct2_device = "cuda" if on_gpu and ctranslate2.get_cuda_device_count() else "cpu"
        for quantization in ("float32", "int8"):
          model_dir = _ct2_convert(tmp, os.path.join(tmp, f"ct2_{quantization}"), quantization)
          ct2[quantization] = ctranslate2.Translator(
              model_dir, device=ct2_device, compute_type=quantization,
              intra_threads=0 if ct2_device == "cuda" else os.cpu_count())
    ids = torch.tensor(enc, dtype=torch.long, device=device)
  source = [[_ct2_tokens(base.vocab_size)[i] for i in row] for row in enc.tolist()]
  ct2_ids = {t: i for i, t in enumerate(_ct2_tokens(base.vocab_size))}

  def ct2_decode(translator, beams):
    out = translator.translate_batch(
        source, beam_size=beams, max_decoding_length=args.new_tokens,
        min_decoding_length=args.new_tokens, length_penalty=0.0, max_input_length=0)
    return np.array([[ct2_ids[t] for t in r.hypotheses[0]] for r in out])

  # 'static': HF's preallocated KV cache (what torch.compile'd generate needs); 'dynamic':
  # its default.
  hf_cache = {"cache_implementation": "static"} if args.hf_cache == "static" else {}

  def theirs(hf, beams):
    def run():
      with torch.no_grad():
        hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                    num_beams=beams, max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens, length_penalty=0.0, **hf_cache)
      if device == "cuda":
        torch.cuda.synchronize()
    return run

  # The engines agree before anything is timed: float32 greedy, EOS suppressed (only with
  # the float32 rows, which CTranslate2 and t5jax int8 ride along with).
  if "float32" in args.dtype.split(","):
    cfg = DecodeConfig(max_decode_length=args.new_tokens, min_decode_length=args.new_tokens)
    want = np.asarray(decode(prepare_params(params, base), base, enc, cfg).tokens[:, 0])
    agree = {}
    if hf_float32 is not None:
      with torch.no_grad():
        got = hf_float32.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  do_sample=False, num_beams=1, max_new_tokens=args.new_tokens,
                                  min_new_tokens=args.new_tokens).cpu().numpy()[:, 1:]
      agree["hf"] = got
    if "float32" in ct2:
      agree["ct2"] = ct2_decode(ct2["float32"], 1)
    for side, got in agree.items():
      assert np.array_equal(got, want), (
          f"{side} float32 greedy tokens differ from t5jax's: first rows\n{got[:2, :16]}\n"
          f"{want[:2, :16]}")
    if agree:
      print(f"float32 greedy tokens identical: t5jax, {', '.join(agree)} "
            f"({want.shape[0]} x {want.shape[1]} tokens)")
    if not args.no_int8:  # int8's quality: greedy tokens against float32's
      int8 = np.asarray(decode(params, base, enc, cfg, quantize="int8").tokens[:, 0])
      first = np.argmax(np.concatenate([int8 != want, np.ones_like(want[:, :1], bool)], 1), 1)
      print(f"t5jax int8 greedy tokens equal to float32's: {np.mean(int8 == want):.1%}; "
            f"identical until the first difference: {np.mean(first) / want.shape[1]:.1%} "
            "of each row on average")

  def ct2_fn(translator, beams):
    return lambda: ct2_decode(translator, beams)

  results = {}
  for dtype in args.dtype.split(","):
    config = base.replace(dtype=dtype)
    if hf_float32 is not None:  # Module.to converts in place: a copy for other dtypes
      hf = hf_float32 if dtype == "float32" else copy.deepcopy(hf_float32).to(getattr(torch, dtype))
    for name, method, beams in (("greedy", "greedy", 1), ("beam-4", "beam", 4)):
      fns = {"t5jax": ours(config, method, beams)}
      if hf_float32 is not None:
        fns["hf"] = theirs(hf, beams)
      if dtype == "float32":  # CTranslate2 and t5jax int8 ride along with the float32 rows
        fns.update({f"ct2-{q}": ct2_fn(t, beams) for q, t in ct2.items()})
        if not args.no_int8:
          fns["t5jax-int8"] = ours(config, method, beams, quantize="int8")
      seconds = _time_side_by_side(fns, args.repeats)
      results[dtype, name] = {side: n_tokens / s for side, s in seconds.items()}
      if "t5jax-int8" in results[dtype, name]:
        results["int8", name] = {"t5jax": results[dtype, name].pop("t5jax-int8")}
      print("  " + ", ".join(f"{side} {dtype} {name}: {rate:.1f} tokens/s"
                             for side, rate in results[dtype, name].items()), flush=True)

  print(f"\nDecoding {args.preset}, batch {args.batch}, {args.input_len} input tokens, "
        f"{args.new_tokens} new tokens ({jax.devices()[0].platform}: "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores)")
  print("| dtype | method | t5jax tokens/s | HF generate tokens/s | t5jax / HF |"
        " CTranslate2 float32 | t5jax / CT2 f32 | CTranslate2 int8 | t5jax / CT2 int8 |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  best = {name: max(r["t5jax"] for (_, n), r in results.items() if n == name)
          for _, name in results}
  for (dtype, name), r in results.items():
    cells = [dtype, name, f"{r['t5jax']:.1f}"]
    for side in ("hf", "ct2-float32", "ct2-int8"):
      # CTranslate2 is timed with the float32 rows; the other dtypes compare with those.
      rate = r.get(side) if side == "hf" else results.get(("float32", name), {}).get(side)
      cells += [f"{rate:.1f}", f"{r['t5jax'] / rate:.2f}x"] if rate else ["-", "-"]
    print("| " + " | ".join(cells) + " |")
  if ct2:
    for name, rate in best.items():
      ct2_int8 = results[("float32", name)].get("ct2-int8")
      if ct2_int8:
        print(f"{name}: fastest t5jax {rate:.1f} tokens/s vs CTranslate2 int8 {ct2_int8:.1f}: "
              f"{rate / ct2_int8:.2f}x")
  return results


if __name__ == "__main__":
  from t5jax.hugepages import reexec_with_hugepage_malloc
  reexec_with_hugepage_malloc()  # both t5jax and the HF peers run with it
  main()
