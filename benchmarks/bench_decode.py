"""Decoding throughput: t5jax cached greedy / beam-4 vs HF transformers' generate.

    .venv/bin/python benchmarks/bench_decode.py [--preset t5.1.0-small] [--batch 4]
        [--input_len 256] [--new_tokens 64] [--repeats 5] [--dtype float32,bfloat16]

Same random weights (t5jax params exported to HF), same inputs, same machine,
one run, the two sides' calls interleaved (medians of --repeats each). New tokens
are counted as batch * new_tokens (EOS is suppressed by banning EOS until the
last token on both sides).

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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="t5.1.0-small")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--input_len", type=int, default=256)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32,bfloat16", help="comma-separated dtypes")
  parser.add_argument("--no_hf", action="store_true", help="skip the HF peer")
  args = parser.parse_args(argv)

  from t5jax.config import get_config
  from t5jax.decoding import DecodeConfig, decode, prepare_params
  from t5jax.model import init_params

  base = get_config(args.preset, dropout_rate=0.0)
  params = init_params(base, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, 32000, (args.batch, args.input_len)).astype(np.int32)
  n_tokens = args.batch * args.new_tokens

  def ours(config, method, beams):
    # EOS banned until the end, as HF's min_new_tokens: both sides make every token.
    cfg = DecodeConfig(method=method, num_beams=beams, max_decode_length=args.new_tokens,
                       min_decode_length=args.new_tokens, alpha=0.0)
    prepared = prepare_params(params, config)  # once, as HF's model.to(dtype) below
    return lambda: jax.block_until_ready(decode(prepared, config, enc, cfg).tokens)

  hf_float32 = None
  if not args.no_hf:
    import copy
    import torch
    import transformers
    from t5jax.conversion.hf import save_hf
    torch.set_num_threads(os.cpu_count())
    # On a GPU machine HF runs on the GPU too (when this torch has CUDA).
    device = "cuda" if jax.devices()[0].platform == "gpu" and torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
      save_hf(tmp, base, params)
      hf_float32 = transformers.T5ForConditionalGeneration.from_pretrained(tmp).eval().to(device)
    ids = torch.tensor(enc, dtype=torch.long, device=device)

    def theirs(hf, beams):
      def run():
        with torch.no_grad():
          hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                      num_beams=beams, max_new_tokens=args.new_tokens,
                      min_new_tokens=args.new_tokens, length_penalty=0.0)
        if device == "cuda":
          torch.cuda.synchronize()
      return run

  results = {}
  for dtype in args.dtype.split(","):
    config = base.replace(dtype=dtype)
    if hf_float32 is not None:  # Module.to converts in place: a copy for other dtypes
      hf = hf_float32 if dtype == "float32" else copy.deepcopy(hf_float32).to(getattr(torch, dtype))
    for name, method, beams in (("greedy", "greedy", 1), ("beam-4", "beam", 4)):
      fns = {"t5jax": ours(config, method, beams)}
      if hf_float32 is not None:
        fns["hf"] = theirs(hf, beams)
      seconds = _time_side_by_side(fns, args.repeats)
      results[dtype, name] = {side: n_tokens / s for side, s in seconds.items()}
      print("  " + ", ".join(f"{side} {dtype} {name}: {rate:.1f} tokens/s"
                             for side, rate in results[dtype, name].items()), flush=True)

  print(f"\nDecoding {args.preset}, batch {args.batch}, {args.input_len} input tokens, "
        f"{args.new_tokens} new tokens ({jax.devices()[0].platform}: "
        f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores)")
  print("| dtype | method | t5jax tokens/s | HF generate tokens/s | t5jax / HF |")
  print("|---|---|---:|---:|---:|")
  for (dtype, name), r in results.items():
    hf_rate = r.get("hf")
    ratio = f"{r['t5jax'] / hf_rate:.2f}x" if hf_rate else "-"
    hf_text = f"{hf_rate:.1f}" if hf_rate else "-"
    print(f"| {dtype} | {name} | {r['t5jax']:.1f} | {hf_text} | {ratio} |")
  return results


if __name__ == "__main__":
  from t5jax.hugepages import reexec_with_hugepage_malloc
  reexec_with_hugepage_malloc()  # both t5jax and the HF peers run with it
  main()
