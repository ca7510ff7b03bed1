#!/usr/bin/env bash
# Install (idempotent), lint and run the whole test suite on CPU: `bash scripts/test.sh [pytest args]`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check src stages tests benchmarks
ruff format --check src stages tests benchmarks
status=0
pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
