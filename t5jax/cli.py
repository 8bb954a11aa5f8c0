"""The `t5jax` command line: one subcommand per job.

    t5jax params [PRESET ...]              parameter counts, nothing allocated
    t5jax convert SRC DST [--to hf|t5jax]  checkpoint conversion

Subcommands import what they need when they run, so `t5jax --help` and the
core commands never import TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import sys


def _parse_overrides(pairs: list[str]) -> dict:
  """['dropout_rate=0.1', 'dtype=bfloat16'] -> dict with Python-literal values."""
  out = {}
  for pair in pairs:
    if "=" not in pair:
      raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE, e.g. --set dropout_rate=0.1")
    key, value = pair.split("=", 1)
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value  # bare strings: --set dtype=bfloat16
  return out


def cmd_params(args) -> int:
  from t5jax.config import PRESETS, get_config
  from t5jax.model import count_params
  names = args.presets or list(PRESETS)
  overrides = _parse_overrides(args.set)
  width = max(len(n) for n in names)
  for name in names:
    config = get_config(name, **overrides)
    print(f"{name:<{width}}  {count_params(config):>16,}")
  return 0


def cmd_convert(args) -> int:
  from t5jax.conversion import load_checkpoint, save_checkpoint
  from t5jax.model import count_params
  config, params = load_checkpoint(args.src, format=args.source_format,
                                   **_parse_overrides(args.set))
  save_checkpoint(args.dst, config, params, format=args.to)
  print(f"{args.src} -> {args.dst} ({args.to}): {count_params(config):,} parameters, "
        f"d_model={config.d_model}, layers={config.num_layers}/{config.decoder_layers}, "
        f"ffn={config.feed_forward_proj}, tied={config.tie_word_embeddings}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="t5jax", description="T5 encoder-decoder models in JAX/Flax.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("params", help="print parameter counts of presets (no memory used)")
  p.add_argument("presets", nargs="*", help="preset names (default: all)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a T5Config field, e.g. --set vocab_size=32100")
  p.set_defaults(run=cmd_params)

  from t5jax.conversion import FORMATS  # light: no TF, no model import
  p = sub.add_parser(
      "convert", help="convert a checkpoint (HF, T5X, original T5 TF, orbax) to HF or t5jax",
      description="Formats read:\n" + "\n".join(f"  {k}: {v}" for k, v in FORMATS.items()),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("src", help="checkpoint folder (or TF checkpoint prefix)")
  p.add_argument("dst", help="output folder")
  p.add_argument("--to", choices=["hf", "t5jax"], default="hf", help="output format")
  p.add_argument("--from", dest="source_format", choices=sorted(FORMATS), default=None,
                 help="input format (default: detected from the files)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a T5Config field of the loaded model")
  p.set_defaults(run=cmd_convert)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.run(args)
  except (FileNotFoundError, ValueError, KeyError, TypeError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"t5jax {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
