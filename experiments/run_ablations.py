"""Trains the T5 paper's unsupervised-objective ablations, scores them downstream, tabulates them.

    # the paper's protocol, the committed CPU run (experiments/results/cpu_downstream),
    # which can be split over sittings with --resume:
    .venv/bin/python experiments/run_ablations.py --set all --out experiments/results/cpu_downstream
    # a few configs, another scale:
    .venv/bin/python experiments/run_ablations.py --configs rate_10,rate_50 --steps 1000 --batch_size 32
    # at GPU scale on one H100/H200 (T5.1.1-small widths, bf16, scanned, grain, context_cloze;
    # benchmarks/gpu_ablations.sh wraps it there), and the floor alone:
    python experiments/run_ablations.py --profile gpu --configs objective_span_corruption --seeds 1 --no_floor
    python experiments/run_ablations.py --profile gpu --configs no_pretraining --seeds 1
    # smoke (seconds per config): 2 steps, batch 8, the tiny preset
    .venv/bin/python experiments/run_ablations.py --configs span_2,span_5 --smoke --no_downstream \
        --out /tmp/smoke

Each config is experiments/ablations/<name>.gin, trained by the real entry
point (`t5jax train`, called in-process through t5jax.cli.main so the corpus
is tokenised once) into its own run directory under --run_root (gitignored
runs/ by default). The final validation loss / token accuracy come from the
eval entries of each run's metrics.jsonl (`t5jax eval` on the final
checkpoint if the last step had none). Then, as the paper did, each pretrained
model is finetuned with one recipe (finetune/docstring_package.gin, a local_pairs
recipe) on an offline task (t5jax/data/downstream.py; --task: docstring_package, the
default, next_sentence or cloze) and scored by exact match; the same
finetuning from random init is the no-pretraining floor; the baseline and the
floor run --seeds seeds, whose spread says which differences are real. With
--data_dir holding TFDS GLUE data, each pretrained model is also finetuned on a
GLUE task and scored.

Writes to --out: results.json (every number, every sitting's command),
results.md (the downstream table with the paper's figures, the pretraining
table, the commands, the caveats, and notes.md from --out if it exists: the
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

# The paper's baseline objective: it runs with --seeds seeds, whose spread says which
# downstream differences are real. FLOOR is the same finetuning from random init.
BASELINE = "objective_span_corruption"
FLOOR = "no_pretraining"

# The paper's figures, GLUE average / SuperGLUE average (Raffel et al. 2020), and the row
# of the same table each one is compared with: Table 7's span 3 (T5's span corruption,
# our BASELINE) for the objectives and span lengths, Table 6's 15% for the corruption
# rates (that table varied the i.i.d. objective's rate; ours varies span corruption's).
PAPER = {
    "objective_prefix_lm": ("Table 4", "prefix LM", 80.69, 65.27),
    "objective_bert_mlm": ("Table 4", "BERT-style", 82.96, 69.85),
    "objective_deshuffling": ("Table 4", "deshuffling", 73.17, 58.47),
    "objective_mass": ("Table 5", "MASS-style", 82.32, 69.28),
    "objective_iid_noise": ("Table 5", "replace corrupted spans", 83.28, 71.36),
    "objective_drop_tokens": ("Table 5", "drop corrupted tokens", 84.44, 68.67),
    "rate_10": ("Table 6", "corruption rate 10%", 82.82, 69.55),
    "rate_25": ("Table 6", "corruption rate 25%", 83.00, 70.48),
    "rate_50": ("Table 6", "corruption rate 50%", 81.27, 70.33),
    "span_2": ("Table 7", "mean span 2", 83.54, 72.20),
    BASELINE: ("Table 7", "mean span 3", 83.49, 72.53),
    "span_5": ("Table 7", "mean span 5", 83.40, 72.23),
    "span_10": ("Table 7", "mean span 10", 82.85, 70.44),
}
PAPER_RATE_15 = (83.28, 71.36)  # Table 6, 15% (the i.i.d. baseline)


def paper_delta(name: str) -> tuple[float, float] | None:
  """(GLUE, SuperGLUE) of a config minus its reference row in the paper (PAPER)."""
  if name not in PAPER or name == BASELINE:
    return None
  ref = PAPER_RATE_15 if name.startswith("rate_") else PAPER[BASELINE][2:]
  return PAPER[name][2] - ref[0], PAPER[name][3] - ref[1]


def spread(values: list[float]) -> float | None:
  """Run-to-run spread: the sample standard deviation over seeds (None under 2 seeds)."""
  return statistics.stdev(values) if len(values) >= 2 else None


def distinguishable(delta: float, noise: float | None) -> bool | None:
  """A difference counts only at twice the seed spread or more (`row_noise`)."""
  return None if noise is None else abs(delta) >= 2 * noise


def row_noise(base_spread: float | None, spread_of_row: float | None) -> float | None:
  """The spread a row's difference from the baseline is judged by: the larger of the
  baseline's and the row's own (when it ran 2 or more seeds); None without the baseline's."""
  if base_spread is None:
    return None
  return base_spread if spread_of_row is None else max(base_spread, spread_of_row)


