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
from brainad.scoring.detector import score_raw
from brainad.scoring.gan import SELECTION_SCORE, GANDetector
from brainad.utils import write_json


def make_validator(val: SplitArrays, device: torch.device):
    """A ``validate(module) -> {"val_recon", "val_auroc"}`` callback on the validation split.

    ``val_recon`` is the mean residual of healthy validation scans; ``val_auroc`` the ROC-AUC of
    that residual for anomalous vs healthy validation scans (NaN if validation has one class).
    """
    images = val.images
    masks = val.brain_masks
    labels = val.labels
    two_classes = len(np.unique(labels)) == 2

    def validate(module: nn.Module) -> dict[str, float]:
        detector = GANDetector(
            module.name, module, SELECTION_SCORE, nn.Identity(), device, components=("residual",)
        )
        residual = score_raw(detector, images, masks).components["residual"]
        auroc = metrics_lib.roc_auc(labels, residual) if two_classes else float("nan")
        return {"val_recon": float(residual[labels == 0].mean()), "val_auroc": float(auroc)}

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
    validate = (
        make_prior_validator(val_arrays, device)
        if found.base is not None
        else make_validator(val_arrays, device)
    )
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
