"""Calibration on validation, the two test tracks, baselines, and the saved scorer bundle.

The same functions score images for the ``evaluate`` stage and for ``brainad score``:
:func:`score_images` turns preprocessed arrays into component scores, a combined score and a
prediction using a :class:`~brainad.scoring.Calibration` that was fitted on validation data only.
The test split is touched once, after every choice (standardisation, threshold, model) is fixed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from brainad import metrics as metrics_lib
from brainad.baselines import default_baselines
from brainad.checkpoint import load_model, save_checkpoint
from brainad.config import (
    PerceptualConfig,
    PreprocessConfig,
    ScoreConfig,
    StudyConfig,
    from_dict,
    to_dict,
)
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.lesions import LesionSet, implant_lesions
from brainad.models.perceptual import build_perceptual
from brainad.scoring import Calibration, Scorer, active_components, combine, fit_standardiser

log = logging.getLogger("brainad")

SCORER_FORMAT = "brainad-scorer/1"
PROVENANCE_PATHS = ("src", "stages", "params.yaml", "dvc.yaml", "pyproject.toml")


@dataclass(frozen=True)
class ScorerBundle:
    """A trained model with everything needed to score new scans exactly like evaluation did.

    Args:
        model: the GAN module (eval mode).
        calibration: standardisation statistics and threshold fitted on validation data.
        score: the score settings used for calibration.
        preprocess: the preprocessing settings of the study (the CLI applies the same).
        perceptual: the perceptual feature network settings.
        meta: provenance (study, model name, dataset fingerprint, source model file).
    """

    model: nn.Module
    calibration: Calibration
    score: ScoreConfig
    preprocess: PreprocessConfig
    perceptual: PerceptualConfig
    meta: dict

    def scorer(self, device: torch.device) -> Scorer:
        """A :class:`Scorer` for this bundle on ``device``."""
        return make_scorer(self.model.to(device), self.score, self.perceptual, device)


@dataclass(frozen=True)
class ScoredImages:
    """Scores of a set of images.

    Args:
        components: raw per-image component scores.
        score: combined score (higher = more anomalous).
        prediction: 1 where ``score >= threshold``.
        maps: residual maps (N, 1, S, S) if requested.
        recons: reconstructions (N, 1, S, S) if requested.
    """

    components: dict[str, np.ndarray]
    score: np.ndarray
    prediction: np.ndarray
    maps: np.ndarray | None
    recons: np.ndarray | None = None


def make_scorer(
    model: nn.Module,
    score: ScoreConfig,
    perceptual: PerceptualConfig,
    device: torch.device,
    precision: str = "fp32",
) -> Scorer:
    """The scorer evaluation and the CLI share: only the components with a non-zero weight.
    Evaluation and the CLI score in fp32; ``precision`` exists for the benchmark's bf16 rows."""
    net = build_perceptual(perceptual).to(device)
    return Scorer(
        model, score, net, device, precision=precision, components=active_components(score)
    )


def score_images(
    scorer: Scorer,
    calibration: Calibration,
    config: ScoreConfig,
    images: np.ndarray,
    masks: np.ndarray,
    keep_maps: bool = False,
) -> ScoredImages:
    """Component scores → combined score → prediction (shared by evaluation and the CLI)."""
    table = scorer.score_arrays(images, masks, keep_maps=keep_maps, progress=len(images) > 256)
    score = combine(table.components, calibration, config)
    return ScoredImages(
        table.components,
        score,
        (score >= calibration.threshold).astype(np.int8),
        table.maps,
        table.recons,
    )


