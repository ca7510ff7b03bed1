"""A GPU check of brainad in one go (issue 29): does the library run on CUDA, end to end?

    python -m benchmarks.gpu_check OUTDIR [--device cuda|cpu] [--checks micro,scaler,...]

``scripts/gpu_check.sh OUTDIR`` is the way to run it (it sets up the environment; see
``benchmarks/README.md``, "GPU check"). First it prints the device, driver, torch and CUDA
versions, then runs, on ``--device`` (default ``cuda``):

* ``micro``: every registered model a few steps through the library's training loop and scored by
  its detector engine, under bf16 and fp16 autocast (fp16 with the GradScaler)
  (:mod:`benchmarks.gpu_micro`);
* ``scaler``: the fp16 GradScaler skipping a step with an ``inf`` gradient;
* ``score``: ``brainad score`` on phantom JPEG files with a model the micro study trained;
* ``ddp``: ``fit`` under ``torchrun`` with one process per visible GPU over NCCL
  (:mod:`benchmarks.gpu_ddp`);
* ``benchmark``: ``python -m benchmarks.run --quick --skip-dvc``, whose rows on this device are
  checked and summarised.

Writes ``OUTDIR/gpu_check.json`` (after every check, atomically) and logs to
``OUTDIR/gpu_check.log``. Exit status: 0 every check passed; 1 a check failed (named on stderr and
in the JSON); 2 a usage error, or ``--device cuda`` where CUDA is not available (the JSON is still
written, with the environment and status ``no_cuda``). ``--device cpu`` runs the same checks on
the CPU (DDP over gloo): that is how the tests exercise them.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu_bench, gpu_ddp, gpu_micro, gpu_score
from benchmarks.gpu_setup import OPTIONAL, module_report
from benchmarks.measure import _cpu_model, _git
from brainad.models.registry import MODEL_NAMES
from brainad.utils import setup_logging, write_json

log = logging.getLogger("brainad")

SCHEMA = "brainad-gpu-check/1"
CHECKS = ("micro", "scaler", "score", "ddp", "benchmark")
PRECISIONS = ("bf16", "fp16")
BUDGET_S = 300  # the issue: within 5 minutes on one modern GPU
NO_CUDA = 2


# -------------------------------------------------------------------------------- environment
def nvidia_smi() -> dict[str, Any]:
    """Driver version, the CUDA version the driver supports and the GPUs, from ``nvidia-smi``."""
    found = shutil.which("nvidia-smi")
    if found is None:
        return {"found": False, "error": "nvidia-smi not found on PATH"}
    try:
        plain = subprocess.run([found], capture_output=True, text=True, timeout=30)
        query = subprocess.run(
            [found, "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return {"found": True, "error": f"{type(exc).__name__}: {exc}"}
    driver = re.search(r"Driver Version:\s*([\d.]+)", plain.stdout)
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", plain.stdout)
    return {
        "found": True,
        "exit_code": plain.returncode,
        "driver_version": driver.group(1) if driver else None,
        "driver_cuda_version": cuda.group(1) if cuda else None,
        "gpus": [line.strip() for line in query.stdout.splitlines() if line.strip()],
        "error": None if plain.returncode == 0 else (plain.stderr or plain.stdout).strip()[:300],
    }


def _cuda_devices() -> list[dict[str, Any]]:
    devices = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "index": index,
                "name": torch.cuda.get_device_name(index),
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
            }
        )
    return devices


def _nccl_version() -> str | None:
    try:
        import torch.cuda.nccl

        version = torch.cuda.nccl.version()
    except (ImportError, AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def environment() -> dict[str, Any]:
    """Everything about this machine the reader of the JSON needs to trust its numbers."""
    import brainad

    available = torch.cuda.is_available()
    return {
        "cuda_available": available,
        "devices": _cuda_devices() if available else [],
        "bf16_supported": bool(torch.cuda.is_bf16_supported()) if available else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if available else None,
        "nccl": _nccl_version() if available else None,
        "nvidia_smi": nvidia_smi(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "brainad": str(Path(brainad.__file__).parent),
        "optional_modules": {k: v is not None for k, v in module_report(OPTIONAL).items()},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def facts(env: dict[str, Any]) -> str:
    """The lines printed first: device, driver, torch and CUDA versions."""
    smi = env["nvidia_smi"]
    if env["devices"]:
        first = env["devices"][0]
        device = (
            f"{first['name']} ({len(env['devices'])} visible, capability "
            f"{first['capability']}, {first['memory_gib']} GiB)"
        )
    else:
        device = "none: torch.cuda.is_available() is False"
    if smi.get("driver_version"):
        driver = f"{smi['driver_version']} (supports CUDA {smi['driver_cuda_version']})"
    else:
        driver = f"unknown ({smi.get('error')})"
    cuda = env["torch_cuda"] or "none (CPU-only torch build)"
    return "\n".join(
        [
            "brainad GPU check",
            f"  device:  {device}",
            f"  driver:  {driver}",
            f"  torch:   {env['torch']} (Python {env['python']})",
            f"  CUDA:    {cuda} (torch build); cuDNN {env['cudnn']}; NCCL {env['nccl']}",
        ]
    )


# ------------------------------------------------------------------------------------ report
def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"nan"``, ``"inf"``): strict JSON, visible."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


class Report:
    """The JSON document, rewritten after every check so that a killed run leaves what it did."""

    def __init__(self, path: Path, device: str, env: dict[str, Any], selected: Sequence[str]):
        self.path = path
        self.started = time.perf_counter()
        self.doc: dict[str, Any] = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "status": "running",
            "device": device,
            "budget_s": BUDGET_S,
            "environment": env,
            "checks": {
                n: {"status": "pending" if n in selected else "not_selected"} for n in CHECKS
            },
        }

    def save(self) -> None:
        self.doc["seconds"] = time.perf_counter() - self.started
        write_json(self.path, jsonable(self.doc))

    def run(self, name: str, check: Callable[[], dict]) -> None:
        """Run one check: ``failed`` if it raised or listed ``failures``, else ``ok``."""
        log.info("check %s: running", name)
        self.doc["checks"][name] = {"status": "running"}
        self.save()
        started = time.perf_counter()
        try:
            details = check()
            error = "; ".join(details.get("failures", [])) or None
        except Exception as exc:  # the check failed; the JSON and the log say where
            log.error("check %s raised:\n%s", name, traceback.format_exc())
            details, error = {}, f"{type(exc).__name__}: {str(exc)[:500]}"
        seconds = time.perf_counter() - started
        status = "failed" if error else "ok"
        self.doc["checks"][name] = {"status": status, "seconds": seconds, "error": error, **details}
        log.log(
            logging.ERROR if error else logging.INFO,
            "check %s: %s in %.1f s%s",
            name,
            status,
            seconds,
            f": {error}" if error else "",
        )
        self.save()

    def finish(self, status: str | None = None) -> list[str]:
        """Final status unless given: ``failed``, else ``interrupted`` if a selected check did not
        finish (the run was stopped), else ``passed``; returns the failed checks."""
        checks = self.doc["checks"]
        failed = [n for n, c in checks.items() if c["status"] == "failed"]
        unfinished = [n for n, c in checks.items() if c["status"] in ("pending", "running")]
        self.doc["failed"] = failed
        if status is None:
            status = "failed" if failed else "interrupted" if unfinished else "passed"
        self.doc["status"] = status
        self.doc["optional_modules_imported"] = sorted(m for m in OPTIONAL if m in sys.modules)
        self.doc["within_budget"] = time.perf_counter() - self.started <= BUDGET_S
        self.save()
        return failed


# --------------------------------------------------------------------------------------- main
def _names(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{what}: {unknown or text!r}; choose from {list(known)}")
    return names


def _choices(known: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    return lambda text: _names(text, known, what)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("outdir", type=Path, help="where gpu_check.json and the logs go")
    add("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default) or cpu")
    add(
        "--checks",
        type=_choices(CHECKS, "--checks"),
        default=CHECKS,
        help=f"comma-separated subset of {','.join(CHECKS)} (default: all)",
    )
    add(
        "--models",
        type=_choices(MODEL_NAMES, "--models"),
        default=MODEL_NAMES,
        help="micro-study models (default: all); the first also runs scaler and ddp",
    )
    add(
        "--precisions",
        type=_choices(PRECISIONS, "--precisions"),
        default=PRECISIONS,
        help="autocast precisions of micro and ddp (default: bf16,fp16)",
    )
    add("--nproc", type=int, default=None, help="DDP processes (default: visible GPUs; 2 on cpu)")
    add(
        "--work",
        type=Path,
        default=None,
        help="scratch folder for checkpoints and scans, kept (default: a temporary one, removed)",
    )
    args = parser.parse_args(argv)
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be >= 1, got {args.nproc}")
    return args


def _log_to_file(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("brainad").addHandler(handler)
    return handler


def run_checks(args: argparse.Namespace, report: Report, work: Path) -> None:
    """Every selected check in :data:`CHECKS` order (``score`` uses the micro study's models)."""
    device, out = torch.device(args.device), args.outdir
    nproc = args.nproc or (torch.cuda.device_count() if device.type == "cuda" else 2)
    trained: dict[str, str] = {}
    checks: dict[str, Callable[[], dict]] = {
        "micro": lambda: gpu_micro.run_micro(device, args.models, args.precisions, work / "micro"),
        "scaler": lambda: gpu_micro.run_scaler(args.models[0], device),
        "score": lambda: gpu_score.run_score_cli(trained, device, work, out),
        "ddp": lambda: gpu_ddp.run_ddp(
            out / "ddp", work / "ddp", device.type, nproc, args.precisions, args.models[0]
        ),
        "benchmark": lambda: gpu_bench.run_benchmark(out, device.type),
    }
    for name in CHECKS:
        if name in args.checks:
            report.run(name, checks[name])
            if name == "micro":
                trained.update(report.doc["checks"]["micro"].get("trained", {}))


def _no_cuda(report: Report, env: dict[str, Any]) -> int:
    """Record and say that there is no CUDA here; nothing runs."""
    smi = env["nvidia_smi"].get("error") or "nvidia-smi found"
    message = (
        f"CUDA is not available here (torch {env['torch']}, built with CUDA "
        f"{env['torch_cuda'] or 'none'}; {smi}): the GPU check needs a CUDA GPU; nothing was run"
    )
    for check in report.doc["checks"].values():
        check.update(status="skipped", reason="no CUDA")
    report.doc["message"] = message
    report.finish("no_cuda")
    log.error("%s. Wrote %s", message, report.path)
    return NO_CUDA


def _summary(report: Report) -> str:
    lines = [
        f"  {name:10s} {c['status']:13s} {c.get('seconds', 0):6.1f} s  {c.get('error') or ''}"
        for name, c in report.doc["checks"].items()
    ]
    return "\n".join(
        ["checks:", *lines, f"total {report.doc['seconds']:.1f} s; wrote {report.path}"]
    )


def _check(args: argparse.Namespace) -> int:
    env = environment()
    print(facts(env), flush=True)
    report = Report(args.outdir / "gpu_check.json", args.device, env, args.checks)
    if args.device == "cuda" and not env["cuda_available"]:
        return _no_cuda(report, env)
    work = args.work or Path(tempfile.mkdtemp(prefix="brainad-gpu-check-"))
    try:
        run_checks(args, report, work)
    finally:
        failed = report.finish()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(_summary(report), flush=True)
    if not report.doc["within_budget"]:
        log.warning("the check took %.0f s, over its %d s budget", report.doc["seconds"], BUDGET_S)
    if failed:
        log_file = args.outdir / "gpu_check.log"
        print(
            f"gpu_check FAILED: {', '.join(failed)} (see {report.path}, {log_file})",
            file=sys.stderr,
        )
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, log to ``OUTDIR/gpu_check.log`` as well, run; the exit status of the module doc."""
    args = parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    setup_logging()
    handler = _log_to_file(args.outdir / "gpu_check.log")
    try:
        return _check(args)
    finally:
        logging.getLogger("brainad").removeHandler(handler)
        handler.close()


if __name__ == "__main__":
    sys.exit(main())
