#!/usr/bin/env bash
# The GPU demo end to end: `t5jax train --gin_file=demo/pretrain_gpu.gin` (T5.1.1-small,
# default corpus, grain, bf16) on one H100/H200, from the repository root, under a
# 10-minute limit, its output streamed to --out DIR/pretrain.log and the run directory's
# metrics.jsonl copied there at the end.
#
#   bash benchmarks/gpu_pretrain.sh --out DIR                # on the GPU machine
#   bash benchmarks/gpu_pretrain.sh --cpu-dry-run --out DIR  # the same command on CPU,
#                                                            # shrunk to a tiny model
#
# The GPU image has jax, flax, optax, orbax, sentencepiece, but not gin-config, grain and
# grain's array_record, portpicker, cloudpickle: `make gpu-wheels` puts them (~5 MB, for
# Python 3.12) in .wheels/, carried along, and this script installs them into /tmp/site
# when they are missing. No TensorFlow anywhere.
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_args.sh
gpu_args 2,15 "$@"
gpu_wheels || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 T5JAX_NO_HUGEPAGES=1
run_dir="$out/run"
flags=(train --gin_file=demo/pretrain_gpu.gin --run_dir="$run_dir")
limit=600
if [ "$dry" = 1 ]; then
  export JAX_PLATFORMS=cpu
  flags+=(--gin.model_config.preset="'tiny'" --gin.model_config.dtype="'float32'"
          --gin.DataConfig.vocab_size=8000 --gin.model_config.vocab_size=8192
          --gin.DataConfig.inputs_length=64 --gin.DataConfig.targets_length=16
          --gin.TrainConfig.num_steps=6 --gin.TrainConfig.batch_size=8
          --gin.TrainConfig.log_every=2 --gin.TrainConfig.eval_every=3
          --gin.DataConfig.eval_batches=1 --gin.CheckpointConfig.every_steps=3)
else
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
fi
start=$SECONDS
timeout --kill-after=10 "$limit" "$py" -m t5jax "${flags[@]}" > "$out/pretrain.log" 2>&1
rc=$?
cp "$run_dir/metrics.jsonl" "$out/metrics.jsonl" 2> /dev/null
tail -n 30 "$out/pretrain.log"
echo "pretrain rc=$rc $((SECONDS - start))s (limit ${limit}s)" | tee "$out/summary.txt"
exit "$rc"
