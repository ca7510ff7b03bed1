#!/usr/bin/env bash
# CI gate after a study was reproduced: `bash scripts/metrics_gate.sh [STUDY] [REV]`.
# Compares the study's metrics in the workspace with the committed ones at REV (default HEAD)
# with `brainad compare --check`, prints the table and writes, under ci-artifacts/<STUDY>/ (git-ignored):
#   metrics-diff.md    the table (a pull-request comment)
#   metrics-diff.json  every metric with its verdict
#   plots/index.html   `dvc plots diff REV` of the study's ROC/PR/confusion and training curves
# Exits 1 when a metric changed beyond the cross-machine tolerance — 0 for a deterministic study
# (byte-identical on any x86-64 CPU), the seed/bootstrap noise otherwise — i.e. when a commit
# changed results without committing them; 2 when the comparison could not be made.
set -euo pipefail
study="${1:-demo}"
rev="${2:-HEAD}"
out="ci-artifacts/${study}"
mkdir -p "$out"
status=0
brainad compare "$rev" --study "$study" --check \
  --markdown "$out/metrics-diff.md" --json "$out/metrics-diff.json" || status=$?
shopt -s nullglob
targets=(reports/"$study"/evaluate/plots/* reports/"$study"/train/*/live_*/plots/metrics)
if [ "${#targets[@]}" -gt 0 ]; then
  if dvc plots diff "$rev" --targets "${targets[@]}" -o "$out/plots" > "$out/plots.log" 2>&1; then
    echo "plots diff: $out/plots/index.html"
  else
    echo "dvc plots diff failed (see $out/plots.log); the metric gate is unaffected" >&2
  fi
fi
exit "$status"