def direction(ours: float, paper: float | None, noise: float | None) -> str:
  """Our difference from the baseline against the paper's, row by row."""
  if paper is None:
    return "-"
  if noise is not None and abs(ours) < 2 * noise:
    return "within our noise"
  if noise is None:
    return "no spread measured"
  return "agrees" if (ours > 0) == (paper > 0) else "disagrees"


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

# --profile gpu: the ablations at GPU scale, for one H100/H200 (docs: experiments/README.md,
# "At GPU scale"). T5.1.1-small's widths on the 8k vocabulary (a 32k softmax would take a
# third of the step at these lengths), bf16 activations, scanned layers (one compiled
# layer body per stack: compile time does not grow with depth), the TensorFlow-free grain
# pipeline (the GPU image has no TensorFlow), inputs of 128 as on CPU so every
# ablation file's targets_length still holds. Flags given on the command line win.
PROFILES = {
    "cpu": {},
    "gpu": {"preset": "t5.1.1-small", "steps": 3000, "batch_size": 128, "eval_batches": 4,
            "pipeline": "grain", "finetune_steps": 600, "finetune_batch": 64,
            "task": "context_cloze",
            "gin": ["model_config.scan_layers=True", "model_config.dtype='bfloat16'"]},
}

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
  unknown = [n for n in names if n not in known and n != FLOOR]
  if unknown:
    raise SystemExit(f"unknown config(s) {unknown}; known: {', '.join(known)}, and {FLOOR} "
                     "(the floor alone)")
  if FLOOR in names and (args.no_downstream or args.no_floor):
    raise SystemExit(f"--configs {FLOOR} is the downstream floor: drop --no_downstream / "
                     "--no_floor")
  stray = [n for n in filter(None, args.seeded.split(",")) if n != "all" and n not in names]
  if stray:
    raise SystemExit(f"--seeded {','.join(stray)}: not among the configs of this sitting "
                     f"({', '.join(names)}); add them to --configs, or use --seeded all")
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
  return flags + pipeline_bindings(args) + [f"--gin.{b}" for b in args.gin]


def pipeline_bindings(args) -> list[str]:
  """The input pipeline of pretraining and of the package task (GLUE stays on seqio)."""
  return [] if args.pipeline == "seqio" else [f"--gin.DataConfig.pipeline='{args.pipeline}'"]


def train_args(name: str, run_dir: str, args) -> list[str]:
  argv = ["train", "--gin_search_paths=" + HERE, f"--gin_file=ablations/{name}.gin"]
  if args.model:
    argv.append(f"--gin_file={args.model}")
  return argv + [f"--run_dir={run_dir}"] + scale_bindings(args)


def check_finished(run_dir: str) -> None:
  """Stops the sitting if the run in run_dir ended before its TrainConfig.num_steps: the
  trainer saves and returns on SIGTERM / SIGINT, and a row scored from that checkpoint
  would look complete. --resume continues the run from where it stopped."""
  import re
  with open(os.path.join(run_dir, "config.gin")) as f:
    m = re.search(r"^TrainConfig\.num_steps = (\d+)$", f.read(), re.M)
  last = max((r["step"] for r in read_metrics(run_dir)), default=0)
  if m and last < int(m.group(1)):
    raise SystemExit(f"{run_dir} ended before its last step (logged up to step {last} of "
                     f"{m.group(1)}: a signal, or a stopped run): no row written for it. "
                     "Rerun the same command with --resume to continue it.")


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
  finetune_steps = args.finetune_steps or 200
  data = [f"--gin.DataConfig.data_dir='{args.data_dir}'", "--gin.DataConfig.inputs_length=128",
          "--gin.DataConfig.targets_length=8"]
  # The pretrained model's architecture: --preset / --model as in pretraining.
  model = [f for f in scale_bindings(args) if f.startswith("--gin.model_config.")]
  model += [f"--gin_file={args.model}"] if args.model else []
  if main(["train", "--gin_file=demo/finetune_cpu.gin", f"--gin_file=tasks/{task}.gin",
           f"--run_dir={ft_dir}", f"--gin.train.init_checkpoint='{run_dir}'", *data, *model,
           f"--gin.TrainConfig.num_steps={finetune_steps}",
           "--gin.TrainConfig.eval_every=0", "--gin.train.show_examples=0",
           f"--gin.CheckpointConfig.every_steps={finetune_steps}"]) != 0:
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


