"""The typed sections of ``params.yaml``: one frozen dataclass per section, fields named as the keys.

``params.yaml`` has two top-level keys:

* ``defaults`` — every section of a study, every value written once;
* ``studies`` — one entry per study; each section there overrides only the keys it names.

:func:`load_study` deep-merges the two and builds frozen dataclasses. An unknown key, a missing key
or a value of the wrong type raises :class:`ConfigError` naming the full key path, so a typo in
``params.yaml`` never turns silently into a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class ConfigError(ValueError):
    """A ``params.yaml`` problem; the message names the key and what to do."""


# --------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SourceConfig:
    """Where the raw images come from.

    Args:
        kind: ``synthetic`` (embedded phantom), ``archive`` (zip/tar by path or http/https/file URL),
            ``folder`` (a directory in the Kaggle layout), ``kaggle`` (kagglehub download) or
            ``nifti`` (a folder ``healthy/<subject>.nii.gz``, ``anomalous/<subject>.nii.gz``).
        uri: archive path/URL, folder path or Kaggle slug; ignored for ``synthetic``.
        sha256: expected archive checksum (hex); empty means "not pinned" (a warning is logged).
        max_members: refuse archives with more members than this (zip-bomb guard).
        max_total_bytes: refuse archives whose members add up to more bytes than this.
        max_compression_ratio: refuse a member that inflates to more than this many times its
            compressed size, or an archive whose extracted data exceed this many times its own
            size (zip-bomb guard; data under 1 MiB are never refused by ratio).
    """

    kind: Literal["synthetic", "archive", "folder", "kaggle", "nifti"]
    uri: str
    sha256: str
    max_members: int
    max_total_bytes: int
    max_compression_ratio: float


@dataclass(frozen=True)
class PhantomConfig:
    """Synthetic brain-like phantom dataset written in the Kaggle folder layout.

    Args:
        n_healthy: healthy slices (class ``notumor``) before duplicates are added.
        n_anomalous: slices with an implanted tumour (class ``glioma``), each with a mask file.
        image_size: side of the written square images in pixels.
        duplicate_fraction: fraction of healthy slices re-written as near-duplicates (resized or
            re-windowed copies) so that de-duplication is exercised like on the real data.
        seed: generator seed; the same seed writes byte-identical files.
    """

    n_healthy: int
    n_anomalous: int
    image_size: int
    duplicate_fraction: float
    seed: int


@dataclass(frozen=True)
class FilterConfig:
    """Which classes, view planes, modalities and sequences a study uses (curation).

    Args:
        healthy_classes: class folders that are healthy; anomaly_classes: those that count as
            anomalies; files of every other class are excluded (counted per class).
        planes, modalities, sequences: labels kept (``[]`` = all); see :mod:`brainad.data.labels`.
        exclude_flags: flags that exclude a slice (``not_brain``, ``strip_failed``,
            ``abnormal_in_healthy``); ``[]`` = none. Excluded files are listed with the reason.
        annotations: hand-annotated sample (CSV, path from the repository root) the labeler is
            fit on; ``""`` = none (labels then come from the source, or are ``unknown``).
        label_holdout: fraction of the annotated duplicate clusters held out to measure accuracy.
        label_seed: seed of the hold-out draw and of the classifiers.
        min_confidence: a predicted label below this probability becomes ``unknown``.
    """

    healthy_classes: tuple[str, ...]
    anomaly_classes: tuple[str, ...]
    planes: tuple[str, ...]
    modalities: tuple[str, ...]
    sequences: tuple[str, ...]
    exclude_flags: tuple[str, ...]
    annotations: str
    label_holdout: float
    label_seed: int
    min_confidence: float


@dataclass(frozen=True)
class SplitConfig:
    """De-duplication and the cluster-level split.

    Args:
        hash_distance: two images whose 64-bit perceptual hashes differ in at most this many bits
            are near-duplicates; clusters are connected components of that relation.
        keep: ``representative`` keeps one image per cluster, ``all`` keeps every member.
        val_fraction: fraction of healthy clusters for validation.
        test_fraction: fraction of healthy clusters for test.
        anomaly_val_fraction: fraction of anomalous clusters for validation (the rest go to test).
        seed: split seed.
    """

    hash_distance: int
    keep: Literal["representative", "all"]
    val_fraction: float
    test_fraction: float
    anomaly_val_fraction: float
    seed: int


@dataclass(frozen=True)
class PreprocessConfig:
    """Decoding, brain extraction, cropping, resizing and intensity normalisation.

    Args:
        image_size: output side in pixels (128 for the thesis study).
        skull_strip: run the OpenCV brain extraction; if false the whole slice is the mask.
        crop_margin: margin around the brain bounding box, as a fraction of its size.
        erosion_px: erosion of the brain mask (at original resolution / 256 px) to drop the skull rim.
        min_coverage: a mask covering less than this fraction of the slice is a failed extraction
            (fall back to the uncropped slice, flagged).
        max_coverage: a mask covering more than this fraction is a failed extraction too.
        normalisation: ``thesis`` maps [0, 1] to [-1, 1] by (x-0.5)/0.5; ``percentile`` and
            ``zscore`` are robust per-image normalisations computed inside the brain mask.
        percentiles: low/high percentiles for ``percentile`` normalisation.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard).
    """

    image_size: int
    skull_strip: bool
    crop_margin: float
    erosion_px: int
    min_coverage: float
    max_coverage: float
    normalisation: Literal["thesis", "percentile", "zscore"]
    percentiles: tuple[float, float]
    max_pixels: int


@dataclass(frozen=True)
class VolumeConfig:
    """Axial slices of 3-D volumes (NIfTI, DICOM series) for ``brainad score`` and the ``nifti``
    source.

    Args:
        slices: ``brain`` (every axial slice whose head region covers ``min_brain_fraction`` of
            it) or ``central`` (the ``central_n`` slices around the middle of the head).
        central_n: slices taken with ``central``.
        min_brain_fraction: head-region fraction a slice needs with ``brain``.
        window_percentiles: per-slice intensity window [low, high] (percentiles of the slice),
            mapped to [0, 1] like a decoded 2-D image.
        take_first_volume: a 4-D volume is scored by its first 3-D volume (else refused).
        top_k: a volume's score is also reported as the mean of its ``top_k`` highest slice
            scores; its ``top_k`` most anomalous slices get PNG overlays.
    """

    slices: Literal["brain", "central"]
    central_n: int
    min_brain_fraction: float
    window_percentiles: tuple[float, float]
    take_first_volume: bool
    top_k: int


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only augmentations (applied on the fly to tensors)."""

    flip: bool
    rotate_deg: float
    contrast: float