def calibrate(scorer: Scorer, config: StudyConfig, val: SplitArrays) -> Calibration:
    """Standardise components on healthy validation scans, then choose the threshold on validation."""
    table = scorer.score_arrays(val.images, val.brain_masks)
    healthy = val.labels == 0
    if not healthy.any():
        raise ValueError("validation split has no healthy images; check the split fractions")
    means, stds = fit_standardiser({k: v[healthy] for k, v in table.components.items()})
    provisional = Calibration(means, stds, float("nan"), "none", {})
    val_scores = combine(table.components, provisional, config.score)
    threshold = metrics_lib.calibrate_threshold(val.labels, val_scores, config.threshold)
    details = dict(threshold.details)
    if len(np.unique(val.labels)) == 2:
        details["val_direction"] = metrics_lib.direction_check(val.labels, val_scores)
    return Calibration(means, stds, float(threshold.value), threshold.method, details)


def save_scorer(path: Path, bundle: ScorerBundle) -> None:
    """Write the bundle as one checkpoint file (weights + calibration + settings as JSON)."""
    extra = {
        "format": SCORER_FORMAT,
        "calibration": bundle.calibration.to_dict(),
        "score": to_dict(bundle.score),
        "preprocess": to_dict(bundle.preprocess),
        "perceptual": to_dict(bundle.perceptual),
        "meta": bundle.meta,
    }
    save_checkpoint(path, bundle.model, epoch=int(bundle.meta.get("epoch", 0)), extra=extra)


def load_scorer(path: Path, device: torch.device | str = "cpu") -> ScorerBundle:
    """Load a scorer bundle written by the evaluate stage (weights-only, never executes code)."""
    model, payload = load_model(Path(path), device=device)
    extra = payload.get("extra") or {}
    if extra.get("format") != SCORER_FORMAT:
        raise ValueError(
            f"{path}: not a scorer bundle (a raw training checkpoint?); use the file the evaluate "
            "stage writes under models/<study>/scorers/"
        )
    return ScorerBundle(
        model=model,
        calibration=Calibration.from_dict(extra["calibration"]),
        score=from_dict(ScoreConfig, extra["score"], "score"),
        preprocess=from_dict(PreprocessConfig, extra["preprocess"], "preprocess"),
        perceptual=from_dict(PerceptualConfig, extra["perceptual"], "perceptual"),
        meta=extra["meta"],
    )


# ----------------------------------------------------------------------------- the two tracks
@dataclass
class MethodResult:
    """Everything evaluation knows about one method (model or baseline) on one study."""

    name: str
    kind: str  # "model" | "baseline"
    threshold: float
    threshold_method: str
    val_auroc: float
    test: ScoredImages
    lesion: ScoredImages
    metrics: dict


class LesionTrack(NamedTuple):
    """The paired track: lesioned copies of the healthy test scans and, for each copy, its twin.

    Args:
        lesions: the lesioned copies (copy ``k`` of healthy scan ``i`` at ``k * n_healthy + i``).
        clean_index: index in the test split of each copy's clean twin (same order as the copies).
        brain_masks: brain masks of the copies (those of their twins).
    """

    lesions: LesionSet
    clean_index: np.ndarray
    brain_masks: np.ndarray


def lesion_track(config: StudyConfig, test: SplitArrays) -> LesionTrack:
    """Implant lesions into the healthy test scans (same scans, only the lesion differs)."""
    healthy = np.flatnonzero(test.labels == 0)
    lesions = implant_lesions(
        test.images[healthy].astype(np.float32), test.brain_masks[healthy], config.evaluate.lesions
    )
    clean_index = np.tile(healthy, config.evaluate.lesions.per_image)
    return LesionTrack(lesions, clean_index, test.brain_masks[clean_index])