def sitting_inputs(task: dict | None) -> dict:
  """{sitting's corpus hash, task hash, CPU}: the inputs a row's numbers depend on."""
  from t5jax.data import corpus as corpus_lib
  import platform
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  out = {"corpus": corpus_lib.fingerprint_files(corpus_lib.default_corpus()), "cpu": cpu}
  if task is not None:
    out["task"] = corpus_lib.fingerprint_files([task["train"], task["validation"]])
  return out


# --task: the offline downstream tasks (t5jax.data.downstream) and their default sizes.
TASKS = {"docstring_package": {"train": 64, "validation": 64},  # per class (8 classes)
         "next_sentence": {"train": 128, "validation": 2000},   # in all (2 answers)
         "cloze": {"train": 128, "validation": 2000},           # in all (a word to fill)
         "context_cloze": {"train": 128, "validation": 2000}}   # in all (a word of the context)


def package_task(args) -> dict:
  """The offline downstream task of --task (t5jax.data.downstream), built once under
  --task_dir."""
  from t5jax.data import downstream as downstream_lib
  builders = {"next_sentence": downstream_lib.build_next_sentence_task,
              "cloze": downstream_lib.build_cloze_task,
              "context_cloze": downstream_lib.build_context_cloze_task}
  if args.task in builders:
    return builders[args.task](args.task_dir, train=args.task_train,
                               validation=args.task_validation)
  return downstream_lib.build_package_task(
      args.task_dir, num_classes=args.task_classes, train_per_class=args.task_train,
      validation_per_class=args.task_validation)


def describe_task(task: dict) -> str:
  """One sentence for results.md: what the task asks and its sizes."""
  sizes = (f"{task['counts']['train']} training and {task['counts']['validation']} "
           "validation examples")
  if task.get("task") == "cloze":
    return ("the word left out of a sentence of a held-out document (given the sentence "
            "before it; a content word found nowhere else in the input), " + sizes + ".")
  if task.get("task") == "context_cloze":
    return ("the word left out of a sentence of a held-out document, given up to three "
            "sentences before it that contain the word (LAMBADA / CBT style), " + sizes + ".")
  if task.get("task") == "next_sentence":
    return ("which of two sentences follows a sentence of a held-out document (the other "
            "comes from another package's document), " + sizes + ", balanced.")
  return (f"which of {len(task['classes'])} packages ({', '.join(task['classes'])}) a "
          f"held-out docstring comes from, " + sizes + ", balanced.")


def package_downstream(init_dir: str | None, ft_dir: str, seed: int, task: dict,
                       args) -> dict:
  """Finetunes init_dir (None: random init, the floor) on the docstring_package task with
  experiments/finetune/docstring_package.gin, then scores every validation example by
  exact match (`t5jax eval`). Returns {"accuracy", "finetune_s"}."""
  from t5jax.cli import main
  if os.path.exists(ft_dir) and not args.resume:
    shutil.rmtree(ft_dir)
  pairs = [f"--gin.DataConfig.pairs_train='{task['train']}'",
           f"--gin.DataConfig.pairs_validation='{task['validation']}'"]
  model = [f for f in scale_bindings(args) if f.startswith("--gin.model_config.")]
  model += [f"--gin_file={args.model}"] if args.model else []
  init = [f"--gin.train.init_checkpoint='{init_dir}'"] if init_dir else []
  steps = [f"--gin.TrainConfig.num_steps={args.finetune_steps}",
           f"--gin.CheckpointConfig.every_steps={args.finetune_steps}"
           ] if args.finetune_steps else []
  if args.finetune_batch:
    steps.append(f"--gin.TrainConfig.batch_size={args.finetune_batch}")
  start = time.perf_counter()
  pairs += pipeline_bindings(args)
  argv = ["train", "--gin_search_paths=" + HERE, "--gin_file=finetune/docstring_package.gin",
          f"--run_dir={ft_dir}", *init, *pairs, *model, *steps,
          f"--gin.TrainConfig.seed={seed}", f"--gin.DataConfig.seed={seed}",
          *[f"--gin.{b}" for b in args.gin if b.startswith(("TrainConfig.compiler",
                                                             "TrainConfig.peak"))]]
  print(f"\n--- finetune: t5jax {' '.join(argv)}", flush=True)
  if main(argv) != 0:
    raise RuntimeError(f"finetuning {init_dir or 'a random init'} on the package task failed")
  check_finished(ft_dir)
  if main(["eval", "--gin_search_paths=" + HERE, "--gin_file=finetune/docstring_package.gin",
           "--gin_file=runs/eval.gin", f"--checkpoint={ft_dir}", *pairs,
           "--gin.DataConfig.inputs_length=128", "--gin.DataConfig.targets_length=8",
           "--gin.DecodeConfig.max_decode_length=8"]) != 0:
    raise RuntimeError(f"evaluating {ft_dir} on the package task failed")
  with open(os.path.join(ft_dir, "eval.jsonl")) as f:
    metrics = json.loads(f.readlines()[-1])
  return {"accuracy": metrics["eval/local_pairs/exact_match"] / 100,
          "finetune_s": time.perf_counter() - start}


