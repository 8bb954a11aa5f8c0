#!/usr/bin/env bash
# The GPU check: one command, run from the repository root on a GPU machine, that finishes in
# under 7 minutes on one H100/H200, compiles included, and always reports something.
#
#   bash benchmarks/gpu_check.sh --out DIR                # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run --out DIR  # every step on CPU, shapes shrunk
#
# It uses that machine's Python (python3, or $PYTHON): jax, flax, optax, orbax, torch and
# transformers, and no TensorFlow, seqio, tfds or gin. pytest is installed from ./.wheels when
# it is missing (`make gpu-wheels` fills that folder here; carry it along). Every step is its
# own process under its own time limit (rc 124 past it), writing DIR/<step>.log as it goes,
# its status appended to DIR/summary.txt as soon as it ends: a hang or an out-of-memory loses
# that step, not the check. The figures come first, the tests last:
#   devices    jax, the devices, the versions; nvidia-smi under its own 10 s limit
#   train      benchmarks/bench_train.py --gpu --no_hf: t5jax t5.1.1-base, batch 128, 512/114,
#              bf16, scanned layers; time to the first step (init + compile + warm-up), step
#              time, tokens/s, MFU against the measured bf16 matmul peak, peak memory
#   train_hf   the same shapes through HF PyTorch's T5 (bf16 autocast), in its own process
#   decode     benchmarks/bench_decode.py: bf16 greedy and beam-4, t5.1.1-base, batch 32,
#              512 -> 64, against HF generate on the GPU
#   compile    benchmarks/bench_compile.py: t5.1.1-base's init and train step (batch 8,
#              128/32) lowered and compiled: seconds and optimized HLO lines
#   memory     benchmarks/memory_estimate.py --no_calibrate: the state bytes to set beside it
#   tests      the TF-free tests that matter on an accelerator: HF parity of the model in
#              float32 (matmul_precision 'highest' keeps it at 1e-4 where XLA:GPU would run
#              TF32) and of decoding, both kernel paths agree, sharded equals single device
#              (with 8 or more devices)
# XLA_PYTHON_CLIENT_PREALLOCATE=false wherever JAX and PyTorch share the GPU. The CPU dry run
# keeps every step's real limit, so a step that would overrun fails there first.
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_args.sh
gpu_args 2,29 "$@"
: > "$out/summary.txt"

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export USE_TF=0 TF_CPP_MIN_LOG_LEVEL=3 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# Cold compiles, as on a fresh machine: a warm cache would hide what a first run costs
# (bench_compile.py has a cache row of its own).
export T5JAX_COMPILE_CACHE=0
unset JAX_COMPILATION_CACHE_DIR
if [ "$dry" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  # tests/conftest.py defaults JAX_PLATFORMS to cpu for the test machine: not here.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
fi

failed=0
step() {  # step NAME SECONDS COMMAND...: runs it (killed past SECONDS: rc 124), logs it as it
  # goes, appends its status to summary.txt, goes on. The dry run keeps the real limit.
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*"
  # bash -c: the steps that are functions here (exported below) run under timeout too
  timeout --kill-after=5 "$limit" bash -c '"$@"' "$name" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "$name rc=$rc $((SECONDS - start))s (limit ${limit}s)" | tee -a "$out/summary.txt"
  [ "$rc" = 0 ] || failed=1
}

shared() {  # COMMAND... with JAX and PyTorch on one GPU: JAX takes memory as it needs it
  XLA_PYTHON_CLIENT_PREALLOCATE=false "$@"
}

devices() {
  if command -v nvidia-smi > /dev/null; then
    timeout 10 nvidia-smi || echo "nvidia-smi: rc $? (10 s limit)"
  fi
  "$py" - <<'PYEOF'
import platform, time
start = time.perf_counter()
import jax
backend = jax.default_backend()
print("python", platform.python_version(), "jax", jax.__version__, "backend", backend,
      f"(import + backend start {time.perf_counter() - start:.1f} s)")
for d in jax.devices():
  print(d, getattr(d, "device_kind", ""), (d.memory_stats() or {}).get("bytes_limit", ""))
for name in ("flax", "optax", "orbax.checkpoint", "torch", "transformers", "peft", "pytest"):
  try:
    print(name, __import__(name, fromlist=["_"]).__version__)
  except Exception as e:  # noqa: BLE001
    print(name, "missing:", type(e).__name__)
PYEOF
}

tests() {
  if ! "$py" -c "import pytest" 2> /dev/null; then
    if [ -d .wheels ]; then
      "$py" -m pip install --quiet --no-index --find-links .wheels pytest || return 1
    else
      echo "pytest is missing and there is no .wheels folder (make gpu-wheels)"; return 1
    fi
  fi
  local files=(tests/test_conversion_hf.py tests/test_xla_cpu.py tests/test_decoding.py)
  local select=()
  if [ "$dry" = 1 ]; then  # one test of each kind: the dry run checks the step, not the code
    local hf="test_encoder_and_logits_match_hf and t5.1.1 and standard"
    select=(-k "$hf")  # the rest of these files runs in `make test` anyway
    files=(tests/test_conversion_hf.py)
  elif [ "$("$py" -c 'import jax; print(jax.device_count())')" -ge 8 ]; then
    files+=(tests/test_partitioning.py)
  else
    echo "fewer than 8 devices: tests/test_partitioning.py (sharded = single device) skipped"
  fi
  "$py" -m pytest -q -p no:cacheprovider --durations=10 "${files[@]}" "${select[@]}"
}

if [ "$dry" = 1 ]; then
  # Tiny shapes, no int8 rows, fast compiles: the dry run checks that each step runs, within
  # its real limit; tests/test_bench.py runs the peers' and the int8 rows' code.
  shape=(--batch 2 --input_len 32 --target_len 8)
  train_args=(--presets tiny "${shape[@]}" --dtype bfloat16 --steps 1 --repeats 1 --warmup 1
              --peak_n 256 --fast_compile --no_write)
  decode_args=(--no_ct2 --no_int8 --preset tiny --batch 2 --input_len 16 --new_tokens 4
               --repeats 1 --dtype float32)
  compile_args=(--presets t5.1.1-small --layouts scanned "${shape[@]}" --no_xxl --no_cache_row
                --no_init_sizes --no_write --limit 40)
  memory_args=(--no_calibrate --inputs 32 --targets 8 --presets t5.1.1-small,t5.1.1-base)
else
  train_args=(--gpu --steps 5 --repeats 3 --no_write)
  decode_args=(--no_ct2 --preset t5.1.1-base --batch 32 --input_len 512 --new_tokens 64
               --repeats 2 --dtype bfloat16)
  compile_args=(--presets t5.1.1-base --layouts scanned --no_xxl --no_cache_row --no_init_sizes
                --no_write --limit 40)
  # T5.1.0 / T5.1.1 only: ~1.5 s a preset, and the whole table would pass the step's limit
  memory_args=(--no_calibrate --presets "$(printf '%s,' t5.1.0-{small,base,large,3b,11b} \
               t5.1.1-{small,base,large,xl,xxl} | sed 's/,$//')")
fi

export py dry
export -f devices tests shared
# Limits: 420 s in all, the 7 minutes the whole check may take on one GPU.
step devices 25 devices
step train 90 "$py" benchmarks/bench_train.py "${train_args[@]}" --no_hf
# One HF row here (T5's Adafactor, eager attention); HF at its best (SDPA, fused AdamW,
# torch.compile) is `bench_train.py --gpu` run on its own: its compile alone passes this limit.
step train_hf 60 shared "$py" benchmarks/bench_train.py "${train_args[@]}" --no_t5jax \
  --no_hf_flax --hf_variants adafactor
step decode 90 shared "$py" benchmarks/bench_decode.py "${decode_args[@]}"
step compile 50 "$py" benchmarks/bench_compile.py "${compile_args[@]}"
step memory 20 "$py" benchmarks/memory_estimate.py "${memory_args[@]}"
step tests 85 shared tests
echo "== summary ($out/summary.txt)"
cat "$out/summary.txt"
exit "$failed"
