"""How high must a detector's true ROC-AUC be before its interval's lower bound clears a bar?

    python scripts/bound_power.py --positives 217 --negatives 21 --bar 0.837 [--study S] [--out F]

"Clearly above a baseline" means that the detector's 95 % lower bound is above the baseline's
point estimate. With few scans of one class, the interval is wide, so that needs a true ROC-AUC
well above the bar. This script measures how far above, for given class counts.

For each true ROC-AUC on a grid, it draws ``--replicates`` score sets from the equal-variance
binormal model (anomalous scores N(d, 1), healthy N(0, 1), true ROC-AUC Φ(d/√2)). It measures
each set's interval exactly as the evaluate stage does (:func:`brainad.metrics.bootstrap_ci`,
with the study's ``evaluate.bootstrap`` and ``evaluate.ci``). It prints, and writes with
``--out``, the median lower bound and the share of replicates whose lower bound is above
``--bar`` (the power). Real scores need not be binormal. The model answers only how wide the
interval is at these counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import NormalDist

import numpy as np

from brainad import metrics
from brainad.config import load_study

REPO = Path(__file__).resolve().parents[1]


GRID = (0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96)


def lower_bounds(
    true_auc: float,
    positives: int,
    negatives: int,
    replicates: int,
    resamples: int,
    ci: float,
    seed: int,
) -> np.ndarray:
    """The interval's lower bound of ``replicates`` binormal score sets at ``true_auc``."""
    if not 0.5 <= true_auc < 1.0:
        raise ValueError(f"true ROC-AUC must be in [0.5, 1), got {true_auc}")
    rng = np.random.default_rng(seed)
    shift = np.sqrt(2.0) * NormalDist().inv_cdf(true_auc)
    labels = np.r_[np.ones(positives, int), np.zeros(negatives, int)]
    out = np.empty(replicates)
    for r in range(replicates):
        scores = np.r_[rng.normal(shift, 1.0, positives), rng.normal(0.0, 1.0, negatives)]
        interval = metrics.bootstrap_ci(labels, scores, 0.0, resamples, ci, seed + r)
        out[r] = interval["roc_auc"]["low"]
    return out


def table(args: argparse.Namespace) -> dict:
    ev = load_study(args.study, REPO / "params.yaml").evaluate
    rows = []
    for auc in args.grid:
        low = lower_bounds(
            auc, args.positives, args.negatives, args.replicates, ev.bootstrap, ev.ci, args.seed
        )
        power = float(np.mean(low > args.bar))
        rows.append({"true_auc": auc, "median_low": float(np.median(low)), "power": power})
    return {
        "positives": args.positives,
        "negatives": args.negatives,
        "bar": args.bar,
        "ci": ev.ci,
        "resamples": ev.bootstrap,
        "replicates": args.replicates,
        "seed": args.seed,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--positives", type=int, required=True, help="anomalous scans")
    parser.add_argument("--negatives", type=int, required=True, help="healthy scans")
    parser.add_argument("--bar", type=float, required=True, help="the baseline's point estimate")
    parser.add_argument("--study", default="brain-tumor-mri", help="whose evaluate settings")
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID))
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if min(args.positives, args.negatives) < 1 or args.replicates < 1:
        parser.error("--positives, --negatives and --replicates must be >= 1")
    result = table(args)
    print(f"{args.positives} anomalous vs {args.negatives} healthy, bar {args.bar}:")
    print("true ROC-AUC | median lower bound | lower bound > bar")
    for row in result["rows"]:
        print(f"{row['true_auc']:.2f} | {row['median_low']:.3f} | {row['power']:.0%}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
