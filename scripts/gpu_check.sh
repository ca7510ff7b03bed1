#!/usr/bin/env bash
# The GPU check of brainad in one go (issue 29); benchmarks/README.md, "GPU check", explains it.
#
#   bash scripts/gpu_check.sh --prepare DIR     # where the package registry is reachable
#   bash scripts/gpu_check.sh OUTDIR [--wheelhouse DIR] [--venv DIR] [CHECK OPTIONS]
#
# --prepare downloads the wheels the GPU machines lack (nibabel, pydicom; never torch) into DIR.
# A run prints the device, driver, torch and CUDA versions, runs every check on CUDA and writes
# OUTDIR/gpu_check.json and logs. With --wheelhouse, the packages are installed offline into a venv
# (--venv, default $TMPDIR/brainad-gpu-venv) that sees the system's torch; brainad runs from src/.
# CHECK OPTIONS go to `python -m benchmarks.gpu_check` (--checks, --models, --precisions, --nproc,
# --work). PYTHON picks the interpreter (see interpreter()). Exit: 0 passed, 1 a check failed,
# 2 usage error or no CUDA, 3 the environment cannot be set up.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  [ $# -eq 0 ] || echo "gpu_check.sh: $*" >&2
  echo "usage:" >&2
  sed -n '4,5p' "${BASH_SOURCE[0]}" | sed 's/^# */  /' >&2
  exit 2
}
die() { local code=$1; shift; echo "gpu_check.sh: $*" >&2; exit "$code"; }
absolute() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }
# The interpreter: $PYTHON, else the project's .venv where it runs (a development machine), else
# python3 (the GPU machines' system Python, which has torch).
interpreter() {
  if [ -n "${PYTHON:-}" ]; then
    printf '%s' "$PYTHON"
  elif "$REPO/.venv/bin/python" -c "" 2>/dev/null; then
    printf '%s' "$REPO/.venv/bin/python"
  else
    printf '%s' python3
  fi
}

[ $# -ge 1 ] || usage "missing OUTDIR"
case "$1" in
  -h | --help) usage ;;
  --prepare)
    [ $# -eq 2 ] && [ -n "$2" ] || usage "--prepare needs DIR (and nothing else)"
    dest="$(absolute "$2")"
    python="$(interpreter)"
    cd "$REPO"
    "$python" -m benchmarks.gpu_setup prepare "$dest" || exit $?
    du -sh "$dest"
    exit 0
    ;;
  -*) usage "the first argument is OUTDIR or --prepare DIR, not $1" ;;
esac

outdir="$(absolute "$1")"
shift
wheelhouse=""
venv="${TMPDIR:-/tmp}/brainad-gpu-venv"
options=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse)
      [ $# -ge 2 ] || usage "$1 needs DIR"
      wheelhouse="$(absolute "$2")"
      shift 2
      ;;
    --venv)
      [ $# -ge 2 ] || usage "$1 needs DIR"
      venv="$(absolute "$2")"
      shift 2
      ;;
    --device | --device=*)
      usage "the script checks CUDA; on CPU run: python -m benchmarks.gpu_check OUTDIR --device cpu"
      ;;
    *)
      options+=("$1")
      shift
      ;;
  esac
done

cd "$REPO"
mkdir -p "$outdir"
export PYTHONPATH="$REPO/src:$REPO${PYTHONPATH:+:$PYTHONPATH}"
python="$(interpreter)"
# nothing to install where nibabel and pydicom import already (the JSON's optional_modules)
if [ -n "$wheelhouse" ] && ! "$python" -c "import nibabel, pydicom" 2>/dev/null; then
  python="$("$python" -m benchmarks.gpu_setup install "$wheelhouse" --venv "$venv")" ||
    die 3 "could not install from $wheelhouse (see above)"
fi
"$python" -m benchmarks.gpu_setup check || die 3 "$python cannot import what the check needs"

set +e
"$python" -m benchmarks.gpu_check "$outdir" --device cuda ${options[@]+"${options[@]}"} 2>&1 |
  tee "$outdir/console.log"
exit "${PIPESTATUS[0]}"
