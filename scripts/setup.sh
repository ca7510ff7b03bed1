#!/usr/bin/env bash
# Create .venv and install brainad with its test tools — idempotent: re-installs only when
# pyproject.toml changed. Needs only the package registry (torch comes from PyPI or local wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.brainad-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]'
  rm -f .venv/.brainad-installed-*
  touch "$stamp"
fi
