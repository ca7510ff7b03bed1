"""The evaluate stage: every method through the one detector engine, both test tracks, reports.

Models and baselines take the same path (:func:`evaluate_detector`): fit on healthy training
scans (a no-op for trained models), calibrate on VALIDATION scans, then score the test split
and the paired lesion track once, after every choice is fixed. A model's calibration is saved as
a scorer bundle, which ``brainad score`` reads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from brainad.config import StudyConfig, to_dict
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.data.manifest import read_manifest
from brainad.evaluation.confound import CEILING, confound_ceiling
from brainad.evaluation.tracks import (
    LesionTrack,
    MethodResult,
    Strata,
    curves,
    lesion_track,
    strata_of,
    track_metrics,
)
from brainad.models import registry
from brainad.models.checkpoint import load_model
from brainad.runtime import describe, deterministic_kernels, study_deterministic
from brainad.scoring.baselines import default_baselines
from brainad.scoring.bundle import ScorerBundle, make_detector, save_scorer
from brainad.scoring.calibration import Calibration
from brainad.scoring.detector import Detector, calibrate, score_images

log = logging.getLogger("brainad")

PROVENANCE_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")


def evaluate_detector(
    config: StudyConfig,
    detector: Detector,
    splits: dict[str, SplitArrays],
    track: LesionTrack,
    strata: Strata | None = None,
) -> tuple[MethodResult, Calibration]:
    """Fit (healthy train) → calibrate (validation) → score the test split and the lesion track
    (the real track per stratum too, with the test scans' ``strata``)."""
    train, val, test = splits["train"], splits["val"], splits["test"]
    healthy = train.labels == 0
    detector.fit(train.images[healthy].astype(np.float32), train.brain_masks[healthy])
    calibration = calibrate(detector, val.images, val.brain_masks, val.labels, config.threshold)
    started = time.perf_counter()
    result_test = score_images(detector, calibration, test.images, test.brain_masks, True)
    seconds_per_image = (time.perf_counter() - started) / max(len(test.labels), 1)
    result_lesion = score_images(
        detector, calibration, track.lesions.images, track.brain_masks, True
    )
    metrics = track_metrics(
        config.evaluate, test, track, result_test, result_lesion, calibration.threshold, strata
    )
    if detector.kind == "model":
        metrics["scoring_seconds_per_image"] = seconds_per_image  # includes any latent search
    direction = calibration.details.get("val_direction", {})
    result = MethodResult(
        detector.name,
        detector.kind,
        calibration.threshold,
        calibration.method,
        float(direction.get("auroc", float("nan"))),
        result_test,
        result_lesion,
        metrics,
        curves(test, track, result_test, result_lesion),
    )
    return result, calibration


def evaluate_model(
    config: StudyConfig,
    name: str,
    model_path: Path,
    scorer_path: Path,
    splits: dict[str, SplitArrays],
    track: LesionTrack,
    meta: dict,
    device: torch.device,
    strata: Strata | None = None,
) -> MethodResult:
    """Evaluate a trained model and save its scorer bundle (calibration fitted on validation)."""
    model, payload = load_model(model_path, device=device)
    detector = make_detector(name, model, config.score, config.perceptual, device)
    result, calibration = evaluate_detector(config, detector, splits, track, strata)
    epoch = int(payload.get("epoch", 0))
    bundle_meta = {**meta, "model": name, "epoch": epoch, "source_model": str(model_path)}
    save_scorer(
        scorer_path,
        ScorerBundle(
            model,
            calibration,
            config.score,
            config.preprocess,
            config.perceptual,
            bundle_meta,
            config.volume,
        ),
    )
    extra = payload.get("extra") or {}
    result.metrics["training"] = {
        "epoch": epoch,
        **{
            k: extra.get(k)
            for k in ("precision", "world", "best", "phase", "fingerprint", "weights", "runtime")
        },
    }
    return result


def load_splits(arrays_dir: Path) -> dict[str, SplitArrays]:
    """The train/val/test arrays written by the preprocess stage."""
    return {
        split: load_arrays(Path(arrays_dir) / f"{split}.npz") for split in ("train", "val", "test")
    }


def provenance(config: StudyConfig, prepare_report: dict, device: torch.device) -> dict:
    """Lineage of a result: data fingerprint, code commit, versions, device, seeds, params."""
    import platform
    import subprocess

    import cv2
    import sklearn

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "unknown"

    return {
        "study": config.name,
        "dataset_fingerprint": prepare_report["fingerprint"],
        "source": prepare_report["source"],
        "git_commit": git("rev-parse", "HEAD"),
        # uncommitted changes to what produces results (not to the results or dvc.lock themselves)
        "git_dirty": bool(
            git("status", "--porcelain", "--untracked-files=no", "--", *PROVENANCE_PATHS)
        ),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "opencv": cv2.__version__,
        },
        "device": str(device),
        "precision": "fp32 (scoring)",
        # this process's kernels, CPU and threads; each model's own are under "training"
        "runtime": describe(study_deterministic(config)),
        "seeds": {
            "split": config.split.seed,
            **{name: registry.fit_config(name, config).seed for name in registry.MODEL_NAMES},
            "evaluate": config.evaluate.seed,
            "lesions": config.evaluate.lesions.seed,
        },
        "params": to_dict(config),
    }