def track_metrics(
    config: StudyConfig,
    test: SplitArrays,
    track: LesionTrack,
    result_test: ScoredImages,
    result_lesion: ScoredImages,
    threshold: float,
) -> dict:
    """Track 1 (real anomalies) and track 2 (paired lesions) metrics with bootstrap CIs."""
    ev = config.evaluate
    out: dict = {"threshold": threshold}
    out["real"] = _with_ci(test.labels, result_test.score, threshold, ev)
    out["real"]["by_class"] = {}
    for name in sorted(set(test.class_names[test.labels == 1].tolist())):
        keep = (test.labels == 0) | (test.class_names == name)
        out["real"]["by_class"][name] = metrics_lib.all_metrics(
            test.labels[keep], result_test.score[keep], threshold
        )
    out["real"]["by_folder"] = {}
    for folder in sorted(set(test.folders.tolist())):
        keep = test.folders == folder
        if len(np.unique(test.labels[keep])) == 2:
            out["real"]["by_folder"][folder] = metrics_lib.all_metrics(
                test.labels[keep], result_test.score[keep], threshold
            )
    if result_test.maps is not None and test.has_lesion_mask.any():
        keep = test.has_lesion_mask
        out["real"]["pixel"] = metrics_lib.pixel_metrics(
            test.lesion_masks[keep], result_test.maps[keep], test.brain_masks[keep], seed=ev.seed
        )
    clean = result_test.score[track.clean_index]
    lesioned = result_lesion.score
    labels = np.r_[np.zeros(len(clean), np.int8), np.ones(len(lesioned), np.int8)]
    scores = np.r_[clean, lesioned]
    out["lesion"] = _with_ci(labels, scores, threshold, ev)
    out["lesion"]["pairs_lesioned_higher"] = float(np.mean(lesioned > clean))
    if result_lesion.maps is not None:
        out["lesion"]["pixel"] = metrics_lib.pixel_metrics(
            track.lesions.masks, result_lesion.maps, track.brain_masks, seed=ev.seed
        )
    return out


def _with_ci(labels: np.ndarray, scores: np.ndarray, threshold: float, ev) -> dict:
    out = metrics_lib.all_metrics(labels, scores, threshold)
    out["ci"] = metrics_lib.bootstrap_ci(labels, scores, threshold, ev.bootstrap, ev.ci, ev.seed)
    out["n"] = {"healthy": int((labels == 0).sum()), "anomalous": int((labels == 1).sum())}
    return out


def evaluate_model(
    config: StudyConfig,
    name: str,
    model_path: Path,
    scorer_path: Path,
    arrays: dict[str, SplitArrays],
    track: LesionTrack,
    meta: dict,
    device: torch.device,
) -> MethodResult:
    """Calibrate a trained model on validation, save its scorer bundle, then score the test tracks."""
    model, payload = load_model(model_path, device=device)
    scorer = make_scorer(model, config.score, config.perceptual, device)
    calibration = calibrate(scorer, config, arrays["val"])
    bundle = ScorerBundle(
        model,
        calibration,
        config.score,
        config.preprocess,
        config.perceptual,
        {
            **meta,
            "model": name,
            "epoch": int(payload.get("epoch", 0)),
            "source_model": str(model_path),
        },
    )
    save_scorer(scorer_path, bundle)
    test = arrays["test"]
    started = time.perf_counter()
    result_test = score_images(
        scorer, calibration, config.score, test.images, test.brain_masks, keep_maps=True
    )
    seconds_per_image = (time.perf_counter() - started) / max(len(test.labels), 1)
    result_lesion = score_images(
        scorer, calibration, config.score, track.lesions.images, track.brain_masks, keep_maps=True
    )
    direction = calibration.details.get("val_direction", {})
    metrics = track_metrics(config, test, track, result_test, result_lesion, calibration.threshold)
    metrics["scoring_seconds_per_image"] = seconds_per_image  # includes any latent search
    extra = payload.get("extra") or {}
    metrics["training"] = {
        "epoch": int(payload.get("epoch", 0)),
        **{k: extra.get(k) for k in ("precision", "world", "best", "phase", "fingerprint")},
    }
    return MethodResult(
        name,
        "model",
        calibration.threshold,
        calibration.method,
        float(direction.get("auroc", float("nan"))),
        result_test,
        result_lesion,
        metrics,
    )


