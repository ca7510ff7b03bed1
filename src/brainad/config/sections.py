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

from brainad.config.data import (  # the data stages' sections, part of every study
    FilterConfig,
    PhantomConfig,
    PreprocessConfig,
    SourceConfig,
    SplitConfig,
    VolumeConfig,
)
from brainad.config.fit import FitConfig  # the training loop's sections
from brainad.config.unets import (  # the UNet models' sections
    DAEStudyConfig,
    InpainterStudyConfig,
    SegmenterStudyConfig,
)


class ConfigError(ValueError):
    """A ``params.yaml`` problem; the message names the key and what to do."""


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
class VQGANStudyConfig:
    """The ``vqgan`` section: model plus its training settings."""

    model: VQGANConfig
    fit: FitConfig


@dataclass(frozen=True)
class InputNoiseConfig:
    """The ``vqgan_denoise.noise`` section: the coarse noise added to the training inputs of the
    VQGAN+D on corrupted inputs (:func:`brainad.models.corruptions.coarse_noise`, as the dae's).

    Args:
        noise_res: side of the grid the Gaussian noise is drawn on before it is bilinearly
            upsampled to the image (16 at 128 px: 8-px noise cells).
        noise_std: standard deviation of the noise on the [-1, 1] intensity scale.
    """

    noise_res: int
    noise_std: float


@dataclass(frozen=True)
class DenoisingVQGANStudyConfig:
    """The ``vqgan_denoise`` section: a VQGAN+D (its own ``model`` settings) trained to
    reconstruct each healthy slice from a coarse-noise corrupted copy, and its training settings."""

    model: VQGANConfig
    noise: InputNoiseConfig
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
        weight_asymmetry: weight of the standardised mirror-asymmetry component added to a
            model's score (:mod:`brainad.scoring.combined`); 0 = the model alone.
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
    weight_asymmetry: float
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
class MatchedConfig:
    """The like-with-like comparison of the real track, reported as its headline: anomalous test
    scans of the ``anomalous_sequences`` against healthy test scans of the ``healthy_sequences``,
    both in one of the view ``planes`` (labels of the manifest, :mod:`brainad.data.labels`).

    Args:
        planes: view planes both groups are taken from.
        healthy_sequences: sequence labels of the healthy scans compared.
        anomalous_sequences: sequence labels of the anomalous scans compared.
    """

    planes: tuple[str, ...]
    healthy_sequences: tuple[str, ...]
    anomalous_sequences: tuple[str, ...]


@dataclass(frozen=True)
class EvaluateConfig:
    """Test-split metrics, bootstrap intervals, baselines and the paired lesion track.

    Args:
        bootstrap: bootstrap resamples for confidence intervals.
        ci: confidence level of the intervals.
        pca_components: components of the PCA-reconstruction baseline.
        seed: seed for bootstrap and sampling of figure examples.
        lesions: the paired implanted-lesion track.
        matched: the real track's like-with-like stratum (its headline).
        default_model: the study's default detector (a registered model name), chosen from the
            ablation's validation bake-off; the summary leads with it and says whether the
            current bake-off still picks it.
    """

    bootstrap: int
    ci: float
    pca_components: int
    seed: int
    lesions: LesionConfig
    matched: MatchedConfig
    default_model: str


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
    dae: DAEStudyConfig
    segmenter: SegmenterStudyConfig
    vqgan_denoise: DenoisingVQGANStudyConfig
    inpainter: InpainterStudyConfig
    score: ScoreConfig
    threshold: ThresholdConfig
    evaluate: EvaluateConfig
