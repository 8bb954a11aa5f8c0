"""The `t5jax` command line: one subcommand per job.

    t5jax train --gin_file=FILE [--run_dir=DIR] [--gin.NAME=VALUE ...]
    t5jax eval  --gin_file=FILE --checkpoint=PATH [--step=best|latest|N] [--gin.NAME=VALUE ...]
    t5jax infer --gin_file=FILE --checkpoint=PATH --output=OUT.jsonl [--input_file=F] [--step=...]
    t5jax vocab CORPUS... --output_dir=DIR [--vocab_size=N]
    t5jax params [PRESET ...]              parameter counts, nothing allocated
    t5jax convert SRC DST [--to hf|t5jax|peft] [--adapter=DIR] [--step=...]  conversion
    t5jax tasks [--data_dir=DIR]           tasks and mixtures DataConfig.task can name

Bad input a user can fix (t5jax.errors.UsageError) is reported in one line,
`t5jax CMD: error: MESSAGE`, with exit status 2; any other exception keeps
its full traceback.

Subcommands import what they need when they run, so `t5jax --help` and the
core commands never import TensorFlow.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys

from t5jax.errors import UsageError


def _parse_overrides(pairs: list[str]) -> dict:
  """['dropout_rate=0.1', 'dtype=bfloat16'] -> dict with Python-literal values."""
  out = {}
  for pair in pairs:
    if "=" not in pair:
      raise UsageError(f"--set {pair!r}: expected FIELD=VALUE, e.g. --set dropout_rate=0.1")
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
  if not os.path.exists(args.src) and not os.path.exists(args.src + ".index"):
    raise UsageError(f"Checkpoint path {args.src!r} does not exist.")  # .index: a TF prefix
  config, params = load_checkpoint(args.src, format=args.source_format, step=args.step,
                                   adapter=args.adapter, **_parse_overrides(args.set))
  if args.to == "peft":  # the adapter alone, as an HF PEFT folder
    from t5jax.conversion import peft_hf
    peft_hf.save_peft_adapter(args.dst, config, params, base_model=os.path.abspath(args.src))
    print(f"{args.src} -> {args.dst} (HF PEFT {config.adapter.method} adapter)")
    return 0
  if config.adapter is not None and (args.to == "hf" or config.adapter.method != "prompt"):
    from t5jax import peft
    method = config.adapter.method
    config, params = peft.merge_adapter(config, params)  # LoRA / IA3 folded into the kernels
    print(f"Merged the {method} adapter into the base.")
  save_checkpoint(args.dst, config, params, format=args.to)
  print(f"{args.src} -> {args.dst} ({args.to}): {count_params(config):,} parameters, "
        f"d_model={config.d_model}, layers={config.num_layers}/{config.decoder_layers}, "
        f"ffn={config.feed_forward_proj}, tied={config.tie_word_embeddings}")
  return 0


GIN_HELP = """gin:
  --gin_file=FILE         repeatable; found as given, in --gin_search_paths, or in gin_configs/
  --gin.NAME=VALUE        a binding, e.g. --gin.TrainConfig.num_steps=1000
  most used bindings:
    model_config.preset = 't5.1.1-base'      model_config.<T5Config field> = ...
    TrainConfig.num_steps / batch_size / microbatches / eval_every / log_every
    OptimizerConfig.learning_rate / schedule / warmup_steps
    MeshConfig.data / model / rules ('1d', '2d', 'fsdp')
    CheckpointConfig.every_steps / keep
    DataConfig.task / inputs_length / targets_length / data_dir / vocabulary / corpus
    train.init_checkpoint = 'path'   (finetune from any checkpoint format)
