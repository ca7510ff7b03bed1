"""The data stages (prepare, split, preprocess) as library functions called by ``stages/*.py``.

Paths come from ``dvc.yaml`` (through the stage's argv), values from the study's typed config.
The prepare, split and preprocess stages' deps are the whole ``data`` package (``dvc.yaml``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from brainad.config import StudyConfig, to_dict
from brainad.data import arrays as arrays_lib
from brainad.data import curation as curation_lib
from brainad.data import datareport as report_lib
from brainad.data import labelfit, stripqc
from brainad.data import manifest as manifest_lib
from brainad.data import qa as qa_lib
from brainad.data import split as split_lib
from brainad.data.arrays import save_arrays
from brainad.data.imageio import read_image
from brainad.data.preprocess import preprocess_slice
from brainad.data.sources import acquire
from brainad.utils import write_json, write_text

log = logging.getLogger("brainad")


def run_prepare(
    config: StudyConfig,
    raw_dir: Path,
    download_dir: Path,
    manifest_path: Path,
    report_path: Path,
    labels_dir: Path | None = None,
) -> dict:
    """Acquire the raw data, filter classes, label every slice (plane, modality, sequence, flags;
    accuracy measured on the held-out annotations), apply the curation filter, and write the
    manifest with the dataset fingerprint; the label report goes to ``labels_dir`` (default: the
    folder ``labels`` beside ``report_path``)."""
    labels_dir = Path(labels_dir) if labels_dir is not None else report_path.with_name("labels")

    curation_lib.check_filter(config.filter)
    result = acquire(config.source, config.phantom, raw_dir, download_dir, config.volume)
    manifest = manifest_lib.build_manifest(result.root, config.filter, config.preprocess.max_pixels)
    clusters = split_lib.cluster_duplicates(manifest.rows, config.split.hash_distance)
    labels = labelfit.label_rows(
        manifest.rows, result.root, clusters.ids, config.filter, config.preprocess.max_pixels
    )
    dropped = curation_lib.apply_filter(manifest.rows, config.filter)
    manifest_lib.write_manifest(manifest_path, manifest)
    write_json(labels_dir / "labels.json", labels)
    markdown = report_lib.labels_markdown(labels, config.name)
    write_text(labels_dir / "labels.md", markdown)
    errors = Counter(row["error"] for row in manifest.rows if row["error"])
    report = {
        "study": config.name,
        "source": result.record,
        "fingerprint": manifest.fingerprint,
        "files": len(manifest.rows),
        "by_class": dict(Counter(row["class_name"] for row in manifest.rows)),
        "by_folder": dict(Counter(row["folder"] for row in manifest.rows)),
        "excluded_by_class": manifest.excluded,
        "unreadable": sum(errors.values()),
        "unreadable_reasons": dict(errors),
        "warnings": manifest.warnings,
        "curated_by_reason": dropped,
        "curated": sum(dropped.values()),
    }
    write_json(report_path, report)
    log.info(
        "prepare: %d files (fingerprint %s…), %d unreadable, excluded %s",
        len(manifest.rows),
        manifest.fingerprint[:12],
        report["unreadable"],
        manifest.excluded,
    )
    return report


def run_split(
    config: StudyConfig, raw_dir: Path, manifest_path: Path, split_path: Path, report_dir: Path
) -> dict:
    """Cluster near-duplicates, split by cluster, report, and draw example clusters."""

    rows = manifest_lib.read_manifest(manifest_path)
    clusters = split_lib.cluster_duplicates(rows, config.split.hash_distance)
    result = split_lib.split_by_cluster(rows, clusters, config.split)
    report = split_lib.split_report(rows, clusters, result, config.split.hash_distance)
    split_lib.write_split(split_path, rows, clusters, result)
    report["strata"] = curation_lib.strata_counts(rows, result.assignment)
    report["sheets"] = report_lib.group_sheets(
        raw_dir, rows, result.assignment, report_dir / "sheets", config.split.seed
    )
    write_json(report_dir / "split.json", report)
    title = f"{config.name}: strata before/after curation"
    markdown = curation_lib.strata_markdown(report["strata"], title, report["sheets"])
    write_text(report_dir / "strata.md", markdown)
    qa_lib.plot_duplicate_clusters(
        raw_dir, rows, clusters, report_dir / "duplicates.png", seed=config.split.seed
    )
    log.info(
        "split: %s; cross-split near-duplicate pairs: %d",
        dict(Counter(result.assignment)),
        report["cross_split_near_duplicate_pairs"],
    )
    return report


def run_preprocess(
    config: StudyConfig,
    raw_dir: Path,
    manifest_path: Path,
    split_path: Path,
    arrays_dir: Path,
    report_dir: Path,
) -> dict:
    """Decode, skull-strip, crop, normalise each split into compact arrays; QA figures and stats.

    Every file of the manifest is accounted for in the report: it is in a split's arrays, was
    quarantined (with its reason), or was not selected by the split stage (with the reason).
    """

    rows = {row["path"]: row for row in manifest_lib.read_manifest(manifest_path)}
    assignment = {r["path"]: r["split"] for r in split_lib.read_split(split_path)}
    missing = sorted(set(rows) - set(assignment))
    if missing:
        raise ValueError(
            f"{split_path}: {len(missing)} manifest files have no split row "
            f"(e.g. {missing[0]}); re-run the split stage"
        )
    report: dict = {
        "study": config.name,
        "config": to_dict(config.preprocess),
        "splits": {},
        "not_selected": dict(Counter(s for s in assignment.values() if s not in split_lib.SPLITS)),
    }
    quarantined: list[dict] = [
        {"path": p, "reason": rows[p]["error"], "stage": "prepare"}
        for p, s in assignment.items()
        if s == "quarantined"
    ]
    records: list[dict] = []
    samples: dict[str, list] = {}
    outputs = {}
    for split in split_lib.SPLITS:
        split_rows = [rows[p] for p, s in assignment.items() if s == split]
        out = arrays_lib.preprocess_files(raw_dir, split_rows, config.preprocess)
        outputs[split] = out.arrays
        quarantined += [
            {"path": q.path, "reason": q.reason, "stage": "preprocess", "split": split}
            for q in out.quarantined
        ]
        records += out.records
        report["splits"][split] = {
            "files_in": len(split_rows),
            "accepted": len(out.arrays.labels),
            "quarantined": len(out.quarantined),
            "by_class": dict(Counter(out.arrays.class_names.tolist())),
        }
        _collect_qa_samples(raw_dir, out, samples, config)
    report["quarantined"] = quarantined
    report["coverage"] = qa_lib.coverage_stats(records)
    annotated = [r for r in rows.values() if r["label_source"] == "annotation"]
    measured = stripqc.measure_rows(raw_dir, annotated, config.preprocess)
    report["strip_qc"] = stripqc.strip_report(records, rows, measured)
    report["strip_qc"]["sheets"] = stripqc.strip_sheets(
        raw_dir, records, rows, config.preprocess, report_dir / "strip_sheets"
    )
    write_text(report_dir / "strip_qc.md", stripqc.strip_markdown(report["strip_qc"], config.name))
    report["files_in"] = len(rows)
    report["accounted"] = sum(
        s["accepted"] + s["quarantined"] for s in report["splits"].values()
    ) + sum(report["not_selected"].values())
    if report["accounted"] != report["files_in"]:
        raise RuntimeError(
            f"preprocess lost files: {report['files_in']} in, {report['accounted']} accounted for"
        )
    for class_name, items in sorted(samples.items()):
        qa_lib.qa_figure(
            items,
            report_dir / f"qa_{class_name}.png",
            title=f"{config.name}: {class_name} (input, mask, output)",
            config=config.preprocess,
        )
    _replace_arrays_dir(arrays_dir, outputs)
    write_json(report_dir / "preprocess.json", report)
    log.info(
        "preprocess: %s; quarantined %d",
        {k: v["accepted"] for k, v in report["splits"].items()},
        len(quarantined),
    )
    return report


def _collect_qa_samples(
    raw_dir: Path, out, samples: dict, config: StudyConfig, per_class: int = 6
) -> None:
    """Keep a few random accepted images per class (re-decoded) for the QA figure."""

    rng = random.Random(f"{config.name}-qa")
    by_class: dict[str, list[int]] = {}
    for index, name in enumerate(out.arrays.class_names.tolist()):
        by_class.setdefault(name, []).append(index)
    for name, indices in by_class.items():
        have = samples.setdefault(name, [])
        for index in rng.sample(indices, min(len(indices), per_class - len(have))):
            path = str(out.arrays.paths[index])
            gray = read_image(raw_dir / path, config.preprocess.max_pixels).gray
            have.append((Path(path).name, gray, preprocess_slice(gray, config.preprocess)))


def _replace_arrays_dir(arrays_dir: Path, outputs: dict) -> None:
    """Write every split into a temporary sibling folder, then swap it in, so a crash never leaves
    a mix of new and old split arrays."""
    import shutil

    tmp = arrays_dir.with_name(f".{arrays_dir.name}.tmp")
    old = arrays_dir.with_name(f".{arrays_dir.name}.old")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for split, arrays in outputs.items():
            save_arrays(tmp / f"{split}.npz", arrays)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if arrays_dir.exists():
        arrays_dir.rename(old)
    tmp.rename(arrays_dir)
    shutil.rmtree(old, ignore_errors=True)
