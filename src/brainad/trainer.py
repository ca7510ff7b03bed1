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
from brainad.config import ScoreConfig, StudyConfig
from brainad.data.arrays import SplitArrays, load_arrays
from brainad.scoring import Scorer
from brainad.utils import write_json

# ------------------------------------------------------------------- validation during training
VALIDATION_SCORE = ScoreConfig(
    residual="l1",
    smoothing="none",
    smoothing_px=1,
    aggregate="mean",
    topk_percent=1.0,
    weight_residual=1.0,
    weight_ssim=0.0,
    weight_perceptual=0.0,
    weight_discriminator=0.0,
    batch_size=64,
)
"""The fixed criterion that model selection uses during training: mean absolute residual inside
the brain mask. It is a definition, not a tunable value, so changing the ``score`` params never
invalidates trained models."""


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
        scorer = Scorer(module, VALIDATION_SCORE, nn.Identity(), device, components=("residual",))
        residual = scorer.score_arrays(images, masks).components["residual"]
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
    base_model: Path | None = None,
) -> dict:
    """Train one model (``vqgan``, ``dcgan`` or ``prior``) on the healthy training split with the
    one loop. ``prior`` trains the token prior of the VQGAN+D in ``base_model`` (kept frozen).

    Writes ``<model_dir>/<model>.pt`` (final) and ``<model>-best.pt`` (best by the fit config's
    validation criterion, which evaluation uses), sample grids and DVCLive logs under ``report_dir``.
    """
    from brainad.data.dataset import to_tensor
    from brainad.training import FitPaths, fit
    from brainad.utils import seed_everything, select_device

    device = select_device()
    train_arrays = load_arrays(arrays_dir / "train.npz")
    val_arrays = load_arrays(arrays_dir / "val.npz")
    train = to_tensor(train_arrays, torch.device("cpu"), healthy_only=True)
    size = int(train.shape[-1])
    validate = (
        make_prior_validator(val_arrays, device)
        if model_name == "prior"
        else make_validator(val_arrays, device)
    )
    samples = sample_inputs(val_arrays)

    def fit_phase(
        module: nn.Module, fit_config, phase: str, final: Path, best: Path, validated: bool
    ):
        """One call of the one loop: checkpoints under ``checkpoint_dir/phase``, reports under
        ``report_dir``; ``validated`` phases select by validation and draw sample grids."""
        paths = FitPaths(
            checkpoint_dir / phase,
            final,
            best,
            report_dir / f"samples_{phase}",
            report_dir / f"live_{phase}",
        )
        return fit(
            module,
            train,
            fit_config,
            paths,
            validate=validate if validated else None,
            sample_batch=samples if validated else None,
            phase=phase,
            device=device,
        )

    final, best = model_dir / f"{model_name}.pt", model_dir / f"{model_name}-best.pt"
    if model_name == "vqgan":
        from brainad.models.vqgan import VQGAN

        seed_everything(config.vqgan.fit.seed)
        module = VQGAN(config.vqgan.model, config.perceptual, size)
        result = fit_phase(module, config.vqgan.fit, "main", final, best, validated=True)
    elif model_name == "dcgan":
        from brainad.models.dcgan import DCGAN

        seed_everything(config.dcgan.fit.seed)
        module = DCGAN(config.dcgan.model, size)
        module.set_phase("gan")
        gan_dir = checkpoint_dir / "gan"
        fit_phase(module, config.dcgan.fit, "gan", gan_dir / "final.pt", gan_dir / "best.pt", False)
        _plot_generated(module, report_dir / "generated.png", config.dcgan.fit.seed)
        module.set_phase("encoder")
        result = fit_phase(module, config.dcgan.encoder_fit, "encoder", final, best, True)
    elif model_name == "prior":
        from brainad.checkpoint import load_model
        from brainad.models.prior import VQGANPrior

        if base_model is None:
            raise ValueError("training the token prior needs the trained VQGAN+D (--base-model)")
        vqgan, _ = load_model(base_model, device="cpu")
        seed_everything(config.prior.fit.seed)
        module = VQGANPrior(vqgan.spec(), config.prior.model)
        module.vqgan.load_state_dict(vqgan.state_dict())
        result = fit_phase(module, config.prior.fit, "main", final, best, validated=True)
    else:
        raise ValueError(f"unknown model {model_name!r}; expected 'vqgan', 'dcgan' or 'prior'")
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