# ------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class VQGANConfig:
    """Encoder → EMA vector quantiser → decoder, plus a PatchGAN discriminator.

    Args:
        channels: width of the first encoder stage.
        channel_mult: width multipliers per resolution; each stage after the first halves the
            resolution, so the latent grid is ``image_size / 2**(len(channel_mult)-1)``.
        res_blocks: residual blocks per stage.
        embedding_dim: dimension of a codebook vector.
        codebook_size: number of codebook vectors.
        ema_decay: EMA decay ``λ`` of the codebook update ``e ← e + (1-λ)(z̄ − e)``.
        commitment_weight: weight of the commitment loss ``||z − sg(e)||²``.
        dead_code_threshold: a code whose EMA cluster size falls below this is restarted
            from a random encoder output of the batch.
        disc_channels: width of the first discriminator layer.
        disc_layers: strided layers of the PatchGAN discriminator.
        l1_weight: weight of the L1 reconstruction loss.
        perceptual_weight: weight of the perceptual loss.
        adv_start: adversarial weight at epoch 0.
        adv_slope: increase of the adversarial weight per epoch.
        adv_cap: maximum adversarial weight.
    """

    channels: int
    channel_mult: tuple[int, ...]
    res_blocks: int
    embedding_dim: int
    codebook_size: int
    ema_decay: float
    commitment_weight: float
    dead_code_threshold: float
    disc_channels: int
    disc_layers: int
    l1_weight: float
    perceptual_weight: float
    adv_start: float
    adv_slope: float
    adv_cap: float


@dataclass(frozen=True)
class PerceptualConfig:
    """Feature network for the perceptual loss and the perceptual score component.

    Args:
        kind: ``fixed`` (seeded frozen two-branch conv net, as in the reproduced study) or
            ``vgg16`` (torchvision VGG16 features from a local weights file; never downloaded).
        channels: width of each branch of the fixed network.
        scales: number of scales (the input is average-pooled by 2 between scales).
        seed: seed of the fixed network's weights.
        vgg16_weights: path to a local VGG16 ``state_dict`` file; required for ``vgg16``.
    """

    kind: Literal["fixed", "vgg16"]
    channels: int
    scales: int
    seed: int
    vgg16_weights: str


