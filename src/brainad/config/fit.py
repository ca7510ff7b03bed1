"""The one training loop's params sections: ``<model>.fit`` and its ``augment`` (re-exported by
:mod:`brainad.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentations (applied on the fly to tensors)."""

    flip: bool
    rotate_deg: float
    contrast: float


@dataclass(frozen=True)
class FitConfig:
    """The one training loop's settings (shared by every model).

    Args:
        epochs: training epochs.
        batch_size: images per step (per process under DDP).
        lr: Adam learning rate for every network.
        beta1: Adam beta1.
        beta2: Adam beta2.
        precision: ``auto`` (bf16 autocast where supported), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: use the channels-last memory format.
        compile: wrap networks with ``torch.compile``.
        checkpoint_every: epochs between resumable checkpoints (always also at the last epoch).
        sample_every: epochs between sample-reconstruction grids.
        extra_sample_epochs: epochs that additionally get a grid (the study's epoch 500).
        select_metric: validation criterion for the best model: ``val_recon`` (mean residual of
            healthy validation scans, lower is better), ``val_auroc`` (anomalous vs healthy
            validation scans), ``val_nll`` (token prior: mean token NLL of healthy validation
            scans, lower is better) or ``val_seg`` (segmenter: its loss on a fixed-seed
            corrupted copy of the healthy validation scans, lower is better).
        divergence_factor: stop when the generator loss exceeds this multiple of its first-epoch
            value (NaN/inf always stops).
        seed: seed for weights, batches and augmentation.
        deterministic: force deterministic algorithms (CPU runs are then bit-reproducible).
        augment: training-only augmentations.
    """

    epochs: int
    batch_size: int
    lr: float
    beta1: float
    beta2: float
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    channels_last: bool
    compile: bool
    checkpoint_every: int
    sample_every: int
    extra_sample_epochs: tuple[int, ...]
    select_metric: Literal["val_auroc", "val_recon", "val_nll", "val_seg"]
    divergence_factor: float
    seed: int
    deterministic: bool
    augment: AugmentConfig
