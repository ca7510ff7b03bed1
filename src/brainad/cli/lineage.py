"""``brainad audit STUDY [--metric KEY] [--json]``: where a study's numbers came from, readably.

The lineage is read from ``dvc.lock`` (what DVC recorded when each stage last ran) and checked
against the workspace with DVC's own status (what changed since):

* the stage that wrote the metric (``--metric``: a dotted key of a ``metrics.json`` the study's
  stages wrote, e.g. ``segmenter.lesion.roc_auc`` or ``dae.pixel_ap``), then every stage
  upstream of it (a stage is upstream when one of its outputs is, or contains, a dependency),
  nearest first; without ``--metric``, every stage of the study;
* per stage: its command, its code (``src/`` and ``stages/`` dependencies with their hashes), its
  params (scalars shown, sections by the sha256 of their JSON), its data dependencies and its
  outputs — model weights (``.pt``) and arrays with their checksums;
* the data at the root: the dataset fingerprint and source checksum of a slice study
  (``prepare.json``), every case file's sha256 of a volume study (``evaluation.json``), each
  re-verified against the files (:func:`verify_files`);
* anything where the workspace no longer matches ``dvc.lock`` is marked **changed**, naming the
  dependency, output or params.

The Markdown is for a person; ``--json`` gives the same record as JSON. Exit status 1 when data
files differ from what the results were computed on, 0 otherwise (changed code or params are
reported, not failures: they mean "re-run", not "tampered").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from pathlib import Path

CODE_PREFIXES = ("src/", "stages/")
SHOWN_PARAMS_CHARS = 160  # a params section longer than this (as JSON) is shown by its hash


def lock_stages(root: Path) -> dict:
    """Every stage recorded in ``root/dvc.lock``."""
    import yaml

    path = root / "dvc.lock"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `dvc repro` for the study first")
    return (yaml.safe_load(path.read_text()) or {}).get("stages") or {}


def _flat(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out: dict = {}
        for key, inner in value.items():
            out.update(_flat(inner, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def find_metric(stages: dict, root: Path, study: str, key: str) -> tuple[str, str, object]:
    """``(stage, metrics file, value)`` of the metric ``key`` among the study's stages.

    Raises:
        ValueError: no metrics file of the study holds ``key`` (the message lists some keys).
    """
    known: list[str] = []
    for name, stage in stages.items():
        if not name.endswith(f"@{study}"):
            continue
        for out in stage.get("outs", []):
            path = root / out["path"]
            if out["path"].endswith("metrics.json") and path.is_file():
                flat = _flat(json.loads(path.read_text()))
                if key in flat:
                    return name, out["path"], flat[key]
                known += list(flat)[:5]
    raise ValueError(
        f"--metric {key}: no metrics.json of study {study!r} in dvc.lock holds it; "
        f"keys look like {known[:8]}"
    )


def _inside(dep: str, out: str) -> bool:
    return dep == out or dep.startswith(out.rstrip("/") + "/")


def upstream(stages: dict, start: list[str]) -> list[str]:
    """``start`` and every stage upstream of it, each stage before everything it depends on
    (nearest first: the metric's stage, ..., prepare)."""
    producers = [(o["path"], n) for n, s in stages.items() for o in s.get("outs", [])]
    feeds = {
        name: [n for d in stage.get("deps", []) for out, n in producers if _inside(d["path"], out)]
        for name, stage in stages.items()
    }
    found, queue = [], deque(start)
    while queue:  # breadth first: the set, and the order among equals
        name = queue.popleft()
        if name not in found:
            found.append(name)
            queue.extend(n for n in feeds[name] if n != name)
    users = {n: {m for m in found if n in feeds[m] and m != n} for n in found}
    order: list[str] = []
    while len(order) < len(found):
        ready = [n for n in found if n not in order and users[n] <= set(order)]
        order += ready[:1] or [n for n in found if n not in order]  # DVC has no cycles
    return order


def changes(root: Path, names: list[str]) -> dict[str, list[str]]:
    """What DVC's status reports changed, per stage (empty list: matches ``dvc.lock``)."""
    from dvc.repo import Repo

    found: dict[str, list[str]] = {n: [] for n in names}
    here = os.getcwd()
    os.chdir(root)  # DVC resolves stage targets against the working folder
    try:
        with Repo(".") as repo:
            status = repo.status(targets=names)
    finally:
        os.chdir(here)
    for target, entries in status.items():
        name = target.split(":")[-1]
        for entry in entries:
            if isinstance(entry, str):
                found.setdefault(name, []).append(entry)
                continue
            for kind, paths in entry.items():
                for path, what in paths.items() if isinstance(paths, dict) else []:
                    found.setdefault(name, []).append(f"{kind}: {path} ({what})")
    return found


def _params(stage: dict) -> dict:
    shown = {}
    for key, value in (stage.get("params") or {}).get("params.yaml", {}).items():
        if isinstance(value, dict | list):
            text = json.dumps(value, sort_keys=True)
            if len(text) > SHOWN_PARAMS_CHARS:  # a whole section: its hash, not 300 lines
                digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                value = f"section of {len(_flat(value))} values, sha256 {digest}"
            else:
                value = text
        shown[key] = value
    return shown


def _entry(path: str, record: dict) -> dict:
    return {"path": path, "md5": record.get("md5"), "files": record.get("nfiles")}


def stage_record(name: str, stage: dict, changed: list[str]) -> dict:
    """One stage of the lineage: command, code, params, data, outputs, what changed."""
    deps = stage.get("deps", [])
    code = [_entry(d["path"], d) for d in deps if d["path"].startswith(CODE_PREFIXES)]
    data = [_entry(d["path"], d) for d in deps if not d["path"].startswith(CODE_PREFIXES)]
    return {
        "stage": name,
        "cmd": stage.get("cmd"),
        "code": code,
        "params": _params(stage),
        "data": data,
        "outs": [_entry(o["path"], o) for o in stage.get("outs", [])],
        "changed": changed,
    }


def verify_files(root: Path, stages: dict, study: str) -> dict:
    """The data at the root of the lineage, re-verified: a slice study's manifest files against
    its ``prepare.json`` fingerprint, or a volume study's case files against the sha256 its
    ``evaluation.json`` recorded."""
    prepare = stages.get(f"prepare@{study}")
    if prepare is not None:
        return _verify_slice_study(root, prepare)
    voxels = stages.get(f"voxels@{study}")
    if voxels is not None:
        return _verify_volume_study(root, voxels)
    raise ValueError(f"dvc.lock has no prepare@{study} or voxels@{study}: run the study first")


def _verify_slice_study(root: Path, prepare: dict) -> dict:
    from brainad.data.manifest import fingerprint, read_manifest

    outs = [o["path"] for o in prepare["outs"]]
    raw = root / next(o for o in outs if not Path(o).suffix)
    report = json.loads((root / next(o for o in outs if o.endswith(".json"))).read_text())
    rows = read_manifest(root / next(o for o in outs if o.endswith(".jsonl")))
    changed, missing = [], []
    for row in rows:
        file = raw / row["path"]
        if not file.is_file():
            missing.append(row["path"])
        elif hashlib.sha256(file.read_bytes()).hexdigest() != row["sha256"]:
            changed.append(row["path"])
    recomputed = fingerprint(rows)
    return {
        "kind": "slice study",
        "source": report.get("source"),
        "dataset_fingerprint": report["fingerprint"],
        "fingerprint_recomputed": recomputed,
        "fingerprint_matches": recomputed == report["fingerprint"],
        "files_verified": len(rows) - len(changed) - len(missing),
        "files_changed": changed,
        "files_missing": missing,
    }


def _verify_volume_study(root: Path, voxels: dict) -> dict:
    out = next(o["path"] for o in voxels["outs"] if o["path"].endswith("evaluation.json"))
    evaluation = json.loads((root / out).read_text())
    base = Path(evaluation["config"]["source"]["uri"])
    base = base if base.is_absolute() else root / base
    changed, missing, verified = [], [], 0
    for case, found in evaluation["cases"].items():
        for channel, name in found["files"].items():
            file = base / case / name
            if not file.is_file():
                missing.append(f"{case}/{name}")
            elif hashlib.sha256(file.read_bytes()).hexdigest() != found["sha256"][channel]:
                changed.append(f"{case}/{name}")
            else:
                verified += 1
    return {
        "kind": "volume study",
        "source": evaluation["config"]["source"],
        "roles": evaluation["roles"],
        "files_verified": verified,
        "files_changed": changed,
        "files_missing": missing,
        "fingerprint_matches": True,
    }


def lineage(study: str, root: Path, metric: str | None = None) -> dict:
    """The machine form of the audit (the Markdown is :func:`render`)."""
    stages = lock_stages(root)
    ours = [n for n in stages if n.endswith(f"@{study}")]
    if not ours:
        raise ValueError(f"dvc.lock has no stage of study {study!r}; run `dvc repro` for it first")
    record: dict = {"study": study, "metric": None}
    if metric is not None:
        name, path, value = find_metric(stages, root, study, metric)
        record["metric"] = {"key": metric, "value": value, "file": path, "stage": name}
        names = upstream(stages, [name])
    else:
        names = upstream(stages, ours)
    found = changes(root, names)
    record["stages"] = [stage_record(n, stages[n], found.get(n, [])) for n in names]
    record["data"] = verify_files(root, stages, study)
    record["current"] = not any(s["changed"] for s in record["stages"])
    return record


def _mark(changed: list[str]) -> str:
    return "**changed** since `dvc.lock`" if changed else "matches `dvc.lock`"


def _stage_lines(stage: dict) -> list[str]:
    lines = [f"### `{stage['stage']}` — {_mark(stage['changed'])}", "", f"`{stage['cmd']}`", ""]
    lines += [f"- changed: {c}" for c in stage["changed"]]
    lines += [f"- code: `{c['path']}` md5 {c['md5']}" for c in stage["code"]]
    lines += [f"- params: `{k}` = {v}" for k, v in stage["params"].items()]
    lines += [f"- input: `{d['path']}` md5 {d['md5']}" for d in stage["data"]]
    for out in stage["outs"]:
        kind = "weights" if out["path"].endswith(".pt") else "output"
        files = f" ({out['files']} files)" if out["files"] else ""
        lines.append(f"- {kind}: `{out['path']}` md5 {out['md5']}{files}")
    return [*lines, ""]


def _data_lines(data: dict) -> list[str]:
    lines = [f"## The data ({data['kind']})", ""]
    if "dataset_fingerprint" in data:
        ok = "matches" if data["fingerprint_matches"] else "**does not match**"
        lines.append(f"- dataset fingerprint {data['dataset_fingerprint']} ({ok} the files now)")
    source = data.get("source") or {}
    for key in ("kind", "uri", "sha256", "checksums"):
        if source.get(key):
            lines.append(f"- source {key}: {source[key]}")
    for role, cases in (data.get("roles") or {}).items():
        lines.append(f"- {role} cases: {', '.join(cases)}")
    lines.append(
        f"- files re-verified by sha256: {data['files_verified']} ok, "
        f"{len(data['files_changed'])} changed, {len(data['files_missing'])} missing"
    )
    lines += [f"  - changed: {p}" for p in data["files_changed"][:20]]
    lines += [f"  - missing: {p}" for p in data["files_missing"][:20]]
    return [*lines, ""]


def render(record: dict) -> str:
    """The audit as Markdown."""
    lines = [f"# Audit of study `{record['study']}`", ""]
    metric = record["metric"]
    if metric is not None:
        lines += [
            f"`{metric['key']}` = {metric['value']} in `{metric['file']}`, written by "
            f"`{metric['stage']}`; below, that stage and everything upstream of it.",
            "",
        ]
    verdict = (
        "every stage matches `dvc.lock`"
        if record["current"]
        else (
            "**not current**: a stage below changed since `dvc.lock` (re-run `dvc repro` to "
            "make the numbers match the workspace)"
        )
    )
    lines += [f"Lineage: {verdict}.", "", "## Stages (nearest first)", ""]
    for stage in record["stages"]:
        lines += _stage_lines(stage)
    return "\n".join([*lines, *_data_lines(record["data"])])


def data_ok(record: dict) -> bool:
    """The data files are the ones the results were computed on."""
    data = record["data"]
    return data["fingerprint_matches"] and not data["files_changed"] and not data["files_missing"]
