"""The ``brainad`` command: score new scans with a trained study model, audit a study's lineage.

brainad score --model models/demo/scorers/vqgan.pt IMAGE_OR_FOLDER... --out results/
brainad audit demo

Add --debug (anywhere) for debug logging and a traceback with any error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brainad.utils import setup_logging

log = logging.getLogger("brainad")


# -------------------------------------------------------------------------------------- audit
def _lock_stages(lock_path: Path, study: str) -> dict:
    import yaml

    if not lock_path.is_file():
        raise FileNotFoundError(f"{lock_path}: not found; run `dvc repro evaluate@{study}` first")
    stages = yaml.safe_load(lock_path.read_text())["stages"]
    return {name: stage for name, stage in stages.items() if name.endswith(f"@{study}")}


def audit(study: str, root: Path = Path(".")) -> dict:
    """Lineage of a study's results and a re-verification of every image's sha256."""
    from brainad.data.manifest import fingerprint as dataset_fingerprint
    from brainad.data.manifest import read_manifest

    stages = _lock_stages(root / "dvc.lock", study)
    prepare = stages.get(f"prepare@{study}")
    if prepare is None:
        raise ValueError(f"dvc.lock has no prepare@{study}; run `dvc repro evaluate@{study}`")
    outs = [o["path"] for o in prepare["outs"]]
    raw = root / next(o for o in outs if not Path(o).suffix)
    manifest_path = root / next(o for o in outs if o.endswith(".jsonl"))
    report = json.loads((root / next(o for o in outs if o.endswith(".json"))).read_text())
    rows = read_manifest(manifest_path)
    checked = {"ok": 0, "mismatch": [], "missing": []}
    for row in rows:
        file = raw / row["path"]
        if not file.is_file():
            checked["missing"].append(row["path"])
        elif hashlib.sha256(file.read_bytes()).hexdigest() != row["sha256"]:
            checked["mismatch"].append(row["path"])
        else:
            checked["ok"] += 1
    fingerprint = dataset_fingerprint(rows)
    return {
        "study": study,
        "dataset_fingerprint": report["fingerprint"],
        "fingerprint_recomputed": fingerprint,
        "fingerprint_matches": fingerprint == report["fingerprint"],
        "source": report.get("source"),
        "files_verified": checked["ok"],
        "files_changed": checked["mismatch"],
        "files_missing": checked["missing"],
        "stages": {
            name: {
                "cmd": s.get("cmd"),
                "outs": {o["path"]: o.get("md5") for o in s.get("outs", [])},
                "params": s.get("params", {}),
            }
            for name, s in stages.items()
        },
        "code_commit": _evaluation_commit(stages, root),
    }


def _evaluation_commit(stages: dict, root: Path) -> str | None:
    for name, stage in stages.items():
        if name.startswith("evaluate@"):
            for out in stage.get("outs", []):
                if out["path"].endswith("evaluation.json") and (root / out["path"]).is_file():
                    data = json.loads((root / out["path"]).read_text())
                    return data["provenance"]["git_commit"]
    return None


def cmd_audit(args: argparse.Namespace) -> int:
    result = audit(args.study, args.root)
    print(json.dumps(result, indent=2, sort_keys=True))  # the audit record is the command's output
    ok = (
        result["fingerprint_matches"]
        and not result["files_changed"]
        and not result["files_missing"]
    )
    if not ok:
        log.error("audit FAILED: data differ from the manifest the results were computed on")
    return 0 if ok else 1


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``brainad`` parser: ``score`` (:mod:`brainad.cli.score`), ``audit`` and ``compare``."""
    from brainad.cli.score import add_score_parser
    from brainad.evaluation import compare

    parser = argparse.ArgumentParser(
        prog="brainad", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    debug = "debug logging, and a traceback for any error"
    parser.add_argument("--debug", action="store_true", help=debug)
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command, too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    sub = parser.add_subparsers(dest="command", required=True)
    add_score_parser(sub, [common])
    aud = sub.add_parser(
        "audit", parents=[common], help="print a study's lineage and re-verify image hashes"
    )
    aud.add_argument("study")
    aud.add_argument("--root", type=Path, default=Path("."), help="repository root")
    aud.set_defaults(func=cmd_audit)
    cmp = sub.add_parser(
        "compare",
        parents=[common],
        help="metrics at a revision beside the workspace's, with noise-aware verdicts",
        description=compare.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_arguments(cmp)
    cmp.set_defaults(func=compare.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for any error, without a traceback
    unless ``--debug``; 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.debug else logging.INFO)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except (ValueError, FileNotFoundError) as exc:  # a problem the message explains
        for line in str(exc).splitlines():
            log.error("%s", line)
        if args.debug:
            log.exception("traceback (--debug)")
        return 2
    except Exception as exc:
        if args.debug:
            log.exception("unexpected error")
        else:
            log.error(
                "unexpected error (%s: %s); re-run with --debug to see the traceback",
                type(exc).__name__,
                exc,
            )
        return 2


if __name__ == "__main__":
    sys.exit(main())
