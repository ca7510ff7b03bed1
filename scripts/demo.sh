#!/usr/bin/env bash
# Install (idempotent) and reproduce one study end to end: `bash scripts/demo.sh [STUDY]`.
# STUDY defaults to `demo` (embedded synthetic phantoms, offline, deterministic: about 14 minutes on 2 CPU cores);
# `brain-tumor-mri` runs the real Kaggle archive named in params.yaml (about 75 minutes on 2 CPU cores);
# `brats` grades detectors voxel by voxel on the six BraTS cases named in params.yaml (about 90 minutes:
# it trains six 2-D models, one of them on the Kaggle archive's healthy slices).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
study="${1:-demo}"
# a volume study (params.yaml `volume_studies`, e.g. brats) ends in its voxels stage
if python -c "import sys, yaml; sys.exit(0 if sys.argv[1] in (yaml.safe_load(open('params.yaml')).get('volume_studies') or {}) else 1)" "$study"; then
  dvc repro "voxels@${study}"
  echo "Results: reports/${study}/voxels/summary.md (figure: reports/${study}/voxels/figures/overlays.png)"
else
  dvc repro "evaluate@${study}"
  echo "Results: reports/${study}/evaluate/summary.md (figures in reports/${study}/evaluate/figures/)"
fi
