"""What every ``stages/*.py`` entrypoint does before calling its one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from brainad.config import ConfigError, StudyConfig, load_study
from brainad.utils import setup_logging

log = logging.getLogger("brainad")


def stage_setup(
    description: str,
    path_args: Sequence[str],
    argv: Sequence[str] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
) -> tuple[argparse.Namespace, StudyConfig]:
    """Parse ``--study``, ``--params``, the stage's ``--<path>`` arguments and ``--<name>`` choice
    arguments (all required), set up logging and load the study's typed config; a config error
    exits with its message."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--study", required=True, help="study name under `studies` in params.yaml")
    parser.add_argument("--params", default="params.yaml", type=Path)
    for name in path_args:
        parser.add_argument(f"--{name}", required=True, type=Path)
    for name, allowed in (choices or {}).items():
        parser.add_argument(f"--{name}", required=True, choices=list(allowed))
    args = parser.parse_args(argv)
    setup_logging()
    try:
        config = load_study(args.study, args.params)
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    return args, config
