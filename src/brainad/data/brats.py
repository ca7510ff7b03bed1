"""The ``brats`` case source: folders of BraTS-style cases with expert labels, read voxel by voxel.

Layout of ``source.uri``: one sub-folder per case, one NIfTI volume per sequence, a label volume
and optionally a brain mask, named as in one of the presets (``source.naming``) or by
``source.patterns``:

* ``brats2013`` (BraTS 2013/2015 as distributed with DeepMedic): ``Flair_*.nii.gz``,
  ``T1c_*.nii.gz``, ``OTMultiClass.nii.gz``, ``brainmask.nii.gz``;
* ``brats2018`` (2018–2021): ``<case>_flair.nii.gz``, ``<case>_t1ce.nii.gz``, ``<case>_seg.nii.gz``;
* ``brats2023``: ``<case>-t2f.nii.gz``, ``<case>-t1c.nii.gz``, ``<case>-seg.nii.gz``.

Every volume goes through :func:`brainad.data.volumes.read_nifti` (the checks of every volume
reader) and is reoriented to RAS exactly as ``brainad score`` reorients it; the axial slices are
shown in the same radiological orientation (:func:`brainad.data.volumes.slice_image`). Label
voxels > 0 are tumour. The brain is the mask file (> 0.5) or, without one, every voxel that is
non-zero in some input channel (BraTS volumes are skull-stripped with a zero background).

Decisions: a case whose files are missing, unreadable, on different grids or not matching the
checksum file is not used and is listed with the reason (:class:`CaseRejection`); a case with
no label voxel is kept (it has only healthy slices).
"""

from __future__ import annotations

import fnmatch
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainad.config import CasePatterns, CaseSourceConfig, SliceRulesConfig, VolumeConfig
from brainad.data.volumes import Volume, VolumeError, canonical, read_nifti, slice_image
from brainad.utils import file_sha256

log = logging.getLogger("brainad")

PRESETS: dict[str, CasePatterns] = {
    "brats2013": CasePatterns("Flair_*.nii*", "T1c_*.nii*", "OTMultiClass.nii*", "brainmask.nii*"),
    "brats2018": CasePatterns(
        "{case}_flair.nii*", "{case}_t1ce.nii*", "{case}_seg.nii*", "{case}_brainmask.nii*"
    ),
    "brats2023": CasePatterns(
        "{case}-t2f.nii*", "{case}-t1c.nii*", "{case}-seg.nii*", "{case}-brainmask.nii*"
    ),
}
# read_nifti's checks, with a 4-D volume refused (a case's sequences are 3-D)
_STRICT = VolumeConfig("brain", 1, 0.0, (0.0, 100.0), False, 1)


class CaseRejection(NamedTuple):
    """A case that is not used: its folder name and why."""

    case: str
    reason: str


class Case(NamedTuple):
    """One case on its RAS grid (``nibabel.as_closest_canonical``: permuted and flipped, never
    resampled).

    Args:
        subject: the case folder's name.
        channels: ``{sequence: (X, Y, Z) float32}`` raw voxel values.
        label: (X, Y, Z) bool, label > 0.
        brain: (X, Y, Z) bool brain mask.
        reference: the first channel's :class:`Volume` (its grid and affine: maps go back to it).
        files: ``{role: file name}`` of what was read; sha256: ``{role: checksum}``.
    """

    subject: str
    channels: dict[str, np.ndarray]
    label: np.ndarray
    brain: np.ndarray
    reference: Volume
    files: dict[str, str]
    sha256: dict[str, str]


