"""The ``brainad`` command: score new scans with a trained study model, audit a study's lineage.

brainad score --model models/demo/scorers/vqgan.pt IMAGE_OR_FOLDER... --out results/
brainad audit demo
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainad.utils import setup_logging, write_text

log = logging.getLogger("brainad")


# -------------------------------------------------------------------------------------- score
def collect_images(inputs: Sequence[str]) -> list[Path]:
    """Image files named directly or found (recursively) in folders, in sorted order."""
    from brainad.data.imageio import IMAGE_SUFFIXES

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder; check the path")
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) found in {list(inputs)}")
    return files


def score_files(model_path: Path, files: Sequence[Path], device: str = "auto"):
    """Preprocess ``files`` exactly like the study did and score them with the saved calibration.

    Returns ``(rows, arrays, scored, bundle)``: one row per input file (quarantined files too).
    """
    from brainad.data.arrays import preprocess_files
    from brainad.scoring.bundle import load_scorer
    from brainad.scoring.detector import score_images
    from brainad.utils import select_device

    torch_device = select_device(device)
    bundle = load_scorer(model_path, device=torch_device)
    files = [Path(f).resolve() for f in files]
    root = Path(os.path.commonpath([f.parent for f in files]))
    rows = [
        {
            "path": f.relative_to(root).as_posix(),
            "label": "healthy",
            "class_name": "",
            "folder": "",
            "sha256": hashlib.sha256(f.read_bytes()).hexdigest(),
            "mask_path": "",
        }
        for f in files
    ]
    out = preprocess_files(root, rows, bundle.preprocess)
    scored = score_images(
        bundle.detector(torch_device),
        bundle.calibration,
        out.arrays.images,
        out.arrays.brain_masks,
        keep_maps=True,
    )
    by_path = {p: i for i, p in enumerate(out.arrays.paths.tolist())}
    reasons = {q.path: q.reason for q in out.quarantined}
    result = []
    for row in rows:
        entry = {
            "path": str(root / row["path"]),
            "sha256": row["sha256"],
            "status": "scored",
            "reason": "",
        }
        i = by_path.get(row["path"])
        if i is None:
            entry.update(status="quarantined", reason=reasons.get(row["path"], "not decoded"))
        else:
            entry.update({f"component_{k}": float(v[i]) for k, v in scored.components.items()})
            entry.update(
                score=float(scored.score[i]),
                threshold=bundle.calibration.threshold,
                prediction=int(scored.prediction[i]),
                fallback=bool(out.arrays.fallback[i]),
            )
        result.append(entry)
    return result, out.arrays, scored, bundle


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _write_heatmaps(out_dir: Path, arrays, scored, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from brainad.utils import atomic_path

    for i, path in enumerate(arrays.paths.tolist()):
        m = scored.maps[i].squeeze().astype(np.float32)
        fig, axes = plt.subplots(1, 2, figsize=(5, 2.7))
        axes[0].imshow(arrays.images[i].squeeze().astype(np.float32), cmap="gray", vmin=-1, vmax=1)
        axes[1].imshow(arrays.images[i].squeeze().astype(np.float32), cmap="gray", vmin=-1, vmax=1)
        axes[1].imshow(np.ma.masked_less_equal(m, np.quantile(m, 0.9)), cmap="inferno", alpha=0.7)
        verdict = "ANOMALOUS" if scored.prediction[i] else "normal"
        fig.suptitle(
            f"{Path(path).name}: score {scored.score[i]:.2f} "
            f"(threshold {threshold:.2f}) → {verdict}",
            fontsize=8,
        )
        for ax in axes:
            ax.axis("off")
        name = f"{i:05d}_{Path(path).stem[:60]}.png"
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)


def cmd_score(args: argparse.Namespace) -> int:
    files = collect_images(args.inputs)
    rows, arrays, scored, bundle = score_files(args.model, files, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out / "scores.csv", rows)
    if not args.no_heatmaps and len(arrays.paths):
        _write_heatmaps(args.out / "heatmaps", arrays, scored, bundle.calibration.threshold)
    flagged = sum(r.get("prediction", 0) for r in rows)
    quarantined = sum(r["status"] == "quarantined" for r in rows)
    log.info(
        "scored %d files: %d flagged anomalous, %d quarantined → %s",
        len(rows),
        flagged,
        quarantined,
        args.out / "scores.csv",
    )
    return 0


# -------------------------------------------------------------------------------------- audit
def _lock_stages(lock_path: Path, study: str) -> dict:
    import yaml

    if not lock_path.is_file():
        raise FileNotFoundError(f"{lock_path}: not found; run `dvc repro evaluate@{study}` first")
    stages = yaml.safe_load(lock_path.read_text())["stages"]
    return {name: stage for name, stage in stages.items() if name.endswith(f"@{study}")}


def audit(study: str, root: Path = Path(".")) -> dict:
    """Lineage of a study's results and a re-verification of every image's sha256."""
    from brainad.data.manifest import fingerprint as dataset_fingerprint
    from brainad.data.manifest import read_manifest

    stages = _lock_stages(root / "dvc.lock", study)
    prepare = stages.get(f"prepare@{study}")
    if prepare is None:
        raise ValueError(f"dvc.lock has no prepare@{study}; run `dvc repro evaluate@{study}`")
    outs = [o["path"] for o in prepare["outs"]]
    raw = root / next(o for o in outs if not Path(o).suffix)
    manifest_path = root / next(o for o in outs if o.endswith(".jsonl"))
    report = json.loads((root / next(o for o in outs if o.endswith(".json"))).read_text())
    rows = read_manifest(manifest_path)
    checked = {"ok": 0, "mismatch": [], "missing": []}
    for row in rows:
        file = raw / row["path"]
        if not file.is_file():
            checked["missing"].append(row["path"])
        elif hashlib.sha256(file.read_bytes()).hexdigest() != row["sha256"]:
            checked["mismatch"].append(row["path"])
        else:
            checked["ok"] += 1
    fingerprint = dataset_fingerprint(rows)
    return {
        "study": study,
        "dataset_fingerprint": report["fingerprint"],
        "fingerprint_recomputed": fingerprint,
        "fingerprint_matches": fingerprint == report["fingerprint"],
        "source": report.get("source"),
        "files_verified": checked["ok"],
        "files_changed": checked["mismatch"],
        "files_missing": checked["missing"],
        "stages": {
            name: {
                "cmd": s.get("cmd"),
                "outs": {o["path"]: o.get("md5") for o in s.get("outs", [])},
                "params": s.get("params", {}),
            }
            for name, s in stages.items()
        },
        "code_commit": _evaluation_commit(stages, root),
    }


def _evaluation_commit(stages: dict, root: Path) -> str | None:
    for name, stage in stages.items():
        if name.startswith("evaluate@"):
            for out in stage.get("outs", []):
                if out["path"].endswith("evaluation.json") and (root / out["path"]).is_file():
                    data = json.loads((root / out["path"]).read_text())
                    return data["provenance"]["git_commit"]
    return None


def cmd_audit(args: argparse.Namespace) -> int:
    result = audit(args.study, args.root)
    print(json.dumps(result, indent=2, sort_keys=True))  # the audit record is the command's output
    ok = (
        result["fingerprint_matches"]
        and not result["files_changed"]
        and not result["files_missing"]
    )
    if not ok:
        log.error("audit FAILED: data differ from the manifest the results were computed on")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brainad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score JPEG/PNG scans with a trained study model")
    score.add_argument(
        "--model",
        required=True,
        type=Path,
        help="scorer bundle written by evaluate, e.g. models/demo/scorers/vqgan.pt",
    )
    score.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    score.add_argument("--out", type=Path, default=Path("brainad-scores"))
    score.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    score.add_argument("--no-heatmaps", action="store_true")
    score.set_defaults(func=cmd_score)
    aud = sub.add_parser("audit", help="print a study's lineage and re-verify image hashes")
    aud.add_argument("study")
    aud.add_argument("--root", type=Path, default=Path("."), help="repository root")
    aud.set_defaults(func=cmd_audit)
    from brainad.evaluation.compare import register as register_compare

    register_compare(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