def evaluate_baselines(
    config: StudyConfig, arrays: dict[str, SplitArrays], track: LesionTrack
) -> list[MethodResult]:
    """Fit each trivial baseline on the healthy training split; calibrate on validation; test."""
    train, val, test = arrays["train"], arrays["val"], arrays["test"]
    keep = train.labels == 0
    results = []
    for baseline in default_baselines(config.evaluate):
        baseline.fit(train.images[keep].astype(np.float32), train.brain_masks[keep])
        val_scores = baseline.score(val.images.astype(np.float32), val.brain_masks)
        threshold = metrics_lib.calibrate_threshold(val.labels, val_scores, config.threshold)
        results_ = []
        for images, masks in (
            (test.images, test.brain_masks),
            (track.lesions.images, track.brain_masks),
        ):
            images = images.astype(np.float32)
            scores = baseline.score(images, masks)
            maps = baseline.maps(images, masks) if hasattr(baseline, "maps") else None
            results_.append(
                ScoredImages(
                    {"score": scores}, scores, (scores >= threshold.value).astype(np.int8), maps
                )
            )
        val_auroc = (
            metrics_lib.roc_auc(val.labels, val_scores)
            if len(np.unique(val.labels)) == 2
            else float("nan")
        )
        results.append(
            MethodResult(
                baseline.name,
                "baseline",
                float(threshold.value),
                threshold.method,
                val_auroc,
                results_[0],
                results_[1],
                track_metrics(
                    config,
                    test,
                    track,
                    results_[0],
                    results_[1],
                    float(threshold.value),
                ),
            )
        )
    return results


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
        "seeds": {
            "split": config.split.seed,
            "vqgan": config.vqgan.fit.seed,
            "dcgan": config.dcgan.fit.seed,
            "evaluate": config.evaluate.seed,
            "lesions": config.evaluate.lesions.seed,
        },
        "params": to_dict(config),
    }


# ------------------------------------------------------------------------------ the stage
def run_evaluate(
    config: StudyConfig,
    arrays_dir: Path,
    model_paths: dict[str, Path],
    scorers_dir: Path,
    prepare_report: Path,
    split_report: Path,
    train_dirs: dict[str, Path],
    report_dir: Path,
    ablation_report: Path | None = None,
) -> dict:
    """Calibrate on validation, score both test tracks for models and baselines, write reports."""
    from brainad import report
    from brainad.utils import read_json, select_device, write_json, write_text

    device = select_device()
    splits = load_splits(arrays_dir)
    test = splits["test"]
    track = lesion_track(config, test)
    lineage = provenance(config, read_json(prepare_report), device)
    meta = {"study": config.name, "dataset_fingerprint": lineage["dataset_fingerprint"]}
    results = [
        evaluate_model(
            config,
            name,
            path,
            scorers_dir / f"{name}.pt",
            splits,
            track,
            meta,
            device,
        )
        for name, path in model_paths.items()
    ]
    results += evaluate_baselines(config, splits, track)
    lineage["training"] = {r.name: r.metrics["training"] for r in results if r.kind == "model"}
    compact = report.compact_metrics(results)
    write_json(report_dir / "metrics.json", compact)
    write_json(
        report_dir / "evaluation.json",
        {"provenance": lineage, "methods": {r.name: r.metrics for r in results}},
    )
    report.write_plot_data(report_dir / "plots", results, test)
    report.write_scores_csv(report_dir / "scores.csv", results, test)
    report.render_figures(report_dir / "figures", results, test, track, train_dirs, config)
    write_text(
        report_dir / "summary.md",
        report.summary_markdown(
            config.name,
            results,
            lineage,
            thesis_comparison=config.source.kind != "synthetic",
            leak=read_json(split_report).get("official_split_leak"),
            ablation=read_json(ablation_report) if ablation_report else None,
        ),
    )
    log.info(
        "evaluate: %s",
        {k: (v["real"]["roc_auc"], v["lesion"]["roc_auc"]) for k, v in compact.items()},
    )
    return compact
