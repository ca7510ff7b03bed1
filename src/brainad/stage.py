"""What every ``stages/*.py`` entrypoint does before calling its one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from brainad import runtime
from brainad.config import ConfigError, StudyConfig, load_study

log = logging.getLogger("brainad")


def stage_setup(
    description: str,
    path_args: Sequence[str],
    argv: Sequence[str] | None = None,
    names: Sequence[str] = (),
    load: Callable[[str, Path], object] = load_study,
) -> tuple[argparse.Namespace, StudyConfig]:
    """Parse ``--study``, ``--params``, the stage's ``--<path>`` arguments and ``--<name>`` string
    arguments (all required), load the study's typed config (``load``: a slice study by default,
    or :func:`brainad.config.load_volume_study`) (a config error exits with its
    message), put the deterministic environment in place (:func:`brainad.runtime.prepare_process`;
    a stage run as a script, ``argv`` None, may re-execute itself) and set up logging.

    Entrypoints import the library only after this call, so torch, numpy and OpenCV load with the
    pinned environment of a deterministic study.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--study", required=True, help="study name under `studies` in params.yaml")
    parser.add_argument("--params", default="params.yaml", type=Path)
    for name in path_args:
        parser.add_argument(f"--{name}", required=True, type=Path)
    for name in names:
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args(argv)
    try:
        config = load(args.study, args.params)
    except ConfigError as exc:
        _logging()
        log.error("%s", exc)
        sys.exit(2)
    runtime.prepare_process(runtime.study_deterministic(config), restart=argv is None)
    _logging()
    return args, config


def _logging() -> None:
    from brainad.utils import setup_logging  # after prepare_process: utils imports numpy

    setup_logging()