def run_dir_of(name: str, seed: int, args) -> str:
  return os.path.join(args.run_root, name if seed == 0 else f"{name}-seed{seed}")


def run_floor(seed: int, task: dict, args) -> dict:
  """The paper's "no pretraining" row: the same finetuning from random init."""
  ft_dir = os.path.join(run_dir_of(FLOOR, seed, args), args.task)
  print(f"\n=== {FLOOR} (seed {seed})", flush=True)
  row = {"config": FLOOR, "seed": seed, "objective": "-", "group": "floor"}
  row["package"] = package_downstream(None, ft_dir, seed, task, args)
  return row


def run_one(name: str, seed: int, task: dict | None, args) -> dict:
  from t5jax.cli import main
  run_dir = run_dir_of(name, seed, args)
  if os.path.exists(run_dir) and not args.resume:
    shutil.rmtree(run_dir)
  argv = train_args(name, run_dir, args) + [f"--gin.TrainConfig.seed={seed}",
                                             f"--gin.DataConfig.seed={seed}"]
  print(f"\n=== {name} (seed {seed}): t5jax {' '.join(argv)}", flush=True)
  start = time.perf_counter()
  if main(argv) != 0:
    raise RuntimeError(f"t5jax {' '.join(argv)} failed")
  seconds = time.perf_counter() - start
  check_finished(run_dir)
  records = read_metrics(run_dir)
  train = [r for r in records if "loss" in r]
  steps = max((r["step"] for r in train), default=0)
  tail = [r["loss"] for r in train if r["step"] > 0.8 * steps] or [train[-1]["loss"]]
  data = bound_data_config(run_dir)
  row = {
      "config": name, "seed": seed, "objective": data["objective"],
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
  if task is not None:
    row["package"] = package_downstream(run_dir, os.path.join(run_dir, args.task),
                                        seed, task, args)
  if args.data_dir:
    row["downstream"] = downstream(run_dir, args)
  return row


def summarise(rows: list[dict]) -> list[dict]:
  """One entry per config (in first-run order): downstream accuracy over its seeds (mean,
  spread), its difference from the baseline's mean, whether that difference is at least
  twice the baseline's spread, and the paper's figures and verdict."""
  by_config: dict[str, list[dict]] = {}
  for r in rows:
    by_config.setdefault(r["config"], []).append(r)
  acc = lambda rs: [r["package"]["accuracy"] for r in rs if r.get("package")]
  base = acc(by_config.get(BASELINE, []))
  base_mean = statistics.fmean(base) if base else None
  noise = spread(base)
  out = []
  for name, rs in by_config.items():
    values = acc(rs)
    entry = {"config": name, "seeds": sorted(r.get("seed", 0) for r in rs), "accuracy": values,
             "mean": statistics.fmean(values) if values else None, "spread": spread(values),
             "eval_loss": statistics.fmean(r["eval_loss"] for r in rs) if "eval_loss" in rs[0]
             else None, "paper": PAPER.get(name), "paper_delta": paper_delta(name)}
    if values and base_mean is not None and name != BASELINE:
      delta = entry["mean"] - base_mean
      judged = row_noise(noise, entry["spread"])
      entry.update(delta=delta, distinguishable=distinguishable(delta, judged),
                   direction=direction(delta, (entry["paper_delta"] or (None,))[0], judged)
                   # the paper's no-pretraining row is far below its baseline (Table 1)
                   if name != FLOOR else direction(delta, -1.0, judged))
    out.append(entry)
  return out


# ----------------------------------------------------------------------------
# Outputs.

def _fmt(x, spec=".3f"):
  return "" if x is None else format(x, spec)


def _pct(x):
  return "" if x is None else f"{100 * x:.1f}"


def floor_check(summary: list[dict]) -> str | None:
  """The protocol's sanity check, as a sentence: does pretraining (the baseline) beat no
  pretraining by more than 3x the larger of their two seed spreads?"""
  by = {e["config"]: e for e in summary}
  base, floor = by.get(BASELINE), by.get(FLOOR)
  if not base or not floor or base["spread"] is None or floor["spread"] is None:
    return None
  gap, need = base["mean"] - floor["mean"], 3 * max(base["spread"], floor["spread"])
  return (f"**Floor check: {'cleared' if gap > need else 'not cleared'}.** {BASELINE} "
          f"minus {FLOOR}: {100 * gap:+.1f} points, against 3 x the larger seed spread = "
          f"{100 * need:.1f} points" + ("." if gap > need else
                                        ": until it is, no row of this table says anything about the paper."))


def downstream_table(rows: list[dict], meta: dict) -> list[str]:
  """The paper's protocol: downstream accuracy per config, its seed spread, the difference
  from the baseline, and the paper's figures with the verdict."""
  summary = summarise(rows)
  base = next((e for e in summary if e["config"] == BASELINE), None)
  noise = base and base["spread"]
  task = meta.get("task", {})
  lines = [
      f"## Downstream: finetuned on {task.get('name', 'docstring_package')}, scored by exact "
      "match", "",
      f"Task: {task.get('description', 'docstring_package')} "
      + (f"Chance: {_pct(task['chance'])}%. " if task.get("chance") is not None else "")
      + f"Baseline ({BASELINE}): "
      + (f"{_pct(base['mean'])}% over {len(base['accuracy'])} seeds, spread (sample s.d.) "
         f"{_pct(noise)} points. A difference counts (`>= 2x spread`) at twice the larger "
         "of the baseline's spread and the row's own (rows of 2 or more seeds): at least "
         f"{_pct(2 * noise)} points, more for a noisier row." if base and noise is not None else
         "fewer than 2 seeds, so no spread: run it with --seeds 3."), "",
      "| config | paper row | seeds | accuracy % (mean ± s.d.) | vs baseline | >= 2x spread "
      "| paper GLUE / SGLUE | paper vs its reference | direction |",
      "|---|---|---:|---:|---:|---|---:|---:|---|"]
  for e in summary:
    paper = e["paper"]
    pd = e["paper_delta"]
    mean = "" if e["mean"] is None else (
        _pct(e["mean"]) + ("" if e["spread"] is None else f" ± {_pct(e['spread'])}"))
    delta = "" if "delta" not in e else f"{100 * e['delta']:+.1f}"
    dist = {None: "", True: "yes", False: "no"}[e.get("distinguishable")]
    cells = [e["config"], f"{paper[0]} {paper[1]}" if paper else
             ("Table 1 no pre-training" if e["config"] == FLOOR else "-"),
             str(len(e["seeds"])), mean, delta, dist,
             f"{paper[2]:.2f} / {paper[3]:.2f}" if paper else "",
             f"{pd[0]:+.2f} / {pd[1]:+.2f}" if pd else ("reference" if e["config"] == BASELINE
                                                      else ""),
             e.get("direction", "")]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", floor_check(summary)] if floor_check(summary) else []
  lines += ["", "`paper vs its reference`: the paper's GLUE / SuperGLUE averages minus those "
            "of the row it is compared with (Table 7's mean span 3, T5's span corruption; "
            "Table 6's 15% for the rates). `direction`: whether our difference from the "
            "baseline has the sign of the paper's GLUE difference, once it is at least twice "
            "that spread; `within our noise` otherwise. The floor is compared with the paper's "
            "finding that pretraining helps.", ""]
  return lines


def markdown(rows: list[dict], meta: dict, notes: str | None) -> str:
  span = lambda r: (f"{r['mean_noise_span_length']:g}" if r["objective"] == "span_corruption"
                    else "-")
  noise = lambda r: ("-" if r["objective"] in ("prefix_lm", "deshuffling", "ul2")
                     else f"{100 * r['noise_density']:g}%")
  pretrained = [r for r in rows if r["config"] != FLOOR]
  glue = any(r.get("downstream") for r in pretrained)
  package = any(r.get("package") for r in rows)
  head = ("| config | seed | objective | noise | span | steps | targets len | train loss "
          "| eval loss | eval token acc | group | time |")
  lines = [head + (" package acc % |" if package else "") + (" glue |" if glue else ""),
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
           + ("---:|" if package else "") + ("---|" if glue else "")]
  for r in pretrained:
    cells = [r["config"], str(r.get("seed", 0)), r["objective"], noise(r), span(r),
             str(r["steps"]), f"{r['targets_length']} ({r['target_tokens_per_row']:.0f})",
             _fmt(r["train_loss"]), _fmt(r["eval_loss"]), _fmt(r["eval_accuracy"]), r["group"],
             f"{r['wall_s']:.0f} s"]
    if package:
      cells.append(_pct(r.get("package", {}).get("accuracy")))
    if glue:
      cells.append(", ".join(f"{k} {v:.3f}" for k, v in r.get("downstream", {}).items()))
    lines.append("| " + " | ".join(cells) + " |")
  out = [f"# T5 objective ablations: {meta['name']}", "",
         "Reproduce (from the repository root):", "", "```", meta["command"], "```", "",
         f"Scale: {meta.get('scale', '-')}. Machine: {meta['machine']}. "
         f"Total wall time {meta['total_s'] / 60:.1f} min"
         + (f" over {meta['sittings']} sittings (--resume)" if meta.get("sittings", 1) > 1
            else "") + ".", ""]
  if package:
    out += downstream_table(rows, meta)
  out += ["## Pretraining", "",
          "Columns: `targets len` is the configured targets_length (mean target tokens per "
          "packed row in brackets); `train loss` is the mean logged training loss over the last "
          "20% of steps; `eval loss` / `eval token acc` are teacher-forced, per target token, on "
          f"{meta.get('eval_rows', '-')} rows of the validation documents after the last step; "
          "`time` is the wall time of the pretraining run (startup, compilation and evals "
          "included)" + ("; `package acc` is the run's downstream accuracy." if package
                         else "."), "",
          *lines, "", "![downstream accuracy and validation loss per config](results.png)", "",
          CAVEAT, ""]
  if not glue:
    out += ["No GLUE scores: run with `--data_dir DIR` holding TFDS GLUE data "
            "(`tfds build glue/sst2 --data_dir=DIR`) to finetune each model on SST-2 as well "
            "and add a `glue` column.", ""]
  if notes:
    out += [notes.strip(), ""]
  return "\n".join(out)


def plot(rows: list[dict], path: str, title: str, chance: float | None = None,
         task_name: str = "docstring_package") -> None:
  """Writes the figure to path; nothing without matplotlib (accelerator images lack it:
  render it later with --render_only)."""
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    print(f"No matplotlib here: {path} not drawn (--render_only draws it elsewhere)")
    return
  colors = {}
  palette = plt.get_cmap("tab10").colors
  color = lambda g: colors.setdefault(g, palette[len(colors) % len(palette)])
  fig, (ax_bar, ax_curve) = plt.subplots(1, 2, figsize=(13, 4.8))
  pretrained = [r for r in rows if r["config"] != FLOOR]
  summary = [e for e in summarise(rows) if e["mean"] is not None]
  if summary:  # downstream accuracy, error bars = seed spread
    names = [e["config"].replace("objective_", "") for e in summary]
    group = {r["config"]: r["group"] for r in rows}
    means = [100 * e["mean"] for e in summary]
    errs = [100 * (e["spread"] or 0) for e in summary]
    ax_bar.bar(range(len(summary)), means, yerr=errs, capsize=3,
               color=[color(group[e["config"]]) for e in summary])
    base = next((e for e in summary if e["config"] == BASELINE), None)
    if base and base["spread"]:
      lo, hi = 100 * (base["mean"] - 2 * base["spread"]), 100 * (base["mean"] + 2 * base["spread"])
      ax_bar.axhspan(lo, hi, color="grey", alpha=0.2, label="baseline ± 2 s.d.")
    if chance:
      ax_bar.axhline(100 * chance, color="black", ls=":", label=f"chance {100 * chance:.1f}%")
    for i, (m, e) in enumerate(zip(means, summary)):
      ax_bar.text(i, m, f"{m:.1f}\n(n={len(e['accuracy'])})", ha="center", va="bottom",
                  fontsize=7)
    ax_bar.set_ylabel(f"{task_name} accuracy % (mean over seeds)")
    ax_bar.set_title("downstream accuracy after finetuning (bars: s.d. over seeds)")
  else:
    names = [r["config"].replace("objective_", "") for r in pretrained]
    ax_bar.bar(range(len(pretrained)), [r["eval_loss"] for r in pretrained],
               color=[color(r["group"]) for r in pretrained])
    for i, r in enumerate(pretrained):
      ax_bar.text(i, r["eval_loss"], f"{r['eval_loss']:.2f}", ha="center", va="bottom",
                  fontsize=7)
    ax_bar.set_ylabel("final validation loss (per target token)")
    ax_bar.set_title("final validation loss (colour: comparable group)")
  ax_bar.set_xticks(range(len(names)), names, rotation=45, ha="right")
  from matplotlib.patches import Patch
  handles = [Patch(color=c, label=g) for g, c in colors.items()]
  ax_bar.legend(handles=handles + ax_bar.get_legend_handles_labels()[0], fontsize=7,
                loc="lower right")
  line_colors = plt.get_cmap("tab20").colors
  for i, r in enumerate(pretrained):
    curve = r["eval_curve"]
    if curve:
      style = "-" if r["group"] == "span" else "--"
      label = r["config"].replace("objective_", "") + (f" s{r['seed']}" if r.get("seed") else "")
      ax_curve.plot(*zip(*curve), style, marker=".", label=label,
                    color=line_colors[i % len(line_colors)])
  ax_curve.set_xlabel("step")
  ax_curve.set_ylabel("validation loss")
  ax_curve.set_title("pretraining validation loss (dashed: not comparable)")
  ax_curve.legend(fontsize=6, ncol=2)
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
  plot(rows, os.path.join(out, "results.png"), f"T5 objective ablations: {meta['name']}",
       meta.get("task", {}).get("chance"), meta.get("task", {}).get("name", "docstring_package"))


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
                 help="continue in --out: runs already in its results.json are kept and not "
                      "rerun, new ones are added (a set split over sittings); run directories "
                      "are kept")
  p.add_argument("--seeds", type=int, default=3,
                 help=f"seeds of the baseline ({BASELINE}) and of the floor: their spread "
                      "says which differences are real (other configs: seed 0, unless in "
                      "--seeded)")
  p.add_argument("--seeded", default="",
                 help="comma-separated configs that also run --seeds seeds (e.g. one whose "
                      "difference from the baseline should be checked), or 'all'")
  p.add_argument("--no_downstream", action="store_true",
                 help="pretraining losses only (no docstring_package finetuning)")
  p.add_argument("--no_floor", action="store_true",
                 help=f"skip the {FLOOR} rows (finetuning from random init)")
  p.add_argument("--task", choices=sorted(TASKS), default=None,
                 help="the offline downstream task (t5jax/data/downstream.py): "
                      "docstring_package (8 packages; the committed tables) or next_sentence "
                      "(which of two sentences follows), cloze (the word left out) or "
                      "context_cloze (the word left out, found in the sentences before), all "
                      "with few labels and a large validation set (default: "
                      "docstring_package; --profile gpu: context_cloze)")
  p.add_argument("--task_dir", help="where the task is built (default runs/ablations/<task>)")
  p.add_argument("--task_classes", type=int, default=8, help="docstring_package's classes")
  p.add_argument("--task_train", type=int, default=None,
                 help="training examples: per class for docstring_package (default 64), in "
                      "all for next_sentence (default 128)")
  p.add_argument("--task_validation", type=int, default=None,
                 help="validation examples, as --task_train (defaults 64 per class; 2000)")
  p.add_argument("--finetune_steps", type=int, default=None,
                 help="finetuning steps (default: finetune/docstring_package.gin's; GLUE: 200)")
  p.add_argument("--finetune_batch", type=int, default=None)
  p.add_argument("--data_dir", help="TFDS data_dir with GLUE: adds GLUE scores as well")
  p.add_argument("--glue_task", default="sst2")
  p.add_argument("--glue_examples", type=int, default=None,
                 help="validation examples to score (default: all)")
  p.add_argument("--render_only", action="store_true",
                 help="rewrite results.md/png from --out/results.json (e.g. after editing notes.md)")
  p.add_argument("--pipeline", choices=("seqio", "grain"), default=None,
                 help="input pipeline of pretraining and the package task: 'grain' needs no "
                      "TensorFlow (DataConfig.pipeline; GLUE scores stay on seqio; default "
                      "seqio, --profile gpu: grain)")
  p.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                 help="cpu: the demo model at base.gin's scale (the committed tables); gpu: "
                      "T5.1.1-small widths, bf16, scanned, grain, 3000 x 128 pretraining, "
                      "600 x 64 finetuning on context_cloze, for one H100/H200 (PROFILES); "
                      "explicit flags win, --smoke shrinks it for a CPU dry run")
  p.add_argument("--smoke", action="store_true",
                 help="tiny and fast: 2 steps, batch 8, 1 eval batch, the tiny preset")
  args = p.parse_args(argv)
  if args.smoke:
    args.steps = args.steps or 2
    args.batch_size = args.batch_size or 8  # divisible by the 8 simulated devices of tests/
    args.eval_batches = args.eval_batches or 1
    args.preset = args.preset or "tiny"
    args.finetune_steps = args.finetune_steps or 2
    args.finetune_batch = args.finetune_batch or 8
    args.glue_examples = args.glue_examples or 8
    # Compile fast and skip the matmul that measures peak FLOP/s (only MFU uses it).
    args.gin = [*SMOKE_GIN, *args.gin]
  apply_profile(args)
  name = args.configs.replace(",", "+") if args.configs else args.set
  args.out = args.out or os.path.join(HERE, "results", name)
  args.run_root = args.run_root or os.path.join(
      REPO, "runs", "ablations", os.path.basename(os.path.normpath(args.out)))
  args.task_dir = args.task_dir or os.path.join(REPO, "runs", "ablations", args.task)
  args.task_train = args.task_train or TASKS[args.task]["train"]
  args.task_validation = args.task_validation or TASKS[args.task]["validation"]
  return args


