"""The GPU check's environment: a small offline wheelhouse and the venv built from it.

    python -m benchmarks.gpu_setup prepare DIR             # where the package registry is reachable
    python -m benchmarks.gpu_setup install DIR --venv V    # on the GPU machine, offline
    python -m benchmarks.gpu_setup check                   # what imports here (no torch import)

Standard library only: it runs before anything else is known to import. The GPU machines ship
torch, torchvision, numpy, scipy, scikit-learn, matplotlib, OpenCV, PyYAML, rich and Pillow, but
not dvc, dvclive, nibabel or pydicom. The check's code paths import none of those four (training
without DVCLive, scoring of JPEG files: ``benchmarks/README.md``, "GPU check"), so the wheelhouse
holds only nibabel and pydicom (what ``brainad score`` needs for NIfTI and DICOM inputs) and their
small pure-Python dependencies, never torch. brainad itself is not installed: the check runs the
working tree's ``src/`` (``PYTHONPATH``), so it can never test a stale installed copy.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

REQUIRED = ("torch", "torchvision", "numpy", "cv2", "sklearn", "matplotlib", "yaml", "rich", "PIL")
"""Imported by the check's code paths; the GPU machines' system Python has them."""
OPTIONAL = ("nibabel", "pydicom", "dvc", "dvclive")
"""Declared by brainad but never imported by the check (the test suite proves it)."""
PACKAGES = ("nibabel>=5.0", "pydicom>=3.0")
"""What ``install`` asks pip for (the brainad requirements the GPU machines lack)."""
WHEELS = (*PACKAGES, "packaging", "typing_extensions", "importlib_resources")
"""What ``prepare`` downloads: the packages and their pure-Python dependencies on any Python
>= 3.10 (numpy is already on the GPU machines)."""
MAX_MIB = 60
REPO = Path(__file__).resolve().parents[1]
MANIFEST = "wheelhouse.json"
SETUP_FAILED = 3


class SetupError(RuntimeError):
    """The environment cannot be prepared or installed; the message says what to do."""


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the working tree's ``src/`` and the repository first on
    ``PYTHONPATH`` (for the check's subprocesses), plus ``extra``."""
    paths = [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def run_logged(
    command: Sequence[str],
    log: Path,
    timeout: float,
    env: dict[str, str] | None = None,
    stdout: Path | None = None,
) -> dict:
    """Run ``command`` in the repository root with its output in ``log`` (its stdout in
    ``stdout`` if given); ``command`` (without the interpreter), ``exit_code``, ``seconds`` and,
    if it failed, ``failures`` with the last lines of the log."""
    started = time.perf_counter()
    with open(log, "wb") as sink, open(stdout or os.devnull, "wb") as table:
        streams = (
            {"stdout": table, "stderr": sink}
            if stdout
            else {"stdout": sink, "stderr": subprocess.STDOUT}
        )
        proc = subprocess.run(
            list(command), cwd=REPO, env=env or child_env(), timeout=timeout, check=False, **streams
        )
    result = {"command": " ".join(command[1:]), "exit_code": proc.returncode}
    result["seconds"] = time.perf_counter() - started
    if proc.returncode != 0:
        tail = Path(log).read_text(errors="replace").strip().splitlines()[-8:]
        name = " ".join(command[1:3])
        result["failures"] = [f"{name} exited {proc.returncode}; the end of {log}: {tail}"]
    return result


def _run(command: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=900)


def _tail(proc: subprocess.CompletedProcess, lines: int = 15) -> str:
    return "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-lines:])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wheelhouse_files(folder: Path) -> list[dict]:
    """Name, size and sha256 of every wheel in ``folder``, sorted by name."""
    return [
        {"file": p.name, "bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(Path(folder).glob("*.whl"))
    ]


def prepare(folder: Path, python: str = sys.executable, max_mib: float = MAX_MIB) -> dict:
    """Download :data:`WHEELS` (binary wheels only, no dependencies resolved beyond the list)
    into ``folder`` with ``python -m pip download`` and write ``folder/wheelhouse.json``.

    Raises:
        SetupError: pip failed, a downloaded file is not a pure-Python wheel, or the wheelhouse
            exceeds ``max_mib`` MiB.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    command = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    proc = _run([*command, "--dest", str(folder), *WHEELS])
    if proc.returncode != 0:
        raise SetupError(
            f"pip download failed (exit {proc.returncode}); it needs the package registry:\n"
            f"{_tail(proc)}"
        )
    files = wheelhouse_files(folder)
    platform_specific = [f["file"] for f in files if not f["file"].endswith("-none-any.whl")]
    if platform_specific:
        raise SetupError(f"{folder}: not pure-Python wheels, remove them: {platform_specific}")
    total = sum(f["bytes"] for f in files)
    if total > max_mib * 2**20:
        raise SetupError(f"{folder}: {total / 2**20:.1f} MiB of wheels, over {max_mib} MiB")
    manifest = {
        "packages": list(PACKAGES),
        "files": files,
        "total_mib": round(total / 2**20, 2),
        "prepared_with": f"Python {platform.python_version()} ({python})",
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _venv_python(venv: Path) -> Path:
    return Path(venv) / "bin" / "python"


def _unpack_wheels(folder: Path, python: Path) -> None:
    """Install pure-Python wheels without pip: unzip them into the venv's ``purelib``."""
    proc = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    if proc.returncode != 0:
        raise SetupError(f"{python} cannot tell its site-packages:\n{_tail(proc)}")
    site = Path(proc.stdout.strip())
    for wheel in sorted(Path(folder).glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)


def install(folder: Path, venv: Path, python: str = sys.executable) -> Path:
    """A venv at ``venv`` that sees the system's packages (torch is never reinstalled), with
    :data:`PACKAGES` installed from the wheelhouse ``folder`` (``pip --no-index``; without pip
    the pure-Python wheels are unpacked into its site-packages). Returns the venv's python;
    whether torch and the rest import there is :func:`check`'s job.

    Raises:
        SetupError: no wheelhouse at ``folder``, the venv cannot be made, or the packages do not
            import afterwards.
    """
    folder, venv = Path(folder), Path(venv)
    if not (folder / MANIFEST).is_file():
        raise SetupError(
            f"{folder}: no {MANIFEST}; build the wheelhouse first, where the package registry "
            f"is reachable: `bash scripts/gpu_check.sh --prepare {folder}`"
        )
    target = _venv_python(venv)
    if not target.exists():
        proc = _run([python, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)])
        if proc.returncode != 0:
            raise SetupError(f"{python} -m venv {venv} failed:\n{_tail(proc)}")
    has_pip = _run([str(target), "-m", "pip", "--version"]).returncode == 0
    if has_pip:
        command = [str(target), "-m", "pip", "install", "--quiet", "--no-index"]
        proc = _run([*command, "--find-links", str(folder), *PACKAGES])
        if proc.returncode != 0:
            raise SetupError(f"pip install from {folder} failed:\n{_tail(proc)}")
    else:
        _unpack_wheels(folder, target)
    names = ", ".join(_module_name(p) for p in PACKAGES)
    proc = _run([str(target), "-c", f"import {names}"])
    if proc.returncode != 0:
        raise SetupError(f"{target}: {names} do not import after installing:\n{_tail(proc)}")
    return target


def _module_name(requirement: str) -> str:
    """``nibabel>=5.0`` -> ``nibabel`` (these packages import under their own names)."""
    for mark in "<>=!~; ":
        requirement = requirement.split(mark)[0]
    return requirement


def module_report(names: Sequence[str]) -> dict[str, str | None]:
    """Where each top-level module would be imported from (``None``: not importable); nothing
    is imported."""
    report: dict[str, str | None] = {}
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        report[name] = None if spec is None else str(spec.origin or "namespace package")
    return report


def check() -> int:
    """Silent if every required module imports; else say which do not (stderr) and return 3."""
    missing = [name for name, origin in module_report((*REQUIRED, "brainad")).items() if not origin]
    if not missing:
        return 0
    hint = "put src/ on PYTHONPATH" if missing == ["brainad"] else "use the GPU image's python3"
    print(
        f"gpu_check setup: {sys.executable} (Python {platform.python_version()}) cannot import "
        f"{missing}; {hint}",
        file=sys.stderr,
    )
    return SETUP_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_setup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="download the wheelhouse").add_argument("folder", type=Path)
    installer = sub.add_parser("install", help="make the venv; prints its python on stdout")
    installer.add_argument("folder", type=Path)
    installer.add_argument("--venv", type=Path, required=True)
    sub.add_parser("check", help="which modules import here")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            manifest = prepare(args.folder)
            print(f"{args.folder}: {len(manifest['files'])} wheels, {manifest['total_mib']} MiB")
        elif args.command == "install":
            print(install(args.folder, args.venv))
        else:
            return check()
    except SetupError as exc:
        print(f"gpu_check setup: {exc}", file=sys.stderr)
        return SETUP_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