@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN generator/discriminator and the f-AnoGAN izi encoder.

    Args:
        latent_dim: size of the noise vector.
        channels: base width (generator last layer / discriminator first layer).
        encoder_kappa: weight of the discriminator-feature residual in izi_f encoder training.
        latent_steps: per-image latent optimisation steps (AnoGAN); 0 disables it.
        latent_lr: learning rate of the latent optimisation.
    """

    latent_dim: int
    channels: int
    encoder_kappa: float
    latent_steps: int
    latent_lr: float


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
            validation scans) or ``val_nll`` (token prior: mean token NLL of healthy validation
            scans, lower is better).
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
    select_metric: Literal["val_auroc", "val_recon", "val_nll"]
    divergence_factor: float
    seed: int
    deterministic: bool
    augment: AugmentConfig


@dataclass(frozen=True)
class VQGANStudyConfig:
    """The ``vqgan`` section: model plus its training settings."""

    model: VQGANConfig
    fit: FitConfig


@dataclass(frozen=True)
class DCGANStudyConfig:
    """The ``dcgan`` section: model, GAN training and encoder training settings."""

    model: DCGANConfig
    fit: FitConfig
    encoder_fit: FitConfig


@dataclass(frozen=True)
class PriorConfig:
    """The ``vqgan_prior.model`` section: the token prior over the VQGAN+D latent grid
    (:mod:`brainad.models.prior`).

    Args:
        dim: transformer width.
        layers: transformer layers.
        heads: attention heads (must divide ``dim``).
        dropout: dropout inside the transformer layers (training only).
        train_block_range: [min, max] side, in tokens, of the blocks hidden during training.
        train_blocks: hidden blocks per training image.
        mask_block: side, in tokens, of the blocks hidden one at a time while scoring.
        resample_quantile: tokens whose NLL exceeds this quantile of the NLL of brain tokens of
            healthy validation scans are replaced before decoding.
    """

    dim: int
    layers: int
    heads: int
    dropout: float
    train_block_range: tuple[int, int]
    train_blocks: int
    mask_block: int
    resample_quantile: float


@dataclass(frozen=True)
class PriorStudyConfig:
    """The ``vqgan_prior`` section: the token prior and its training settings (the VQGAN+D is frozen)."""

    model: PriorConfig
    fit: FitConfig


# -------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class ScoreConfig:
    """Residual maps → image scores (one code path for evaluation and the CLI).

    Args:
        residual: pixel residual ``l1`` or ``l2``.
        smoothing: ``none``, ``gaussian`` or ``median`` filtering of residual maps.
        smoothing_px: kernel size for smoothing (odd).
        aggregate: ``mean``, ``topk`` or ``max`` inside the brain mask.
        topk_percent: percentage of highest-residual brain pixels averaged by ``topk``.
        weight_residual: weight of the standardised pixel-residual component.
        weight_ssim: weight of the standardised SSIM-residual component.
        weight_perceptual: weight of the standardised perceptual-residual component.
        weight_discriminator: weight of the standardised discriminator component.
        batch_size: images per scoring batch.
    """

    residual: Literal["l1", "l2"]
    smoothing: Literal["none", "gaussian", "median"]
    smoothing_px: int
    aggregate: Literal["mean", "topk", "max"]
    topk_percent: float
    weight_residual: float
    weight_ssim: float
    weight_perceptual: float
    weight_discriminator: float
    batch_size: int


@dataclass(frozen=True)
class ThresholdConfig:
    """Threshold calibration on validation only.

    Args:
        method: ``fixed``, ``healthy_percentile``, ``youden`` or ``f1_max``.
        fixed_value: threshold for ``fixed`` (the reproduced study used 8.0).
        target_specificity: for ``healthy_percentile``, the fraction of healthy validation scans
            that must fall below the threshold.
    """

    method: Literal["fixed", "healthy_percentile", "youden", "f1_max"]
    fixed_value: float
    target_specificity: float


@dataclass(frozen=True)
class LesionConfig:
    """Synthetic lesions implanted into held-out healthy scans (paired track).

    Args:
        per_image: lesioned copies per healthy test scan.
        radius_range: lesion radius as a fraction of the image side (min, max).
        contrast_range: magnitude range (min, max, both > 0) of the lesion's intensity offset in
            units of the brain's intensity std; the sign comes from ``bright_fraction``.
        bright_fraction: fraction of the offset lesions brighter than the surrounding tissue.
        seed: lesion generator seed.
        in_range_fraction: fraction of lesions whose intensities stay inside the slice's own
            brain range (another tissue's intensity, smooth or textured) instead of an offset.
    """

    per_image: int
    radius_range: tuple[float, float]
    contrast_range: tuple[float, float]
    bright_fraction: float
    seed: int
    in_range_fraction: float


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-split metrics, bootstrap intervals, baselines and the paired lesion track.

    Args:
        bootstrap: bootstrap resamples for confidence intervals.
        ci: confidence level of the intervals.
        pca_components: components of the PCA-reconstruction baseline.
        seed: seed for bootstrap and sampling of figure examples.
        lesions: the paired implanted-lesion track.
    """

    bootstrap: int
    ci: float
    pca_components: int
    seed: int
    lesions: LesionConfig


@dataclass(frozen=True)
class StudyConfig:
    """Everything one study needs; one field per ``params.yaml`` section."""

    name: str
    source: SourceConfig
    phantom: PhantomConfig
    filter: FilterConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    volume: VolumeConfig
    perceptual: PerceptualConfig
    vqgan: VQGANStudyConfig
    dcgan: DCGANStudyConfig
    vqgan_prior: PriorStudyConfig
    score: ScoreConfig
    threshold: ThresholdConfig
    evaluate: EvaluateConfig
