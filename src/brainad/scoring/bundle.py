"""The scorer bundle: a trained model with everything needed to score new scans exactly like the
evaluation did (calibration, score/preprocess/perceptual settings, provenance), in one
checkpoint file that is read without executing code."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from brainad.config import (
    PerceptualConfig,
    PreprocessConfig,
    ScoreConfig,
    VolumeConfig,
    from_dict,
    to_dict,
)
from brainad.models import registry
from brainad.models.checkpoint import load_model, save_checkpoint
from brainad.models.perceptual import build_perceptual
from brainad.scoring.calibration import Calibration
from brainad.scoring.combined import COMPONENT as ASYMMETRY
from brainad.scoring.combined import WithAsymmetry
from brainad.scoring.detector import Detector
from brainad.scoring.gan import COMPONENTS, SELECTION_SCORE, GANDetector, active_components
from brainad.scoring.segmenter import COMPONENTS as SEGMENTER_COMPONENTS
from brainad.scoring.segmenter import SegmenterDetector

log = logging.getLogger("brainad")

SCORER_FORMAT = "brainad-scorer/1"


def make_detector(
    name: str,
    model: nn.Module,
    score: ScoreConfig,
    perceptual: PerceptualConfig,
    device: torch.device,
    precision: str = "fp32",
) -> Detector:
    """The detector evaluation and the CLI share, by the registry's ``detector`` kind of the
    model ``name``: a :class:`GANDetector` (reconstruction) with only the components of non-zero
    weight, or a :class:`SegmenterDetector`. Evaluation and the CLI score in fp32; ``precision``
    exists for the benchmark's bf16 rows. With ``score.weight_asymmetry`` > 0 the detector gains
    the mirror-asymmetry component (:class:`~brainad.scoring.combined.WithAsymmetry`)."""
    detector = _model_detector(name, model, score, perceptual, device, precision)
    if score.weight_asymmetry:
        return WithAsymmetry(detector, score.weight_asymmetry)
    return detector


def _model_detector(
    name: str,
    model: nn.Module,
    score: ScoreConfig,
    perceptual: PerceptualConfig,
    device: torch.device,
    precision: str,
) -> Detector:
    if registry.entry(name).detector == "segmentation":
        return SegmenterDetector(name, model, score, device, precision=precision)
    if score.weight_discriminator and not getattr(model, "has_discriminator", True):
        log.warning(
            "%s has no discriminator: its score leaves out the discriminator component "
            "(score.weight_discriminator %s applies to the GANs only)",
            name,
            score.weight_discriminator,
        )
        score = dataclasses.replace(score, weight_discriminator=0.0)
    net = build_perceptual(perceptual).to(device)
    return GANDetector(
        name, model, score, net, device, precision=precision, components=active_components(score)
    )


def raw_detector(
    name: str,
    model: nn.Module,
    device: torch.device,
    *,
    diagnostics: bool = False,
    batch_size: int = SELECTION_SCORE.batch_size,
) -> Detector:
    """The model's detector on the fixed, unsmoothed :data:`SELECTION_SCORE` with its one
    map-based component (``residual`` or ``segmentation``): train-time validation and, with the
    model's ``diagnostic_maps`` (``diagnostics``), the ablation's raw maps."""
    score = dataclasses.replace(SELECTION_SCORE, batch_size=batch_size)
    if registry.entry(name).detector == "segmentation":
        return SegmenterDetector(name, model, score, device)
    return GANDetector(
        name, model, score, nn.Identity(), device, components=("residual",), diagnostics=diagnostics
    )


def detector_components(name: str) -> tuple[str, ...]:
    """Every component a detector of the model ``name`` can compute (what a bundle's
    calibration may hold): its own, and the mirror-asymmetry combination's."""
    own = SEGMENTER_COMPONENTS if registry.entry(name).detector == "segmentation" else COMPONENTS
    return (*own, ASYMMETRY)


@dataclass(frozen=True)
class ScorerBundle:
    """A trained model with everything needed to score new scans exactly like evaluation did.

    Args:
        model: the trained model (eval mode).
        calibration: standardisation statistics and threshold fitted on validation data.
        score: the score settings used for calibration.
        preprocess: the preprocessing settings of the study (the CLI applies the same).
        perceptual: the perceptual feature network settings.
        meta: provenance (study, model name, dataset fingerprint, source model file).
        volume: how the study slices 3-D volumes (``None`` in bundles written before volume
            support: such a bundle scores 2-D images only).
    """

    model: nn.Module
    calibration: Calibration
    score: ScoreConfig
    preprocess: PreprocessConfig
    perceptual: PerceptualConfig
    meta: dict
    volume: VolumeConfig | None = None

    def detector(self, device: torch.device) -> Detector:
        """The bundle's detector (:func:`make_detector`) on ``device``."""
        name = str(self.meta.get("model", self.model.name))
        return make_detector(name, self.model.to(device), self.score, self.perceptual, device)


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
    if bundle.volume is not None:
        extra["volume"] = to_dict(bundle.volume)
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
        calibration=Calibration.from_dict(extra["calibration"], detector_components(model.name)),
        score=from_dict(ScoreConfig, extra["score"], "score"),
        preprocess=from_dict(PreprocessConfig, extra["preprocess"], "preprocess"),
        perceptual=from_dict(PerceptualConfig, extra["perceptual"], "perceptual"),
        meta=extra["meta"],
        volume=from_dict(VolumeConfig, extra["volume"], "volume") if "volume" in extra else None,
    )
