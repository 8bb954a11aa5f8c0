# Sourced by benchmarks/gpu_check.sh, gpu_pretrain.sh and gpu_ablations.sh: their shared
# command line, and the wheels the GPU image lacks.
#   gpu_args HELP_LINES "$@"   sets out (an absolute, existing folder), dry (0 or 1) and py
# (the Python: $PYTHON, else .venv's for a dry run, else python3); --help prints lines
# HELP_LINES of the calling script; a bad or missing argument exits 2 naming it.
gpu_args() {
  local help="$1" name
  name=$(basename "$0")
  shift
  out="" dry=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --out) out="$2"; shift 2 ;;
      --out=*) out="${1#--out=}"; shift ;;
      --cpu-dry-run) dry=1; shift ;;
      -h|--help) sed -n "${help}p" "$0"; exit 0 ;;
      *) echo "$name: unknown argument '$1' (use --out DIR [--cpu-dry-run])" >&2; exit 2 ;;
    esac
  done
  if [ -z "$out" ]; then
    echo "$name: --out DIR is required (where the logs and summary.txt go)" >&2
    exit 2
  fi
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  if [ -n "${PYTHON:-}" ]; then py="$PYTHON"
  elif [ "$dry" = 1 ] && [ -x .venv/bin/python ]; then py=.venv/bin/python
  else py=python3
  fi
}

# gpu_wheels: makes gin-config and grain importable for $py, from .wheels/ (`make
# gpu-wheels`) into /tmp/site where they are missing; returns 1 (saying why) if it cannot.
gpu_wheels() {
  "$py" -c "import gin, grain" 2> /dev/null && return 0
  if [ ! -d .wheels ]; then
    echo "gin-config / grain are missing and there is no .wheels folder (make gpu-wheels)"
    return 1
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl \
    || return 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
}
