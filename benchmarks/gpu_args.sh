# Sourced by benchmarks/gpu_check.sh and gpu_pretrain.sh: their shared command line.
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
