#!/usr/bin/env bash
# The GPU check: one command, run from the repository root on a GPU machine, that finishes in
# under 8 minutes on one H100/H200 and writes everything it measures into --out DIR.
#
#   bash benchmarks/gpu_check.sh --out DIR                # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run --out DIR  # every step on CPU, shapes shrunk
#
# It uses that machine's Python (python3, or $PYTHON): jax, flax, optax, orbax, torch and
# transformers, and no TensorFlow, seqio, tfds or gin. pytest is installed from ./.wheels when
# it is missing (`make gpu-wheels` fills that folder here; carry it along). Steps, each logged
# to DIR/<step>.log, with its exit status in DIR/summary.txt (a failing step does not stop the
# others; the script exits 1 if any failed):
#   devices    jax, the devices, nvidia-smi
#   tests      the TF-free tests that matter on an accelerator: HF parity of the model and of
#              decoding (transformers as the reference), both kernel paths agree, remat saves
#              what it says, fused attention equals the explicit one, sharded equals single
#              device (only with 8 or more devices)
#   train      benchmarks/bench_train.py --gpu: t5.1.1-base, batch 128, 512/114, bf16, against
#              HF PyTorch's T5 on the same GPU; step time, tokens/s, MFU against the dense bf16
#              peak (989 TFLOP/s on H100/H200), peak device memory
#   memory     benchmarks/memory_estimate.py --no_calibrate: the state bytes to set beside it
#   decode     benchmarks/bench_decode.py: bf16 greedy and beam-4, t5.1.1-base, batch 32,
#              512 -> 64, against HF generate on the GPU
# Each step has a time limit (rc 124 past it) so that the whole stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."

out="" dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --cpu-dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --out DIR [--cpu-dry-run])" >&2; exit 2 ;;
  esac
done
if [ -z "$out" ]; then
  echo "gpu_check.sh: --out DIR is required (where the logs and summary.txt go)" >&2
  exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
: > "$out/summary.txt"

if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
elif [ "$dry" = 1 ] && [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export USE_TF=0 TF_CPP_MIN_LOG_LEVEL=3 HF_HUB_OFFLINE=1
if [ "$dry" = 1 ]; then
  export JAX_PLATFORMS=cpu
else
  # tests/conftest.py defaults JAX_PLATFORMS to cpu for the test machine: not here.
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.8}"  # torch too
fi

failed=0
step() {  # step NAME SECONDS COMMAND...: runs it (killed past SECONDS: rc 124), logs it,
  # records its status, goes on
  local name="$1" limit="$2"; shift 2
  [ "$dry" = 1 ] && limit=900
  local start=$SECONDS
  echo "== $name (at most ${limit}s): $*"
  # bash -c: the steps that are functions here (exported below) run under timeout too
  timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$out/summary.txt"
  [ "$rc" = 0 ] || failed=1
}

devices() {
  "$py" - <<'EOF'
import platform, jax
print("python", platform.python_version(), "jax", jax.__version__, "backend", jax.default_backend())
for d in jax.devices():
  print(d, getattr(d, "device_kind", ""), (d.memory_stats() or {}).get("bytes_limit", ""))
for name in ("flax", "optax", "orbax.checkpoint", "torch", "transformers", "peft", "pytest"):
  try:
    print(name, __import__(name, fromlist=["_"]).__version__)
  except Exception as e:  # noqa: BLE001
    print(name, "missing:", type(e).__name__)
EOF
  if command -v nvidia-smi > /dev/null; then nvidia-smi; fi
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
  "$py" -m pytest -q -p no:cacheprovider -x --durations=10 "${files[@]}" "${select[@]}"
}

if [ "$dry" = 1 ]; then
  # No HF peers, no int8 rows, fast compiles: the dry run checks that the steps run;
  # tests/test_bench.py runs the peers' and the int8 rows' code.
  train_args=(--presets tiny --batch 2 --input_len 32 --target_len 8 --dtype bfloat16
              --steps 1 --repeats 1 --warmup 1 --peak_n 256 --fast_compile --no_hf --no_write)
  decode_args=(--no_ct2 --no_hf --no_int8 --preset tiny --batch 2 --input_len 16 --new_tokens 4
               --repeats 1 --dtype float32)
  memory_args=(--no_calibrate --inputs 32 --targets 8 --presets t5.1.1-small,t5.1.1-base)
else
  train_args=(--gpu --no_hf_flax --steps 5 --repeats 3 --no_write)
  decode_args=(--no_ct2 --preset t5.1.1-base --batch 32 --input_len 512 --new_tokens 64 --repeats 2
               --dtype bfloat16)
  # T5.1.0 / T5.1.1 only: ~1.5 s a preset, and the whole table would pass the step's limit
  memory_args=(--no_calibrate --presets "$(printf '%s,' t5.1.0-{small,base,large,3b,11b} \
               t5.1.1-{small,base,large,xl,xxl} | sed 's/,$//')")
fi

export py dry
export -f devices tests
# Limits: 460 s in all on the GPU, under the 8 minutes one device call may take.
step devices 20 devices
step tests 190 tests
step train 150 "$py" benchmarks/bench_train.py "${train_args[@]}"
step memory 30 "$py" benchmarks/memory_estimate.py "${memory_args[@]}"
step decode 70 "$py" benchmarks/bench_decode.py "${decode_args[@]}"
echo "== summary ($out/summary.txt)"
cat "$out/summary.txt"
exit "$failed"
