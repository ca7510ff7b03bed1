"""Volumes in ``brainad score``: NIfTI files and DICOM series, scored slice by slice.

A volume is read and sliced by :mod:`brainad.data.volumes` (DICOM series assembled by
:mod:`brainad.data.dicom`); every axial slice goes through the study's ``preprocess_slice`` and the
one detector engine (``Engine.prepare_slice``, ``Engine.score``), exactly like a 2-D image. Rows:

* one ``level=slice`` row per scored slice (``slice``: index along the superior axis of the
  canonical RAS grid; score, prediction, fallback, components);
* one ``level=volume`` row: ``score`` is the maximum slice score, ``slice`` the slice that drove
  it, ``top_k_mean`` the mean of the ``volume.top_k`` highest slice scores, ``prediction`` 1 when
  any slice is flagged, ``map`` the NIfTI map (relative to ``--out``), ``reason`` any note (a
  non-axial acquisition, the first of a 4-D volume).

A volume that cannot be scored is one quarantined ``level=volume`` row whose reason names the file
(a DICOM file without pixel data is its own quarantined row; the rest of its series is scored).
Maps (unless ``--maps none``): ``maps/<sha12>_<name>_map.nii.gz`` — the model's maps resampled
from its S² back to each slice's grid (crop and resize undone), in the input's shape and affine,
0 on slices not scored; DICOM series get NIfTI maps too — and PNG overlays of the ``top_k`` most
anomalous slices, ``maps/<sha12>_<name>_slice<k>.png``. With ``--resume`` a volume already
recorded under the same path with the same sha256 is skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from brainad.cli.inputs import Item, shown
from brainad.cli.maps import draw
from brainad.cli.report import progress_bar
from brainad.cli.results import VOLUME_MAPS_NAME
from brainad.data.dicom import group_series, read_series
from brainad.data.preprocess import restore_map
from brainad.data.volumes import (
    Slices,
    Volume,
    VolumeError,
    nifti_stem,
    read_nifti,
    save_nifti,
    slice_volume,
    volume_map,
)
from brainad.utils import file_sha256

if TYPE_CHECKING:
    from brainad.cli.batch import Session
    from brainad.cli.score import Engine
    from brainad.config import VolumeConfig

log = logging.getLogger("brainad")

NO_VOLUME_SETTINGS = (
    "the scorer bundle has no volume settings (written before volume support); re-run the "
    "evaluate stage to score NIfTI/DICOM volumes"
)


class VolumeInput(NamedTuple):
    """One volume to score: shown ``path``, real ``target``, ``sha256``, output ``name`` and the
    call that reads it (raises :class:`VolumeError`)."""

    path: str
    target: str
    sha256: str
    name: str
    load: Callable[[], Volume]


def _nifti_input(item: Item, config: VolumeConfig) -> VolumeInput | dict:
    if item.problem:
        return _row(item.shown, item.target, "", status="quarantined", reason=item.problem)
    try:
        digest = item.sha256 or file_sha256(item.path)
    except OSError as exc:
        reason = f"cannot be read ({exc.strerror or exc})"
        return _row(item.shown, item.target, "", status="quarantined", reason=reason)
    stem = nifti_stem(item.path.name)
    return VolumeInput(
        item.shown, item.target, digest, stem, lambda: read_nifti(item.path, config, digest)
    )


def volume_inputs(
    volumes: Sequence[Item], dicom: Sequence[Item], config: VolumeConfig
) -> list[VolumeInput | dict]:
    """NIfTI files and DICOM series (grouped by SeriesInstanceUID) to score, and a quarantine row
    for each file that is not part of a usable series."""
    found: list[VolumeInput | dict] = [_nifti_input(item, config) for item in volumes]
    bad = [i for i in dicom if i.problem]
    found += [_row(i.shown, i.target, "", status="quarantined", reason=i.problem) for i in bad]
    shown_of = {i.path: i.shown for i in dicom}
    series, problems = group_series([i.path for i in dicom if not i.problem])
    for problem in problems:
        found.append(
            _row(shown_of[problem.path], "", "", status="quarantined", reason=problem.reason)
        )
    for s in series:
        found.append(
            VolumeInput(shown(s.folder), "", s.sha256, s.name, lambda s=s: read_series(s, config))
        )
    return found


def _row(path: str, target: str, sha256: str, **fields: Any) -> dict:
    return {
        "path": path,
        "target": shown(target or ""),
        "sha256": sha256,
        "level": "volume",
        **fields,
    }


# ------------------------------------------------------------------------------------ scoring
def score_volumes(
    engine: Engine, session: Session, volumes: Sequence[Item], dicom: Sequence[Item]
) -> Counter[str]:
    """Score every volume, append its rows, write its maps; returns the outcomes."""
    outcomes: Counter[str] = Counter()
    if not volumes and not dicom:
        return outcomes
    config = engine.bundle.volume
    if config is None:
        rows = [
            _row(i.shown, i.target, "", status="quarantined", reason=NO_VOLUME_SETTINGS)
            for i in [*volumes, *dicom]
        ]
        log.warning("%d volume files quarantined: %s", len(rows), NO_VOLUME_SETTINGS)
        session.writer.write(rows)
        return Counter({"quarantined": len(rows), "row quarantined": len(rows)})
    entries = volume_inputs(volumes, dicom, config)
    with progress_bar() as progress:
        task = progress.add_task("volumes", total=len(entries))
        for entry in entries:
            outcomes += _record(engine, session, entry, config)
            progress.advance(task)
    return outcomes


def _record(
    engine: Engine, session: Session, entry: VolumeInput | dict, config: VolumeConfig
) -> Counter[str]:
    """Score one volume (or write its quarantine row); its outcomes."""
    outcomes: Counter[str] = Counter()
    rows = [entry] if isinstance(entry, dict) else _score_one(engine, session, entry, config)
    if rows is None:  # --resume: counted as it was recorded
        known = session.previous.first_path.get(entry.sha256)
        outcomes["already recorded"] += 1
        outcomes["quarantined" if known and known.status == "quarantined" else "scored"] += 1
        return outcomes
    status = rows[-1]["status"]
    outcomes["scored" if status == "scored" else "quarantined"] += 1
    outcomes[f"volume {status}"] += 1
    outcomes["slices scored"] += sum(r["level"] == "slice" for r in rows)
    outcomes["slices flagged"] += sum(r["level"] == "slice" and r["prediction"] for r in rows)
    if status == "quarantined":
        log.warning("%s: quarantined: %s", rows[-1]["path"], rows[-1]["reason"])
    session.writer.write(rows)
    return outcomes


def _score_one(
    engine: Engine, session: Session, entry: VolumeInput, config: VolumeConfig
) -> list[dict] | None:
    """The rows of one volume (``None``: already recorded), maps written."""
    if (entry.path, entry.sha256) in session.previous.pairs:
        return None
    base = _row(entry.path, entry.target, entry.sha256, volume=entry.name)
    try:
        volume = entry.load()
        slices = slice_volume(volume, config)
        pre = [engine.prepare_slice(image) for image in slices.images]
    except VolumeError as exc:
        where = shown(exc.path)
        reason = exc.reason if where == entry.path else f"{where}: {exc.reason}"
        return [{**base, "status": "quarantined", "reason": reason}]
    except ValueError as exc:  # preprocess_slice refused a slice
        return [{**base, "status": "quarantined", "reason": f"preprocessing failed: {exc}"}]
    for note in slices.notes:
        log.info("%s: %s", entry.path, note)
    keep_maps = session.options.maps.kind != "none"
    scores, predictions, components, maps = _score_slices(engine, session, pre, keep_maps)
    rows = []
    for i, k in enumerate(slices.indices):
        row = {**base, "level": "slice", "slice": k, "status": "scored"}
        row.update(score=float(scores[i]), threshold=session.threshold)
        row.update(prediction=int(predictions[i]), fallback=bool(pre[i].fallback))
        row.update({f"component_{c}": float(v[i]) for c, v in components.items()})
        rows.append(row)
    top = np.argsort(-scores, kind="stable")[: max(1, config.top_k)]
    volume_row = {**base, "status": "scored", "reason": "; ".join(slices.notes)}
    volume_row.update(score=float(scores[top[0]]), threshold=session.threshold)
    volume_row.update(prediction=int(predictions.max()), slice=slices.indices[int(top[0])])
    volume_row["top_k_mean"] = float(scores[top].mean())
    if keep_maps:
        volume_row["map"] = _write_maps(session, entry, volume, slices, pre, maps, rows, top)
    return [*rows, volume_row]


def _score_slices(
    engine: Engine, session: Session, pre: list, keep_maps: bool
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[np.ndarray]]:
    """Scores, predictions, components and (if kept) maps of the preprocessed slices, scored in
    chunks of ``--batch-size`` (float16 images, as the arrays of the evaluate stage)."""
    scores, predictions, maps = [], [], []
    components: dict[str, list[np.ndarray]] = {}
    size = session.options.batch_size
    for start in range(0, len(pre), size):
        chunk = pre[start : start + size]
        images = np.stack([p.image for p in chunk])[:, None].astype(np.float16)
        masks = np.stack([p.mask for p in chunk])[:, None]
        scored = engine.score(images, masks, keep_maps)
        scores.append(np.asarray(scored.score, np.float64))
        predictions.append(np.asarray(scored.prediction, np.int64))
        for name, values in scored.components.items():
            components.setdefault(name, []).append(np.asarray(values, np.float64))
        if keep_maps and scored.maps is not None:
            maps += [np.asarray(m[0], np.float32) for m in scored.maps]
    joined = {name: np.concatenate(v) for name, v in components.items()}
    return np.concatenate(scores), np.concatenate(predictions), joined, maps


def _write_maps(
    session: Session,
    entry: VolumeInput,
    volume: Volume,
    slices: Slices,
    pre: list,
    maps: list[np.ndarray],
    rows: list[dict],
    top: np.ndarray,
) -> str:
    """The NIfTI map in the input's grid and PNGs of the top slices; returns the map's path
    relative to ``--out``."""
    if not maps:
        return ""
    folder = session.out / VOLUME_MAPS_NAME
    prefix = f"{entry.sha256[:12]}_{entry.name}"
    per_slice = {
        k: restore_map(maps[i], pre[i].box, slices.images[i].shape)
        for i, k in enumerate(slices.indices)
    }
    path = folder / f"{prefix}_map.nii.gz"
    save_nifti(path, volume_map(volume, slices, per_slice), volume.affine)
    for i in top.tolist():
        picture = folder / f"{prefix}_slice{slices.indices[i]:04d}.png"
        fields = {**rows[i], "path": f"{entry.name} slice {slices.indices[i]}"}
        draw(picture, fields, pre[i].image, maps[i])
    return Path(VOLUME_MAPS_NAME, path.name).as_posix()
