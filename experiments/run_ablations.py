"""Trains the T5 paper's unsupervised-objective ablations and tabulates them.

    # the committed CPU run (experiments/results/cpu_small):
    .venv/bin/python experiments/run_ablations.py --set all --out experiments/results/cpu_small
    # a few configs, another scale:
    .venv/bin/python experiments/run_ablations.py --configs rate_10,rate_50 --steps 1000 --batch_size 32
    # smoke (seconds per config): 2 steps, batch 8, the tiny preset
    .venv/bin/python experiments/run_ablations.py --configs span_2,span_5 --smoke --out /tmp/smoke

Each config is experiments/ablations/<name>.gin, trained by the real entry
point (`t5jax train`, called in-process through t5jax.cli.main so the corpus
is tokenised once) into its own run directory under --run_root (gitignored
runs/ by default). The final validation loss / token accuracy come from the
eval entries of each run's metrics.jsonl (`t5jax eval` on the final
checkpoint if the last step had none). With --data_dir holding TFDS GLUE
data, each pretrained model is also finetuned on a GLUE task and scored.

Writes to --out: results.json (every number), results.md (the table, the
exact command, the caveats, and notes.md from --out if it exists: the
hand-written comparison with the paper survives re-runs) and results.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import time

from t5jax.plots import read_metrics

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

OBJECTIVES = ["objective_span_corruption", "objective_iid_noise", "objective_drop_tokens",
              "objective_bert_mlm", "objective_mass", "objective_prefix_lm",
              "objective_deshuffling"]
RATES = ["rate_10", "objective_span_corruption", "rate_25", "rate_50"]
SPANS = ["span_2", "objective_span_corruption", "span_5", "span_10"]
# UL2's mixture of denoisers against T5's span corruption (not in the paper's "all").
UL2 = ["objective_span_corruption", "objective_ul2"]
SETS = {"objectives": OBJECTIVES, "rates": RATES, "spans": SPANS,
        "all": list(dict.fromkeys(OBJECTIVES + RATES + SPANS)), "ul2": UL2}

# Rows whose validation losses can be compared with each other: the same
# target format (sentinel + span lists). Other objectives predict different
# things (the whole text, a suffix, only dropped tokens): their per-token
# losses measure different tasks.
SPAN_FORMAT = {"span_corruption", "iid_denoising"}

# Fields of T5Config that demo/model_cpu.gin (included by base.gin) overrides;
# --preset rebinds them to the preset's values. The vocabulary stays 8k.
MODEL_FIELDS = ("d_model", "num_heads", "d_kv", "d_ff", "num_layers")

SMOKE_GIN = ["TrainConfig.compiler_options={'xla_backend_optimization_level': 0, "
             "'xla_llvm_disable_expensive_passes': True}", "TrainConfig.peak_flops=1e11"]

CAVEAT = """\
**Read the losses with care.** Validation loss is a mean over *target* tokens,
and the objectives have different targets: span corruption and i.i.d. noise
predict sentinels plus the ~15% corrupted tokens, drop-tokens predicts only the
dropped tokens, BERT-style, MASS-style and deshuffling predict the whole
segment (mostly tokens visible in the inputs, which are easy to copy), prefix
LM predicts an unseen continuation (hard). So a lower loss in the objectives
set does **not** mean a better objective; the T5 paper compares objectives by downstream
GLUE/SuperGLUE scores after finetuning (the `glue` column, when `--data_dir`
holds GLUE data). The `group` column marks what is comparable: rows of group
`span` share one target format (sentinel + span lists), so their losses are
roughly comparable, though the rate and span-length variants still differ in
how many tokens are corrupted and how many targets are sentinels (a sentinel is
nearly free to predict, so configs with more spans per target token look
better). Rows of the other groups compare only with themselves."""


def quiet_gin_search() -> None:
  """Hides gin's 'Path not found' for each search path it tries before the right one."""
  logging.getLogger().addFilter(lambda r: "Path not found" not in r.getMessage())