def case_patterns(source: CaseSourceConfig, folder: Path) -> CasePatterns:
    """The patterns for one case folder: ``source.patterns`` (``custom``), the named preset, or
    with ``auto`` the first preset whose label file is in the folder.

    Raises:
        VolumeError: ``auto`` and no preset matches.
    """
    if source.naming == "custom":
        return source.patterns
    if source.naming != "auto":
        return PRESETS[source.naming]
    for patterns in PRESETS.values():
        if _match(folder, patterns.label, required=False) is not None:
            return patterns
    raise VolumeError(
        folder,
        "no label file of a known naming (OTMultiClass.nii.gz, <case>_seg.nii.gz, "
        "<case>-seg.nii.gz); set source.naming: custom and source.patterns in params.yaml",
    )


def _match(folder: Path, pattern: str, required: bool = True) -> Path | None:
    wanted = pattern.replace("{case}", folder.name)
    found = sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name, wanted))
    if len(found) > 1:
        names = [p.name for p in found]
        raise VolumeError(folder, f"{len(found)} files match {wanted!r}: {names}; keep one")
    if not found and required:
        raise VolumeError(folder, f"no file matches {wanted!r}")
    return found[0] if found else None


def read_checksums(source: CaseSourceConfig) -> dict[str, str] | None:
    """``{relative path: sha256}`` of ``source.checksums`` (None when it is ``""``).

    Raises:
        ValueError: the file is named but missing or not in ``sha256sum`` format.
    """
    if not source.checksums:
        log.warning("source.checksums is empty: the case files are not verified")
        return None
    path = Path(source.uri).expanduser() / source.checksums
    if not path.is_file():
        raise ValueError(f'source.checksums: {path} not found; fix the name or set it to ""')
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise ValueError(f"{path}:{number}: not a sha256sum line ('<64 hex>  <path>')")
        sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def discover_cases(source: CaseSourceConfig) -> list[Path]:
    """The case folders of ``source.uri``, sorted by name.

    Raises:
        ValueError: ``source.uri`` is not a folder or has no sub-folder.
    """
    root = Path(source.uri).expanduser()
    if not source.uri or not root.is_dir():
        raise ValueError(
            f"source.uri: {source.uri!r} is not a folder; expected one sub-folder per case "
            "(BraTS layout)"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root}: no case sub-folders; expected one folder per case")
    return folders


def read_case(
    folder: Path,
    source: CaseSourceConfig,
    channels: tuple[str, ...],
    checksums: dict[str, str] | None,
) -> Case:
    """Read one case (the ``channels`` it needs, its label and brain mask).

    Raises:
        VolumeError: a file is missing, ambiguous, unreadable, off its checksum or on another grid.
    """
    patterns = case_patterns(source, folder)
    wanted = {name: getattr(patterns, name) for name in channels}
    wanted["label"] = patterns.label
    paths = {role: _match(folder, pattern) for role, pattern in wanted.items()}
    mask_path = _match(folder, patterns.brainmask, required=False) if patterns.brainmask else None
    if mask_path is not None:
        paths["brainmask"] = mask_path
    sha = {role: _verified(path, folder, checksums) for role, path in paths.items()}
    volumes = {role: read_nifti(path, _STRICT, sha[role]) for role, path in paths.items()}
    reference = volumes[channels[0]]
    for role, volume in volumes.items():
        if volume.data.shape != reference.data.shape or not np.allclose(
            volume.affine, reference.affine, atol=1e-4
        ):
            raise VolumeError(
                paths[role],
                f"grid {volume.data.shape} differs from {paths[channels[0]].name}'s "
                f"{reference.data.shape} (shape or affine); resample it onto the same grid",
            )
    ras = {role: canonical(volume)[0] for role, volume in volumes.items()}
    data = {name: ras[name] for name in channels}
    if "brainmask" in ras:
        brain = ras["brainmask"] > 0.5
    else:
        brain = np.any([np.abs(v) > 0 for v in data.values()], axis=0)
    if not brain.any():
        raise VolumeError(folder, "the brain mask is empty")
    files = {role: path.name for role, path in paths.items()}
    return Case(folder.name, data, ras["label"] > 0, brain, reference, files, sha)