# ------------------------------------------------------------------------------ the stage
def run_evaluate(
    config: StudyConfig,
    arrays_dir: Path,
    model_dir: Path,
    scorers_dir: Path,
    train_dir: Path,
    prepare_report: Path,
    split_report: Path,
    report_dir: Path,
    ablation_report: Path | None = None,
    manifest: Path | None = None,
) -> dict:
    """Calibrate on validation, score both test tracks for every registered model and every
    baseline, write reports. Models are read from ``model_dir`` and their training reports from
    ``train_dir/<name>`` (file names: :mod:`brainad.models.registry`). With the study's
    ``manifest``, the confound ceiling (:mod:`brainad.evaluation.confound`) is reported too."""
    from brainad.evaluation import figures, report, summary
    from brainad.utils import read_json, select_device, write_json, write_text

    if config.evaluate.default_model not in registry.MODEL_NAMES:
        raise ValueError(
            f"evaluate.default_model {config.evaluate.default_model!r} is not a registered model; "
            f"choose one of {list(registry.MODEL_NAMES)} in params.yaml"
        )
    with deterministic_kernels(study_deterministic(config)):  # pinned in deterministic mode
        device = select_device()
        splits = load_splits(arrays_dir)
        test = splits["test"]
        track = lesion_track(config.evaluate.lesions, test)
        lineage = provenance(config, read_json(prepare_report), device)
        meta = {"study": config.name, "dataset_fingerprint": lineage["dataset_fingerprint"]}
        rows = read_manifest(manifest) if manifest is not None else None
        strata = strata_of(test, rows, config.evaluate.matched) if rows is not None else None
        results = [
            evaluate_model(
                config,
                name,
                registry.best_file(model_dir, name),
                registry.scorer_file(scorers_dir, name),
                splits,
                track,
                meta,
                device,
                strata,
            )
            for name in registry.MODEL_NAMES
        ]
        results += [
            evaluate_detector(config, baseline, splits, track, strata)[0]
            for baseline in default_baselines(config.evaluate)
        ]
        lineage["training"] = {r.name: r.metrics["training"] for r in results if r.kind == "model"}
        compact = report.compact_metrics(results)
        methods = {r.name: r.metrics for r in results}
        ceiling = None
        if rows is not None:
            ceiling = confound_ceiling(splits["val"], test, rows, config.evaluate, strata)
            compact[CEILING], methods[CEILING] = report.ceiling_entries(ceiling)
        write_json(report_dir / "metrics.json", compact)
        write_json(report_dir / "evaluation.json", {"provenance": lineage, "methods": methods})
        report.write_plot_data(report_dir / "plots", results, test)
        report.write_scores_csv(report_dir / "scores.csv", results, test)
        figures.render_figures(report_dir / "figures", results, test, track, train_dir, config)
        write_text(
            report_dir / "summary.md",
            summary.summary_markdown(
                config.name,
                results,
                lineage,
                thesis_comparison=config.source.kind != "synthetic",
                leak=read_json(split_report).get("official_split_leak"),
                ablation=read_json(ablation_report) if ablation_report else None,
                ceiling=ceiling,
                matched=config.evaluate.matched if strata is not None else None,
                default_model=config.evaluate.default_model,
                score=config.score,
            ),
        )
    log.info(
        "evaluate: %s",
        {k: (v["real"]["roc_auc"], v.get("lesion", {}).get("roc_auc")) for k, v in compact.items()},
    )
    return compact
