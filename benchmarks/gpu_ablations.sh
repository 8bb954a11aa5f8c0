#!/usr/bin/env bash
# The T5 ablations at GPU scale (experiments/run_ablations.py --profile gpu: T5.1.1-small
# widths, bf16, scanned, grain, context_cloze downstream) on one H100/H200, from the repository
# root, under a time limit, every row written to --out DIR/results.{json,md} as it ends.
#
#   bash benchmarks/gpu_ablations.sh --out DIR [-- RUN_ABLATIONS_FLAGS...]  # on the GPU
#   bash benchmarks/gpu_ablations.sh --cpu-dry-run --out DIR                # --smoke here
#
# Flags after `--` go to run_ablations.py, e.g. `-- --configs objective_span_corruption
# --seeds 1 --no_floor` (the baseline) or `-- --configs no_pretraining --seeds 1` (the
# floor); default: the baseline, seed 0, no floor. T5JAX_ABLATION_LIMIT (seconds, default
# 540) bounds the whole command. Like gpu_pretrain.sh it installs gin-config and grain from
# .wheels/ (`make gpu-wheels`) where they are missing; no TensorFlow anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_args.sh
rest=()
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--" ]; then rest=("${@:i+1}"); set -- "${@:1:i-1}"; break; fi
done
gpu_args 2,12 "$@"
gpu_wheels || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 T5JAX_NO_HUGEPAGES=1
[ ${#rest[@]} -gt 0 ] || rest=(--configs objective_span_corruption --seeds 1 --no_floor)
flags=(experiments/run_ablations.py --profile gpu --out "$out/results"
       --run_root "$out/runs" "${rest[@]}")
limit="${T5JAX_ABLATION_LIMIT:-540}"
if [ "$dry" = 1 ]; then
  export JAX_PLATFORMS=cpu
  flags+=(--smoke --steps 2)
else
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
fi
start=$SECONDS
timeout --kill-after=10 "$limit" "$py" "${flags[@]}" > "$out/ablations.log" 2>&1
rc=$?
tail -n 30 "$out/ablations.log"
echo "ablations rc=$rc $((SECONDS - start))s (limit ${limit}s)" | tee "$out/summary.txt"
exit "$rc"
