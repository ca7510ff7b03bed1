#!/usr/bin/env bash
# Install (idempotent) and reproduce one study end to end: `bash scripts/demo.sh [STUDY]`.
# STUDY defaults to `demo` (embedded synthetic phantoms, offline, deterministic: about 14 minutes on 2 CPU cores);
# `brain-tumor-mri` runs the real Kaggle archive named in params.yaml (about 75 minutes on 2 CPU cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
study="${1:-demo}"
dvc repro "evaluate@${study}"
echo "Results: reports/${study}/evaluate/summary.md (figures in reports/${study}/evaluate/figures/)"