def apply_profile(args) -> None:
  """Fills the flags left unset from --profile (explicit flags and --smoke's shrunk shapes
  win); its gin bindings go before --gin's, so a later --gin overrides them."""
  profile = PROFILES[args.profile]
  for key, value in profile.items():
    if key != "gin" and getattr(args, key, None) is None:
      setattr(args, key, value)
  args.gin = [*profile.get("gin", []), *args.gin]
  args.task = args.task or "docstring_package"
  args.pipeline = args.pipeline or "seqio"


def planned_runs(names: list[str], args) -> list[tuple[str, int]]:
  """(config, seed) of every run: seed 0 for each config, --seeds for the baseline, the
  floor (only with the downstream task; `--configs no_pretraining` alone: only the floor)
  and the configs in --seeded."""
  seeded = {BASELINE, *filter(None, args.seeded.split(","))}
  runs = []
  for name in names:
    if name == FLOOR:
      continue
    for seed in range(args.seeds if name in seeded or "all" in seeded else 1):
      runs.append((name, seed))
  if FLOOR in names or (not args.no_downstream and not args.no_floor):
    runs += [(FLOOR, seed) for seed in range(args.seeds)]
  return runs


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
  saved = {"rows": [], "meta": {}}
  results_path = os.path.join(args.out, "results.json")
  if args.resume and os.path.exists(results_path):
    with open(results_path) as f:
      saved = json.load(f)
  recipe = {"pretraining": [f for f in scale_bindings(args) if "seed" not in f],
            "finetuning": [args.finetune_steps, args.finetune_batch, args.task_classes,
                           args.task_train, args.task_validation]
            + ([args.task] if args.task != "docstring_package" else [])}
  if saved["meta"].get("recipe", recipe) != recipe:
    raise SystemExit(
        f"{results_path} was run with another scale or recipe ({saved['meta']['recipe']}, "
        f"now {recipe}): rows of the two would not compare. Use another --out, or the same "
        "--steps / --batch_size / --preset / --model / --gin / --finetune_* / --task_* flags.")
  done = {(r["config"], r.get("seed", 0)) for r in saved["rows"]}
  rows = list(saved["rows"])
  task = None
  if not args.no_downstream:
    task = package_task(args)
    classes = f" of {len(task['classes'])} classes ({', '.join(task['classes'])})" \
        if task["classes"] else ""
    print(f"{args.task}: {task['counts']} examples{classes} in {args.task_dir}", flush=True)
  import platform
  meta = dict(saved["meta"])
  commands = meta.get("commands", [meta["command"]] if "command" in meta else [])
  command = ".venv/bin/python experiments/run_ablations.py " + shlex.join(argv)
  meta.update(
      name=os.path.basename(os.path.normpath(args.out)),
      commands=commands + [command],
      command=" &&\n".join(commands + [command]),
      machine=f"{platform.machine()}, {os.cpu_count()} CPU cores ({platform.platform()})",
      sittings=len(commands) + 1, recipe=recipe)
  # What each sitting read, so rows merged from different machines can be checked: a
  # content hash of the pretraining corpus and of the downstream task's files.
  meta["inputs"] = list(meta.get("inputs", [])) + [sitting_inputs(task)]
  if task is not None:
    meta["task"] = {
        "name": args.task, "description": describe_task(task),
        "classes": task["classes"], "chance": task["chance"], "counts": task["counts"]}
  start = time.perf_counter()
  previous_s = meta.get("total_s", 0.0)
  for name, seed in planned_runs(names, args):
    if (name, seed) in done:
      print(f"=== {name} (seed {seed}): in {results_path} already, kept", flush=True)
      continue
    row = run_floor(seed, task, args) if name == FLOOR else run_one(name, seed, task, args)
    rows.append(row)
    pretrained = [r for r in rows if r["config"] != FLOOR]
    if pretrained:
      first = pretrained[0]
      meta.update(
          scale=(f"{first['steps']} steps x batch {first['batch_size']}, inputs "
                 f"{first['inputs_length']} packed, model "
                 f"{args.preset or 'demo/model_cpu.gin (d_model 128, 2+2 layers, 8k vocab)'}"
                 + (f" + {args.model}" if args.model else "")),
          eval_rows=f"{first['eval_batches']} x {first['batch_size']}")
    meta["total_s"] = previous_s + time.perf_counter() - start
    meta["configs"] = list(dict.fromkeys(r["config"] for r in rows))
    write_results(rows, meta, args.out)  # after every run: a stopped sitting keeps its rows
  print(f"\nWrote {args.out}/results.md, results.png, results.json "
        f"({meta['total_s'] / 60:.1f} min in all)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
