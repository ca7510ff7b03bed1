"""The train stage: build a model, hand it to the one training loop, select by validation.

Kept apart from the evaluation code so that changing scoring or reports never re-trains a model
(this file and what it imports are the train stages' DVC dependencies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainad import metrics as metrics_lib
from brainad.config import FitConfig, StudyConfig
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.models import registry
from brainad.models.checkpoint import load_model
from brainad.models.corruptions import Corrupted
from brainad.scoring.bundle import raw_detector
from brainad.scoring.detector import score_raw
from brainad.utils import write_json

VALIDATION_SEED = 0
"""Seed of the corruptions of the segmenter's validation copy (a definition: every epoch and
every run sees the same corrupted validation images)."""


def _map_auroc(detector, val: SplitArrays) -> tuple[np.ndarray, float]:
    """The detector's one map component of every validation scan, and its ROC-AUC for anomalous
    vs healthy scans (NaN if validation has one class)."""
    scored = score_raw(detector, val.images, val.brain_masks).components
    values = next(iter(scored.values()))
    two_classes = len(np.unique(val.labels)) == 2
    return values, metrics_lib.roc_auc(val.labels, values) if two_classes else float("nan")


def make_validator(val: SplitArrays, device: torch.device):
    """A ``validate(module) -> {"val_recon", "val_auroc"}`` callback on the validation split.

    ``val_recon`` is the mean residual of healthy validation scans; ``val_auroc`` the ROC-AUC of
    that residual for anomalous vs healthy validation scans (NaN if validation has one class).
    """

    def validate(module: nn.Module) -> dict[str, float]:
        residual, auroc = _map_auroc(raw_detector(module.name, module, device), val)
        return {"val_recon": float(residual[val.labels == 0].mean()), "val_auroc": float(auroc)}

    return validate


def make_segmenter_validator(val: SplitArrays, device: torch.device, batch: int = 64):
    """A ``validate(module) -> {"val_seg", "val_auroc"}`` callback for the segmenter.

    ``val_seg`` is the segmenter's own loss on a corrupted copy of the healthy validation scans
    (corruptions drawn with :data:`VALIDATION_SEED`, so every epoch sees the same copy);
    ``val_auroc`` the ROC-AUC of its segmentation score (unsmoothed mean inside the brain) for
    anomalous vs healthy validation scans.
    """
    healthy = val.labels == 0
    if not healthy.any():
        raise ValueError("validation split has no healthy images; the segmenter needs some")
    images = torch.from_numpy(val.images[healthy].astype(np.float32)).to(device)
    brain = torch.from_numpy(val.brain_masks[healthy]).to(device)

    @torch.no_grad()
    def validate(module: nn.Module) -> dict[str, float]:
        corrupted = module.corrupt(images, torch.Generator().manual_seed(VALIDATION_SEED))
        total, pixels = 0.0, 0.0
        for start in range(0, len(images), batch):
            part = Corrupted(
                corrupted.images[start : start + batch], corrupted.target[start : start + batch]
            )
            count = float(brain[start : start + batch].sum())
            total += float(module.loss(part, brain[start : start + batch])) * count
            pixels += count
        _, auroc = _map_auroc(raw_detector(module.name, module, device), val)
        return {"val_seg": total / max(pixels, 1.0), "val_auroc": float(auroc)}

    return validate


def make_prior_validator(val: SplitArrays, device: torch.device):
    """A ``validate(module) -> {"val_nll", "nll_threshold"}`` callback for the token prior: it
    calibrates the resampling threshold on the healthy validation scans (see
    :meth:`brainad.models.prior.VQGANPrior.calibrate`) and reports their mean token NLL."""
    healthy = val.labels == 0
    if not healthy.any():
        raise ValueError("validation split has no healthy images; the token prior needs some")
    images = torch.from_numpy(val.images[healthy].astype(np.float32)).to(device)
    masks = torch.from_numpy(val.brain_masks[healthy]).to(device)

    def validate(module: nn.Module) -> dict[str, float]:
        return module.calibrate(images, masks)

    return validate


def sample_inputs(val: SplitArrays, per_class: int = 4) -> torch.Tensor:
    """A fixed batch of validation scans (healthy first, then anomalous) for sample grids."""
    picks = []
    for label in (0, 1):
        picks += np.flatnonzero(val.labels == label)[:per_class].tolist()
    return torch.from_numpy(val.images[picks].astype(np.float32))


def run_train(
    config: StudyConfig,
    model_name: str,
    arrays_dir: Path,
    model_dir: Path,
    checkpoint_dir: Path,
    report_dir: Path,
) -> dict:
    """Train one registered model (:mod:`brainad.models.registry`) on the healthy training split
    with the one loop, one call per phase. A model with a ``base`` (the token prior) is built on
    the base model's best checkpoint in ``model_dir``, which stays frozen.

    Writes ``<model_dir>/<name>.pt`` (final) and ``<name>-best.pt`` (best by the fit config's
    validation criterion, which evaluation uses), sample grids and DVCLive logs under ``report_dir``.
    """
    from brainad.training.batches import to_tensor
    from brainad.training.loop import FitPaths, fit
    from brainad.utils import seed_everything, select_device

    found = registry.entry(model_name)
    device = select_device()
    val_arrays = load_arrays(arrays_dir / "val.npz")
    train = to_tensor(load_arrays(arrays_dir / "train.npz"), torch.device("cpu"), healthy_only=True)
    if found.base is not None:
        validate = make_prior_validator(val_arrays, device)
    elif found.detector == "segmentation":
        validate = make_segmenter_validator(val_arrays, device)
    else:
        validate = make_validator(val_arrays, device)
    samples = sample_inputs(val_arrays)
    base = None
    if found.base is not None:
        base, _ = load_model(registry.best_file(model_dir, found.base), device="cpu")
    seed_everything(_phase_fit(config, model_name, found.phases[0]).seed)
    module = registry.new_model(model_name, config, int(train.shape[-1]), base=base)
    result = None
    for phase in found.phases:
        validated = phase == found.phases[-1]
        if validated:
            final = registry.final_file(model_dir, model_name)
            best = registry.best_file(model_dir, model_name)
        else:
            final, best = checkpoint_dir / phase / "final.pt", checkpoint_dir / phase / "best.pt"
        if hasattr(module, "set_phase"):
            module.set_phase(phase)
        paths = FitPaths(
            checkpoint_dir / phase,
            final,
            best,
            registry.samples_dir(report_dir, phase),
            registry.live_dir(report_dir, phase),
        )
        result = fit(
            module,
            train,
            _phase_fit(config, model_name, phase),
            paths,
            validate=validate if validated else None,
            sample_batch=samples if validated else None,
            phase=phase,
            device=device,
        )
        if model_name == "dcgan" and phase == "gan":
            _plot_generated(module, report_dir / "generated.png", config.dcgan.fit.seed)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    summary = {
        "model": model_name,
        "epochs": len(result.history),
        "resumed_from": result.resumed_from,
        "last": result.history[-1] if result.history else {},
    }
    write_json(report_dir / "train.json", summary)
    return summary


def _phase_fit(config: StudyConfig, model_name: str, phase: str) -> FitConfig:
    """The fit settings of one phase: the DCGAN's ``gan`` phase uses ``dcgan.fit``, every other
    (last) phase :func:`brainad.models.registry.fit_config`."""
    if model_name == "dcgan" and phase == "gan":
        return config.dcgan.fit
    return registry.fit_config(model_name, config)


def _plot_generated(module, path: Path, seed: int, n: int = 16) -> None:
    """A grid of DCGAN samples G(z) (what the generator learned to draw)."""
    from torchvision.utils import save_image

    from brainad.utils import atomic_path

    generator = torch.Generator().manual_seed(seed)
    module.eval()
    with torch.no_grad():
        images = module.sample(n, generator=generator).float().cpu()
    with atomic_path(path) as tmp:
        save_image(images, tmp, format="png", nrow=8, normalize=True, value_range=(-1, 1))