"""


def _gin_command(name: str):
  """Runs entry function `name` of t5jax.run after parsing gin files and flags."""
  def run_command(args) -> int:
    from t5jax import gin_setup, run
    bindings = list(args.gin_bindings)
    if getattr(args, "run_dir", None):
      bindings.insert(0, f"RUN_DIR = {args.run_dir!r}")
    for flag, target in (("checkpoint", "checkpoint"), ("output", "output"),
                         ("input_file", "input_file"), ("step", "step")):
      if getattr(args, flag, None):
        bindings.append(f"{name}.{target} = {getattr(args, flag)!r}")
    if getattr(args, "quantize", None):
      bindings.append(f"DecodeConfig.quantize = {args.quantize!r}")
    search = [p for p in args.gin_search_paths.split(",") if p]
    from t5jax import compilation
    cache = compilation.enable_cache()  # before anything compiles
    print(f"XLA compile cache: {cache or 'off'} ({compilation.ENV}=0 turns it off, "
          f"{compilation.ENV}=DIR moves it).", flush=True)
    import gin
    gin.clear_config()  # one command, one configuration (matters when called in-process)
    gin_setup.parse(args.gin_file, bindings, search)
    try:
      getattr(run, name)()
    except RuntimeError as e:  # gin reports unbound gin.REQUIRED arguments this way
      if "Required bindings" not in str(e):
        raise
      raise gin_setup.GinError(f"{e} Bind them in a gin file or with --gin.NAME=VALUE "
                               f"(see `t5jax {args.command} --help`).") from None
    return 0
  return run_command


def cmd_tasks(args) -> int:
  from t5jax.data import inputs
  where = args.data_dir or "~/tensorflow_datasets"
  if args.data_dir and not os.path.isdir(args.data_dir):
    raise UsageError(f"--data_dir={args.data_dir!r} is not a folder.")
  entries = inputs.list_tasks(args.data_dir)
  width = max(len(e["name"]) for e in entries)
  print(f"Tasks and mixtures for DataConfig.task (sizes: TFDS data in {where}):")
  for e in entries:
    if e["kind"] == "mixture":
      names = e["tasks"] if len(e["tasks"]) <= 16 else e["tasks"][:8] + ["..."]
      detail = f"mixture of {len(e['tasks'])} tasks: {', '.join(names)}"
    else:
      sizes = e["splits"]
      if all(n is None for n in sizes.values()):
        why = ("counted when tokenised" if e["name"] in inputs.CORPUS_TASKS
               else f"not prepared in {where}")
        detail = f"{', '.join(sizes)}: size unknown ({why})"
      else:
        detail = ", ".join(f"{s}: {'size unknown' if n is None else f'{n:,}'}"
                           for s, n in sizes.items())
      detail = f"{e['source']}; {detail}"
    print(f"  {e['name']:<{width}}  {detail}")
  return 0


def cmd_vocab(args) -> int:
  from t5jax.data import train_vocab
  path = train_vocab(args.corpus, args.output_dir, vocab_size=args.vocab_size)
  print(f"SentencePiece model: {path}")
  return 0


def _add_step_flag(parser: argparse.ArgumentParser) -> None:
  def step(value: str) -> str:
    from t5jax.conversion import parse_step  # light: no TF, no model import
    try:
      parse_step(value)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
    return value
  parser.add_argument(
      "--step", type=step, default=None, metavar="best|latest|N",
      help="which checkpoint of a run directory: 'best' (run_dir/best.json), 'latest' or "
           "a step number (default: best if the run has a best.json, else latest)")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="t5jax", description="T5 encoder-decoder models in JAX/Flax.", epilog=GIN_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  for name, entry, help_text in (
      ("train", "train", "pretrain or finetune from gin configs (resumes from --run_dir)"),
      ("eval", "evaluate", "evaluate a checkpoint on a task's eval split"),
      ("infer", "infer", "decode (or score) inputs from a file or a task split to JSONL")):
    p = sub.add_parser(name, help=help_text, epilog=GIN_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", action="append", default=[], metavar="FILE")
    p.add_argument("--gin_search_paths", default="", metavar="DIR[,DIR]")
    p.add_argument("--gin_bindings", action="append", default=[], metavar="BINDING")
    if name == "train":
      p.add_argument("--run_dir", help="run directory (binds the RUN_DIR macro)")
    else:
      p.add_argument("--checkpoint", help="run directory or checkpoint of any format")
      _add_step_flag(p)
    if name == "infer":
      p.add_argument("--output", help="JSONL file to write")
      p.add_argument("--input_file", help="text (one input per line) or JSONL with 'inputs'")
      p.add_argument("--quantize", choices=["int8"],
                     help="int8 weights and matmuls (DecodeConfig.quantize; see docs/cli.md)")
    p.set_defaults(run=_gin_command(entry))

  p = sub.add_parser("tasks", help="list the tasks and mixtures DataConfig.task can name, "
                     "with their splits (and sizes, for TFDS data prepared in --data_dir)")
  p.add_argument("--data_dir", help="TFDS data_dir to read split sizes from "
                 "(default: ~/tensorflow_datasets)")
  p.set_defaults(run=cmd_tasks)

  p = sub.add_parser("vocab", help="train a SentencePiece vocabulary (T5 layout) on text files")
  p.add_argument("corpus", nargs="+", help="text files or folders")
  p.add_argument("--output_dir", required=True)
  p.add_argument("--vocab_size", type=int, default=32000, help="pieces (before 100 sentinels)")
  p.set_defaults(run=cmd_vocab)

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
  p.add_argument("--to", choices=["hf", "t5jax", "peft"], default="hf",
                 help="output format ('peft': an adapter run's adapter as an HF PEFT folder)")
  p.add_argument("--adapter", default=None, metavar="DIR",
                 help="an HF PEFT adapter folder (LoRA / IA3) for SRC: merged into the base "
                      "before writing")
  p.add_argument("--from", dest="source_format", choices=sorted(FORMATS), default=None,
                 help="input format (default: detected from the files)")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="override a T5Config field of the loaded model")
  _add_step_flag(p)
  p.set_defaults(run=cmd_convert)
  return parser


def entry() -> int:
  """The `t5jax` console script and `python -m t5jax`: huge-page malloc, then main."""
  from t5jax.hugepages import reexec_with_hugepage_malloc
  reexec_with_hugepage_malloc()
  return main()


def main(argv: list[str] | None = None) -> int:
  """Runs one subcommand; returns its exit status.

  A UsageError (bad input a user can fix) is printed as one line and gives
  exit status 2. Any other exception propagates with its full traceback: a
  shape or sharding error deep inside JAX is a bug to debug, not bad input.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF (data pipeline only) is chatty
  from t5jax.gin_setup import split_gin_flags
  prog = "t5jax"
  try:
    rest, bindings = split_gin_flags(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(rest)
    prog = f"t5jax {args.command}"
    if bindings and not hasattr(args, "gin_bindings"):
      raise UsageError("--gin.* flags only apply to train, eval and infer.")
    if hasattr(args, "gin_bindings"):
      args.gin_bindings = args.gin_bindings + bindings
    return args.run(args)
  except UsageError as e:
    # Gin appends "In call to configurable 'X' (...)" lines; the message names X already.
    message = re.sub(r"\n\s*In call to configurable '[^']*' \([^\n]*\)", "", str(e))
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
