"""What int8 decoding costs in quality on a trained model: float32 against int8 weights
(`quantize='int8'`, t5jax.quantize) on held-out data.

    .venv/bin/python benchmarks/int8_quality.py [--checkpoint runs/demo] [--batches 4]
        [--batch_size 32] [--decode_length 32]

The checkpoint is `make pretrain`'s run by default; the data are its validation documents
(the default corpus's held-out split), span-corrupted as in pretraining, one example a row
(not packed), inputs 128 / targets 29 and the 8k vocabulary (gin_configs/demo/pretrain_cpu.gin;
--inputs / --targets / --vocab_size for another run). Printed, float32 then int8:
- teacher-forced loss and token accuracy over the target tokens;
- the largest logit error, absolute and relative to the float32 logits' standard deviation;
- how often the argmax of the teacher-forced logits is the same;
- greedy decoding from the same inputs: share of equal tokens, and of each row that is
  equal up to its first difference.
"""

from __future__ import annotations

import argparse
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax
import jax.numpy as jnp
import numpy as np


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", default="runs/demo")
  p.add_argument("--batches", type=int, default=4)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--inputs", type=int, default=128)
  p.add_argument("--targets", type=int, default=29)
  p.add_argument("--decode_length", type=int, default=32)
  p.add_argument("--vocab_size", type=int, default=8000,
                 help="pieces of the default-corpus vocabulary the run used (the demo: 8000)")
  args = p.parse_args(argv)

  from t5jax import quantize, run
  from t5jax.decoding import DecodeConfig, decode, prepare_params
  from t5jax.model import T5

  if not os.path.isdir(args.checkpoint):
    raise SystemExit(f"{args.checkpoint} is not a run directory: run `make pretrain` first "
                     "(or pass --checkpoint)")
  config, params = run.load_params(args.checkpoint)
  data = run.DataConfig(task="default_corpus_span_corruption", inputs_length=args.inputs,
                        targets_length=args.targets, pack=False, vocabulary=None,
                        vocab_size=args.vocab_size)
  _, task = run.prepare_task(data)
  qparams = quantize.quantize_params(params)
  model = T5(config)
  logits_fn = jax.jit(lambda p, b: model.apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))
  cfg = DecodeConfig(max_decode_length=args.decode_length)
  f32_prepared = prepare_params(params, config)
  int8_prepared = prepare_params(params, config, quantize="int8")

  sums = {k: 0.0 for k in ("f32_nll", "int8_nll", "f32_acc", "int8_acc", "argmax_same",
                           "tokens")}
  max_err, stds, equal, prefix = 0.0, [], [], []
  it = run.batches(data, task, "validation", args.batch_size, train=False)
  for batch in itertools.islice(it, args.batches):
    batch = jax.tree.map(jnp.asarray, batch)
    weights = np.asarray(batch["decoder_loss_weights"]) > 0
    targets = np.asarray(batch["decoder_target_tokens"])
    ref = np.asarray(logits_fn(params, batch))
    got = np.asarray(logits_fn(qparams, batch))
    for name, logits in (("f32", ref), ("int8", got)):
      logp = jax.nn.log_softmax(logits, axis=-1)
      nll = -np.take_along_axis(np.asarray(logp), targets[..., None], -1)[..., 0]
      sums[f"{name}_nll"] += float(nll[weights].sum())
      sums[f"{name}_acc"] += float((logits.argmax(-1) == targets)[weights].sum())
    sums["argmax_same"] += float((ref.argmax(-1) == got.argmax(-1))[weights].sum())
    sums["tokens"] += float(weights.sum())
    max_err = max(max_err, float(np.abs(got - ref)[weights].max()))
    stds.append(float(ref[weights].std()))
    enc = batch["encoder_input_tokens"]
    want = np.asarray(decode(f32_prepared, config, enc, cfg).tokens[:, 0])
    have = np.asarray(decode(int8_prepared, config, enc, cfg).tokens[:, 0])
    equal.append(np.mean(want == have))
    diff = np.concatenate([want != have, np.ones_like(want[:, :1], bool)], 1)
    prefix.append(np.mean(np.argmax(diff, 1) / want.shape[1]))
  n = sums["tokens"]
  std = float(np.mean(stds))
  print(f"{args.checkpoint}: {args.batches} x {args.batch_size} validation examples, "
        f"{int(n)} target tokens, backend {jax.default_backend()}")
  print("| | float32 | int8 |")
  print("|---|---:|---:|")
  print(f"| teacher-forced loss | {sums['f32_nll'] / n:.4f} | {sums['int8_nll'] / n:.4f} |")
  print(f"| token accuracy | {sums['f32_acc'] / n:.4f} | {sums['int8_acc'] / n:.4f} |")
  print(f"largest logit error {max_err:.4f} = {max_err / std:.3f} of the logits' s.d. "
        f"({std:.3f}); teacher-forced argmax equal: {sums['argmax_same'] / n:.2%}")
  print(f"greedy ({args.decode_length} tokens): equal tokens {np.mean(equal):.2%}, equal up "
        f"to the first difference {np.mean(prefix):.2%} of each row")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
