"""Params sections of the data stages (prepare, split, preprocess; volumes): one frozen
dataclass per section, fields named as the keys (re-exported by :mod:`brainad.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
        keep: ``representative`` keeps one image per cluster, ``all`` keeps every member,
            ``train_all`` every member in train and one per cluster in val/test.
        val_fraction: fraction of healthy clusters for validation.
        test_fraction: fraction of healthy clusters for test.
        anomaly_val_fraction: fraction of anomalous clusters for validation (the rest go to test).
        seed: split seed.
    """

    hash_distance: int
    keep: Literal["representative", "all", "train_all"]
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
