"""The typed sections of a *volume study* (``volume_studies.<name>`` in ``params.yaml``).

A volume study grades detectors voxel by voxel on 3-D cases with expert labels (BraTS-style
folders): which cases train, choose (validation) and test is fixed in params, detector maps are
computed slice by slice on each case's own grid and judged against the label volume. Unlike a
slice study (``studies``) it has no defaults to merge: each volume study states every key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CHANNELS = ("flair", "t1c")  # sequences a case can give as input channels


@dataclass(frozen=True)
class CasePatterns:
    """File-name patterns (``fnmatch``, inside one case folder) of a case's volumes; ``{case}`` is
    replaced by the case folder's name. ``brainmask`` may be ``""`` (no mask file: the brain is
    every voxel that is non-zero in some input channel)."""

    flair: str
    t1c: str
    label: str
    brainmask: str


@dataclass(frozen=True)
class CaseSourceConfig:
    """Where the cases are.

    Args:
        kind: ``brats`` — a folder with one sub-folder per case (the layout BraTS downloads have).
        uri: that folder (a local path).
        naming: ``auto`` (the first preset whose label and channel files a case has),
            ``brats2013`` (``Flair_*.nii.gz``, ``T1c_*.nii.gz``, ``OTMultiClass.nii.gz``,
            ``brainmask.nii.gz``), ``brats2018`` (2018–2021: ``<case>_flair``, ``_t1ce``, ``_seg``),
            ``brats2023`` (``<case>-t2f``, ``-t1c``, ``-seg``) or ``custom`` (``patterns``).
        patterns: the file patterns used with ``naming: custom`` (ignored otherwise).
        checksums: a ``sha256sum``-format file inside ``uri`` that every file read must match
            (``""`` = not verified; a warning is logged).
    """

    kind: Literal["brats"]
    uri: str
    naming: Literal["auto", "brats2013", "brats2018", "brats2023", "custom"]
    patterns: CasePatterns
    checksums: str


@dataclass(frozen=True)
class RolesConfig:
    """Fixed case roles: ``train`` (healthy slices for methods that learn), ``val`` (every
    choice and threshold), ``test`` (reported only, never used for a choice)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class SliceRulesConfig:
    """Which axial slices are rows, and their class.

    Args:
        min_brain_voxels: a slice with fewer brain voxels is not a brain slice (not used).
        min_tumour_voxels: a brain slice with at least this many label voxels is anomalous; with
            none it is healthy; in between it is excluded from the slice-level metrics (listed).
    """

    min_brain_voxels: int
    min_tumour_voxels: int


@dataclass(frozen=True)
class VoxelDetectorConfig:
    """One row of the voxel table.

    Args:
        name: the row's name in metrics and reports.
        channel: the input sequence (``flair`` | ``t1c``).
        normalisation: per case, inside the brain: ``zscore`` or ``equalise`` (histogram
            equalisation: each voxel's rank among the case's brain voxels, in [0, 1]).
        method: ``intensity`` (the normalised intensity is the map: thresholding),
            ``mirror_difference`` (minus the plain mirror image, positive part),
            ``edge_normalised`` (z-score against healthy training voxels at the same distance
            from the brain's edge: learned normality) or ``mirror_asymmetry`` (the 2-D studies'
            baseline: against the aligned mirror image); :mod:`brainad.scoring.intensity`.
    """

    name: str
    channel: Literal["flair", "t1c"]
    normalisation: Literal["zscore", "equalise"]
    method: Literal["intensity", "mirror_difference", "edge_normalised", "mirror_asymmetry"]


@dataclass(frozen=True)
class VoxelEvaluateConfig:
    """How the voxel table is computed.

    Args:
        smoothing_sigmas: Gaussian sigmas (px) tried on each detector's map; the one with the
            best validation pixel AP is used on test (0 = none). Every variant is reported.
        topk_percent: a slice's score is the mean of its top ``topk_percent`` % brain-voxel map
            values (area-independent, unlike a sum).
        bins: pixel AP, ROC-AUC and best Dice are computed on this many quantile bins of the
            pooled map values (so the subject bootstrap is fast); Dice at a threshold is exact.
        bootstrap: subject-level bootstrap resamples; ci: their central interval; seed: theirs.
        strata: slice-position strata (equal parts of each case's brain extent, inferior first).
        top_k: the volume score is the mean of the top_k slice scores; their positions are
            reported.
    """

    smoothing_sigmas: tuple[float, ...]
    topk_percent: float
    bins: int
    bootstrap: int
    ci: float
    seed: int
    strata: int
    top_k: int


@dataclass(frozen=True)
class VolumeModelsConfig:
    """2-D models of the slice studies, trained here with the one training loop and graded like
    every other row.

    Args:
        study: the slice study (``studies.<study>``) whose model sections, ``preprocess`` (image
            size, normalisation) and ``volume`` (slice windowing) they use.
        names: registered models to train (``[]`` = none).
        channel: the input sequence.
        training: their healthy training slices: ``cases`` — the tumour-free slices of the
            ``train`` cases (the MedIAnomaly/BMAD protocol).
    """

    study: str
    names: tuple[str, ...]
    channel: Literal["flair", "t1c"]
    training: Literal["cases"]


@dataclass(frozen=True)
class ModelVariantConfig:
    """One more trained row: a registered model with another input channel or other healthy
    training data than ``models``.

    Args:
        name: the row's name in metrics and reports (unique among all rows).
        model: the registered model (its ``models.study`` settings).
        channel: the input sequence.
        training: its healthy training slices: ``cases`` (the tumour-free slices of the train
            cases), ``archive`` (the healthy training slices of the slice study
            ``models.study`` whose manifest sequence is one of ``variants.archive_sequences``:
            the cross-dataset protocol) or ``both``.
    """

    name: str
    model: str
    channel: Literal["flair", "t1c"]
    training: Literal["cases", "archive", "both"]


@dataclass(frozen=True)
class VariantsConfig:
    """More trained rows (stage ``volume_variants``), each a :class:`ModelVariantConfig`.

    Args:
        archive_sequences: manifest sequence labels (``brainad.data.labels.SEQUENCES``) of the
            slice study's healthy training slices that ``training: archive | both`` uses.
        rows: the variants (``[]`` = none).
    """

    archive_sequences: tuple[str, ...]
    rows: tuple[ModelVariantConfig, ...]


@dataclass(frozen=True)
class CombinationConfig:
    """A row that adds other rows' maps: each part's raw map is standardised by the mean and std
    of its values on the healthy (label 0) brain voxels of the validation cases, the parts are
    summed with equal weight, and the sum is smoothed and thresholded like every row
    (thresholding combined with learned normality, e.g. FLAIR intensity + a model's residual).

    Args:
        name: the row's name (unique among all rows).
        parts: names of earlier rows (detectors, models or variants), at least two.
    """

    name: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class VolumeStudyConfig:
    """Every section of one volume study."""

    name: str
    source: CaseSourceConfig
    roles: RolesConfig
    slices: SliceRulesConfig
    detectors: tuple[VoxelDetectorConfig, ...]
    models: VolumeModelsConfig
    variants: VariantsConfig
    combinations: tuple[CombinationConfig, ...]
    evaluate: VoxelEvaluateConfig
