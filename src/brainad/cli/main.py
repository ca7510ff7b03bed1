"""The ``brainad`` command: score new scans with a trained study model, audit a study's lineage.

brainad score --model models/demo/scorers/vqgan.pt IMAGE_OR_FOLDER... --out results/
brainad score ... --shard I/N --out part-I/   then   brainad merge results/ part-*/
brainad audit demo [--metric segmenter.lesion.roc_auc] [--json]

Add --debug (anywhere) for debug logging and a traceback with any error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brainad.utils import setup_logging

log = logging.getLogger("brainad")


# -------------------------------------------------------------------------------------- audit
def cmd_audit(args: argparse.Namespace) -> int:
    """``brainad audit``: the lineage as Markdown (``--json``: JSON); exit 1 if data changed."""
    from brainad.cli import lineage

    record = lineage.lineage(args.study, args.root, args.metric)
    if args.json:
        print(json.dumps(record, indent=2, sort_keys=True))  # the audit record is the output
    else:
        print(lineage.render(record))
    if not lineage.data_ok(record):
        log.error("audit FAILED: data differ from the files the results were computed on")
        return 1
    return 0


# ------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``brainad`` parser: ``score`` (:mod:`brainad.cli.score`), ``merge``
    (:mod:`brainad.cli.merge`), ``audit`` and ``compare``."""
    from brainad.cli.merge import add_merge_parser
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
    add_merge_parser(sub, [common])
    aud = sub.add_parser(
        "audit",
        parents=[common],
        help="a study's lineage (Markdown) from dvc.lock, what changed since, data re-verified",
    )
    aud.add_argument("study")
    aud.add_argument("--metric", help="a dotted metrics.json key: its stage and all upstream")
    aud.add_argument("--json", action="store_true", help="the machine form instead of Markdown")
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