def config_names(args) -> list[str]:
  names = args.configs.split(",") if args.configs else SETS[args.set]
  known = sorted(f[:-4] for f in os.listdir(os.path.join(HERE, "ablations"))
                 if f.endswith(".gin") and f != "base.gin")
  unknown = [n for n in names if n not in known]
  if unknown:
    raise SystemExit(f"unknown config(s) {unknown}; known: {', '.join(known)}")
  return names


def eval_every(steps: int) -> int:
  """About four evaluations per run, the last one at the final step."""
  return max(d for d in range(1, steps + 1) if steps % d == 0 and d <= max(1, steps // 4))


def scale_bindings(args) -> list[str]:
  """--gin.* flags for the chosen scale and model."""
  flags = []
  if args.steps:
    flags += [f"--gin.TrainConfig.num_steps={args.steps}",
              f"--gin.TrainConfig.eval_every={eval_every(args.steps)}",
              f"--gin.TrainConfig.log_every={max(1, min(10, args.steps // 10))}"]
  if args.batch_size:
    flags.append(f"--gin.TrainConfig.batch_size={args.batch_size}")
  if args.eval_batches:
    flags.append(f"--gin.DataConfig.eval_batches={args.eval_batches}")
  if args.preset:
    from t5jax.config import get_config
    preset = get_config(args.preset)
    flags.append(f"--gin.model_config.preset='{args.preset}'")
    flags += [f"--gin.model_config.{f}={getattr(preset, f)}" for f in MODEL_FIELDS]
  return flags + [f"--gin.{b}" for b in args.gin]


def train_args(name: str, run_dir: str, args) -> list[str]:
  argv = ["train", "--gin_search_paths=" + HERE, f"--gin_file=ablations/{name}.gin"]
  if args.model:
    argv.append(f"--gin_file={args.model}")
  return argv + [f"--run_dir={run_dir}"] + scale_bindings(args)


def bound_data_config(run_dir: str) -> dict:
  """DataConfig fields from the run's operative config (what was really used)."""
  import re
  with open(os.path.join(run_dir, "config.gin")) as f:
    text = f.read()
  fields = {}
  for key in ("objective", "noise_density", "mean_noise_span_length", "inputs_length",
              "targets_length", "eval_batches"):
    m = re.search(rf"^DataConfig\.{key} = (.+)$", text, re.M)
    fields[key] = m.group(1).strip("'\"") if m else None
  return fields


def final_eval(name: str, run_dir: str, records: list[dict], args) -> dict:
  """{'loss', 'accuracy'} at the last step: from metrics.jsonl, else `t5jax eval`."""
  from t5jax.cli import main
  evals = [r for r in records if "eval/loss" in r]
  last_step = max((r["step"] for r in records), default=0)
  if evals and evals[-1]["step"] == last_step:
    return {"loss": evals[-1]["eval/loss"], "accuracy": evals[-1]["eval/accuracy"]}
  argv = ["eval", "--gin_search_paths=" + HERE, f"--gin_file=ablations/{name}.gin",
          "--gin_file=runs/eval.gin", f"--checkpoint={run_dir}", "--gin.DataConfig.pack=True",
          *[f for f in scale_bindings(args) if "DataConfig" in f]]
  if main(argv) != 0:
    raise RuntimeError(f"t5jax {' '.join(argv)} failed")
  with open(os.path.join(run_dir, "eval.jsonl")) as f:
    metrics = json.loads(f.readlines()[-1])
  return {"loss": metrics["eval/loss"], "accuracy": metrics["eval/accuracy"]}


def downstream(run_dir: str, args) -> dict:
  """Finetunes the pretrained run on GLUE args.glue_task and returns its seqio metrics."""
  from t5jax.cli import main
  task = f"glue_{args.glue_task}"
  ft_dir = os.path.join(run_dir, task)
  data = [f"--gin.DataConfig.data_dir='{args.data_dir}'", "--gin.DataConfig.inputs_length=128",
          "--gin.DataConfig.targets_length=8"]
  # The pretrained model's architecture: --preset / --model as in pretraining.
  model = [f for f in scale_bindings(args) if f.startswith("--gin.model_config.")]
  model += [f"--gin_file={args.model}"] if args.model else []
  if main(["train", "--gin_file=demo/finetune_cpu.gin", f"--gin_file=tasks/{task}.gin",
           f"--run_dir={ft_dir}", f"--gin.train.init_checkpoint='{run_dir}'", *data, *model,
           f"--gin.TrainConfig.num_steps={args.finetune_steps}",
           "--gin.TrainConfig.eval_every=0", "--gin.train.show_examples=0",
           f"--gin.CheckpointConfig.every_steps={args.finetune_steps}"]) != 0:
    raise RuntimeError(f"finetuning {run_dir} on {task} failed")
  if main(["eval", "--gin_file=runs/eval.gin", f"--gin_file=tasks/{task}.gin",
           "--gin_file=demo/model_cpu.gin", f"--checkpoint={ft_dir}", *data,
           "--gin.DecodeConfig.max_decode_length=8",
           f"--gin.evaluate.max_examples={args.glue_examples}"]) != 0:
    raise RuntimeError(f"evaluating {ft_dir} on {task} failed")
  with open(os.path.join(ft_dir, "eval.jsonl")) as f:
    metrics = json.loads(f.readlines()[-1])
  # Keys read 'eval/glue_sst2/accuracy'; keep 'accuracy' etc.
  return {k.split(f"{task}/", 1)[1]: v for k, v in metrics.items() if f"{task}/" in k}


def run_one(name: str, args) -> dict:
  from t5jax.cli import main
  run_dir = os.path.join(args.run_root, name)
  if os.path.exists(run_dir) and not args.resume:
    shutil.rmtree(run_dir)
  argv = train_args(name, run_dir, args)
  print(f"\n=== {name}: t5jax {' '.join(argv)}", flush=True)
  start = time.perf_counter()
  if main(argv) != 0:
    raise RuntimeError(f"t5jax {' '.join(argv)} failed")
  seconds = time.perf_counter() - start
  records = read_metrics(run_dir)
  train = [r for r in records if "loss" in r]
  steps = max((r["step"] for r in train), default=0)
  tail = [r["loss"] for r in train if r["step"] > 0.8 * steps] or [train[-1]["loss"]]
  data = bound_data_config(run_dir)
  row = {
      "config": name, "objective": data["objective"],
      "noise_density": float(data["noise_density"]),
      "mean_noise_span_length": float(data["mean_noise_span_length"]),
      "inputs_length": int(data["inputs_length"]), "targets_length": int(data["targets_length"]),
      "eval_batches": int(data["eval_batches"] or 4),
      "steps": steps, "batch_size": int(train[-1]["num_sequences"]),
      "train_loss": statistics.fmean(tail),
      "target_tokens_per_row": statistics.fmean(r["num_tokens"] / r["num_sequences"]
                                                for r in train),
      "step_time_s": statistics.median(r["step_time"] for r in train if "step_time" in r)
      if any("step_time" in r for r in train) else None,
      "wall_s": seconds,
      "eval_curve": [[r["step"], r["eval/loss"]] for r in records if "eval/loss" in r],
      "run_dir": run_dir,
  }
  final = final_eval(name, run_dir, records, args)
  row.update(eval_loss=final["loss"], eval_accuracy=final["accuracy"],
             group="span" if row["objective"] in SPAN_FORMAT else row["objective"])
  if args.data_dir:
    row["downstream"] = downstream(run_dir, args)
  return row


# ----------------------------------------------------------------------------
# Outputs.

def _fmt(x, spec=".3f"):
  return "" if x is None else format(x, spec)


def markdown(rows: list[dict], meta: dict, notes: str | None) -> str:
  span = lambda r: (f"{r['mean_noise_span_length']:g}" if r["objective"] == "span_corruption"
                    else "-")
  noise = lambda r: ("-" if r["objective"] in ("prefix_lm", "deshuffling", "ul2")
                     else f"{100 * r['noise_density']:g}%")
  glue = any(r.get("downstream") for r in rows)
  head = ("| config | objective | noise | span | steps | targets len | train loss | eval loss "
          "| eval token acc | group | time |")
  lines = [head + (" glue |" if glue else ""),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|" + ("---|" if glue else "")]
  for r in rows:
    cells = [r["config"], r["objective"], noise(r), span(r), str(r["steps"]),
             f"{r['targets_length']} ({r['target_tokens_per_row']:.0f})", _fmt(r["train_loss"]),
             _fmt(r["eval_loss"]), _fmt(r["eval_accuracy"]), r["group"],
             f"{r['wall_s']:.0f} s"]
    if glue:
      cells.append(", ".join(f"{k} {v:.3f}" for k, v in r.get("downstream", {}).items()))
    lines.append("| " + " | ".join(cells) + " |")
  out = [f"# T5 objective ablations: {meta['name']}", "",
         "Reproduce (from the repository root):", "", "```", meta["command"], "```", "",
         f"Scale: {meta['scale']}. Machine: {meta['machine']}. "
         f"Total wall time {meta['total_s'] / 60:.1f} min.", "",
         "Columns: `targets len` is the configured targets_length (mean target tokens per "
         "packed row in brackets); `train loss` is the mean logged training loss over the last "
         "20% of steps; `eval loss` / `eval token acc` are teacher-forced, per target token, on "
         f"{meta['eval_rows']} rows of the validation documents after the last step; "
         "`time` is the wall time of the run (startup, compilation and evals included).", "",
         *lines, "", "![validation loss per config](results.png)", "", CAVEAT, ""]
  if not glue:
    out += ["No downstream scores: run with `--data_dir DIR` holding TFDS GLUE data "
            "(`tfds build glue/sst2 --data_dir=DIR`) to finetune each model on SST-2 and "
            "add a `glue` column.", ""]
  if notes:
    out += [notes.strip(), ""]
  return "\n".join(out)


def plot(rows: list[dict], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  colors = {}
  palette = plt.get_cmap("tab10").colors
  color = lambda g: colors.setdefault(g, palette[len(colors) % len(palette)])
  fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, 4.8))
  names = [r["config"].replace("objective_", "") for r in rows]
  ax_bar.bar(range(len(rows)), [r["eval_loss"] for r in rows],
             color=[color(r["group"]) for r in rows])
  ax_bar.set_xticks(range(len(rows)), names, rotation=45, ha="right")
  ax_bar.set_ylabel("final validation loss (per target token)")
  ax_bar.set_title("final validation loss (colour: comparable group)")
  for i, r in enumerate(rows):
    ax_bar.text(i, r["eval_loss"], f"{r['eval_loss']:.2f}", ha="center", va="bottom", fontsize=7)
  from matplotlib.patches import Patch
  ax_bar.legend(handles=[Patch(color=c, label=g) for g, c in colors.items()], fontsize=8,
                loc="lower right")
  line_colors = plt.get_cmap("tab20").colors
  for i, (r, n) in enumerate(zip(rows, names)):
    curve = r["eval_curve"]
    if curve:
      style = "-" if r["group"] == "span" else "--"
      ax_curve.plot(*zip(*curve), style, marker=".", label=n,
                    color=line_colors[i % len(line_colors)])
  ax_curve.set_xlabel("step")
  ax_curve.set_ylabel("validation loss")
  ax_curve.set_title("validation loss during training (dashed: not comparable)")
  ax_curve.legend(fontsize=7, ncol=2)
  for ax in (ax_bar, ax_curve):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(rows: list[dict], meta: dict, out: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  notes_path = os.path.join(out, "notes.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else None
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(markdown(rows, meta, notes))
  plot(rows, os.path.join(out, "results.png"), f"T5 objective ablations: {meta['name']}")


# ----------------------------------------------------------------------------

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n", 1)[1])
  which = p.add_mutually_exclusive_group()
  which.add_argument("--set", choices=sorted(SETS), default="all")
  which.add_argument("--configs", help="comma-separated names of experiments/ablations/*.gin")
  p.add_argument("--steps", type=int, help="training steps (default: base.gin's)")
  p.add_argument("--batch_size", type=int, help="sequences per step (default: base.gin's)")
  p.add_argument("--eval_batches", type=int, help="validation batches per evaluation")
  p.add_argument("--preset", help="model preset (t5jax params lists them) instead of the demo "
                                  "model; keeps the 8k vocabulary")
  p.add_argument("--model", help="an extra gin file applied after the ablation's, e.g. to "
                                 "change model_config fields")
  p.add_argument("--gin", action="append", default=[], metavar="NAME=VALUE",
                 help="extra gin binding for every run, e.g. --gin DataConfig.seed=1")
  p.add_argument("--out", help="results folder (default experiments/results/<set>)")
  p.add_argument("--run_root", help="run directories (default runs/ablations/<out name>)")
  p.add_argument("--resume", action="store_true",
                 help="keep existing run directories (a finished run is not retrained)")
  p.add_argument("--data_dir", help="TFDS data_dir with GLUE: adds downstream scores")
  p.add_argument("--glue_task", default="sst2")
  p.add_argument("--finetune_steps", type=int, default=200)
  p.add_argument("--glue_examples", type=int, default=None,
                 help="validation examples to score (default: all)")
  p.add_argument("--render_only", action="store_true",
                 help="rewrite results.md/png from --out/results.json (e.g. after editing notes.md)")
  p.add_argument("--smoke", action="store_true",
                 help="tiny and fast: 2 steps, batch 8, 1 eval batch, the tiny preset")
  args = p.parse_args(argv)
  if args.smoke:
    args.steps = args.steps or 2
    args.batch_size = args.batch_size or 8  # divisible by the 8 simulated devices of tests/
    args.eval_batches = args.eval_batches or 1
    args.preset = args.preset or "tiny"
    args.finetune_steps = min(args.finetune_steps, 2)
    args.glue_examples = args.glue_examples or 8
    # Compile fast and skip the matmul that measures peak FLOP/s (only MFU uses it).
    args.gin = [*SMOKE_GIN, *args.gin]
  name = args.configs.replace(",", "+") if args.configs else args.set
  args.out = args.out or os.path.join(HERE, "results", name)
  args.run_root = args.run_root or os.path.join(
      REPO, "runs", "ablations", os.path.basename(os.path.normpath(args.out)))
  return args


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.render_only:
    with open(os.path.join(args.out, "results.json")) as f:
      saved = json.load(f)
    write_results(saved["rows"], saved["meta"], args.out)
    print(f"Rewrote {args.out}/results.md and results.png from results.json")
    return 0
  quiet_gin_search()
  names = config_names(args)
  start = time.perf_counter()
  rows = [run_one(name, args) for name in names]
  first = rows[0]
  import platform
  meta = {
      "name": os.path.basename(os.path.normpath(args.out)),
      "command": ".venv/bin/python experiments/run_ablations.py " + shlex.join(argv),
      "scale": (f"{first['steps']} steps x batch {first['batch_size']}, inputs "
                f"{first['inputs_length']} packed, model "
                f"{args.preset or 'demo/model_cpu.gin (d_model 128, 2+2 layers, 8k vocab)'}"
                + (f" + {args.model}" if args.model else "")),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.platform()})",
      "eval_rows": f"{first['eval_batches']} x {first['batch_size']}",
      "total_s": time.perf_counter() - start,
      "configs": names,
  }
  write_results(rows, meta, args.out)
  print(f"\nWrote {args.out}/results.md, results.png, results.json "
        f"({meta['total_s'] / 60:.1f} min)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