def _verified(path: Path, folder: Path, checksums: dict[str, str] | None) -> str:
    digest = file_sha256(path)
    if checksums is None:
        return digest
    key = f"{folder.name}/{path.name}"
    if key not in checksums:
        raise VolumeError(path, f"not listed in the checksum file (expected an entry {key!r})")
    if checksums[key] != digest:
        raise VolumeError(path, f"sha256 {digest[:12]}… differs from the checksum file's")
    return digest


def read_cases(
    source: CaseSourceConfig, subjects: tuple[str, ...], channels: tuple[str, ...]
) -> tuple[dict[str, Case], list[CaseRejection], list[str]]:
    """Read the cases named in ``subjects``: ``({subject: Case}, rejected, unused case names)``.

    Raises:
        ValueError: a subject has no case folder (the message lists those found).
    """
    folders = {p.name: p for p in discover_cases(source)}
    missing = [s for s in subjects if s not in folders]
    if missing:
        raise ValueError(
            f"roles: case(s) {missing} not found under {source.uri}; found {sorted(folders)}"
        )
    checksums = read_checksums(source)
    cases, rejected = {}, []
    for subject in subjects:
        try:
            cases[subject] = read_case(folders[subject], source, channels, checksums)
        except VolumeError as exc:
            log.warning("case %s not used: %s", subject, exc)
            rejected.append(CaseRejection(subject, str(exc)))
    unused = sorted(set(folders) - set(subjects))
    return cases, rejected, unused


# ------------------------------------------------------------------------------------ slices
def normalise(values: np.ndarray, brain: np.ndarray, how: str) -> np.ndarray:
    """Per-case intensity normalisation inside ``brain`` (0 outside): ``zscore`` or
    ``equalise`` (each voxel's rank among the brain voxels, scaled to [0, 1]; ties share a rank)."""
    inside = values[brain].astype(np.float64)
    out = np.zeros(values.shape, np.float32)
    if how == "zscore":
        std = inside.std()
        out[brain] = (inside - inside.mean()) / (std if std > 0 else 1.0)
    elif how == "equalise":
        ordered = np.sort(inside)
        rank = np.searchsorted(ordered, inside, side="right") - 1
        out[brain] = rank / max(len(inside) - 1, 1)
    else:
        raise ValueError(f"normalisation: unknown {how!r}; use zscore or equalise")
    return out


class SliceRow(NamedTuple):
    """One axial brain slice of a case: its RAS index, position in the brain's extent (0 =
    lowest brain slice, 1 = highest), voxel counts and class (``healthy`` | ``anomalous`` |
    ``excluded``)."""

    subject: str
    slice: int
    position: float
    brain_voxels: int
    tumour_voxels: int
    status: str


def slice_rows(case: Case, rules: SliceRulesConfig) -> list[SliceRow]:
    """The brain slices of ``case`` (at least ``rules.min_brain_voxels`` brain voxels)."""
    brain = case.brain.sum(axis=(0, 1))
    tumour = (case.label & case.brain).sum(axis=(0, 1))
    ks = [int(k) for k in np.nonzero(brain >= max(rules.min_brain_voxels, 1))[0]]
    if not ks:
        return []
    low, high = ks[0], ks[-1]
    rows = []
    for k in ks:
        t = int(tumour[k])
        status = (
            "healthy" if t == 0 else "anomalous" if t >= rules.min_tumour_voxels else "excluded"
        )
        position = (k - low) / max(high - low, 1)
        rows.append(SliceRow(case.subject, k, position, int(brain[k]), t, status))
    return rows


def slice_stack(volume: np.ndarray, ks: list[int]) -> np.ndarray:
    """(N, 1, H, W) images of the axial slices ``ks`` of a RAS ``volume`` (radiological view)."""
    if not ks:
        return np.zeros((0, 1, volume.shape[1], volume.shape[0]), volume.dtype)
    return np.stack([slice_image(volume, k) for k in ks])[:, None]
