"""Do an ablation's inputs/targets fit its configured lengths? Measures real examples.

    .venv/bin/python experiments/check_lengths.py                 # every ablation
    .venv/bin/python experiments/check_lengths.py rate_50 span_2  # some

For each experiments/ablations/<name>.gin it builds the configured task and
reads examples of the validation split *untrimmed* (targets length 100000;
inputs at the configured length, since the objective cuts its segments from
it), then prints the length distribution and how many examples the configured
inputs_length / targets_length would truncate (seqio's append_eos_after_trim
cuts silently). The numbers in the gin files' comments come from this.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ABLATIONS = os.path.join(HERE, "ablations")


def quiet_gin_search() -> None:
  """Hides gin's 'Path not found' for each search path it tries before the right one."""
  import logging
  logging.getLogger().addFilter(lambda r: "Path not found" not in r.getMessage())


def data_config(name: str):
  """The DataConfig that experiments/ablations/<name>.gin binds."""
  import gin
  from t5jax import gin_setup, run  # noqa: F401 (registers the gin configurables)
  gin.clear_config()
  gin_setup.parse([f"ablations/{name}.gin"], ["RUN_DIR = '/tmp/check_lengths'"],
                  search_paths=[HERE])
  try:
    return gin.get_configurable("t5jax.DataConfig")()
  finally:
    gin.clear_config()


def measure(name: str, num_examples: int = 2000, split: str | None = None) -> dict:
  """Length statistics of num_examples untrimmed validation examples of one ablation."""
  import seqio
  from t5jax import run
  data = data_config(name)
  _, task = run.prepare_task(data)
  ds = seqio.get_mixture_or_task(task).get_dataset(
      {"inputs": data.inputs_length, "targets": 100000}, split=split or data.eval_split,
      shuffle=False, seed=0)
  inputs, targets = [], []
  for ex in ds.take(num_examples).as_numpy_iterator():
    inputs.append(len(ex["inputs"]))
    targets.append(len(ex["targets"]))
  inputs, targets = np.array(inputs), np.array(targets)
  over = np.maximum(targets - data.targets_length, 0)
  return {
      "name": name, "objective": data.objective, "examples": len(targets),
      "inputs_length": data.inputs_length, "targets_length": data.targets_length,
      "inputs_max": int(inputs.max()), "targets_mean": float(targets.mean()),
      "targets_p99": float(np.percentile(targets, 99)), "targets_max": int(targets.max()),
      "inputs_truncated": int((inputs > data.inputs_length).sum()),
      "targets_truncated": int((over > 0).sum()),
      "target_tokens_lost": float(over.sum() / targets.sum()),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("names", nargs="*", help="ablation names (default: all)")
  parser.add_argument("--examples", type=int, default=2000)
  parser.add_argument("--split", default=None, help="default: the eval split (validation)")
  args = parser.parse_args(argv)
  quiet_gin_search()
  names = args.names or sorted(f[:-4] for f in os.listdir(ABLATIONS)
                               if f.endswith(".gin") and f != "base.gin")
  print("| config | objective | inputs max / length | targets mean / p99 / max | "
        "targets_length | truncated examples | target tokens lost |")
  print("|---|---|---|---|---|---|---|")
  for name in names:
    s = measure(name, args.examples, args.split)
    print(f"| {s['name']} | {s['objective']} | {s['inputs_max']} / {s['inputs_length']} | "
          f"{s['targets_mean']:.1f} / {s['targets_p99']:.0f} / {s['targets_max']} | "
          f"{s['targets_length']} | {s['targets_truncated']} of {s['examples']} | "
          f"{100 * s['target_tokens_lost']:.3f}% |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
