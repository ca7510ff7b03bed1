"""How a stage process runs its numerical kernels, and the record of it for provenance.

Deterministic mode — every ``fit.deterministic`` of a study is true (:func:`study_deterministic`)
— pins every kernel library a stage uses to its baseline code path and to a fixed thread count
(:data:`THREADS`, never adjusted at run time), so the same
code, data and params give byte-identical weights, scores and metrics on any x86-64 CPU with the
same installed builds (torch, numpy, OpenCV). Without it, each library picks the fastest kernels
the CPU has (AVX2, AVX-512, AMX), and their different summation orders change trained weights:
the committed demo, made on an AVX-512 CPU, gave ``dcgan.lesion.roc_auc`` 0.743 there and 0.687
on an AVX2 CPU.

What changes the weights of a micro training of the three demo models (measured on an AVX2 AMD
EPYC, one variable at a time; ``scripts/isa_probe.py``): ATen's SIMD level
(``ATEN_CPU_CAPABILITY``), oneDNN's ISA (``ONEDNN_MAX_CPU_ISA``), MKL's code branch
(``MKL_CBWR``), NNPACK (used for convolutions once oneDNN is off), the thread count (1 vs 2).
What does not: glibc's FMA variants of libm (``GLIBC_TUNABLES`` without FMA/AVX2) and
``torch.use_deterministic_algorithms`` on CPU. Numpy's dispatched ufuncs (e.g. float32 ``exp``),
OpenBLAS's kernel (numpy, scikit-learn), OpenCV's dispatched SIMD (float ``GaussianBlur``) and
Intel IPP (``resize``) also change their results with the CPU, so they are pinned too.

The pinned variables are read when each library loads, so :func:`prepare_process` runs in
:func:`brainad.stage.stage_setup` before the stage imports torch, numpy or OpenCV; if one of them
is already loaded it re-executes the stage script with the environment in place. The in-process
part (oneDNN and NNPACK off, the thread count) is :func:`deterministic_kernels`, entered by the
training loop and the scoring stages. Importing this module does nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import platform
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from brainad.config import FitConfig, StudyConfig

log = logging.getLogger("brainad")

THREADS = 2
"""Threads of every kernel library in deterministic mode, on every machine (a 1-core or a 64-core
one alike). The partition of a reduction over threads changes its rounding (1 vs 2 threads give
different weights), so the count is part of the result; MKL's and OpenMP's dynamic adjustment is
off, as MKL's reproducibility conditions require. Two, not one: on an idle 2-core machine (CI) the
pinned demo VQGAN+D step takes 1.6 s on two threads and 2.6 s on one (measured here)."""

# numpy features above every numpy wheel's x86-64 baseline (names of numpy 2.0-2.4; an unknown
# name only warns, a baseline one would fail, so X86_V2, numpy 2.4's baseline, is not listed).
_NUMPY_DISPATCH = (
    "SSSE3 SSE41 POPCNT SSE42 AVX F16C FMA3 AVX2 AVX512F AVX512CD AVX512_KNL AVX512_KNM "
    "AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR X86_V3 X86_V4"
)
# OpenCV's dispatched features (its names) by the /proc/cpuinfo flag a CPU must have for OpenCV to
# accept disabling them (it prints a warning for a feature the CPU lacks).
_OPENCV_DISPATCH = {
    "sse4_1": "SSE4.1",
    "sse4_2": "SSE4.2",
    "popcnt": "POPCNT",
    "avx": "AVX",
    "f16c": "FP16",
    "fma": "FMA3",
    "avx2": "AVX2",
    "avx512f": "AVX512F",
    "avx512bw": "AVX512-SKX",
    "avx512_vnni": "AVX512-CLX",
    "avx512vbmi": "AVX512-CNL",
    "avx512_vbmi2": "AVX512-ICL",
}
_SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16")
_RE_EXEC_GUARD = "BRAINAD_PINNED_REEXEC"

ENVIRONMENT = {
    "ATEN_CPU_CAPABILITY": "default",  # ATen's kernels built for plain x86-64, not AVX2/AVX-512
    "ONEDNN_MAX_CPU_ISA": "SSE41",  # oneDNN is off (deterministic_kernels); capped in case
    "MKL_CBWR": "COMPATIBLE",  # MKL's conditional numerical reproducibility: one branch everywhere
    "NPY_DISABLE_CPU_FEATURES": _NUMPY_DISPATCH,  # numpy's baseline ufunc loops
    "OPENBLAS_CORETYPE": "Prescott",  # numpy/scipy OpenBLAS: the generic x86-64 kernels
    "OPENCV_IPP": "disabled",  # Intel IPP dispatches by CPU inside OpenCV
    "OPENCV_LOG_LEVEL": "ERROR",  # else OpenCV warns on every import that IPP is disabled
    "OMP_NUM_THREADS": str(THREADS),
    "OMP_DYNAMIC": "FALSE",  # a runtime that picks fewer threads would change the partition
    "MKL_DYNAMIC": "FALSE",
    "MKL_NUM_THREADS": str(THREADS),
    "OPENBLAS_NUM_THREADS": str(THREADS),
    "OPENCV_FOR_THREADS_NUM": str(THREADS),
    "CUDA_VISIBLE_DEVICES": "",  # a GPU cannot give the CPU's numbers: deterministic runs on CPU
}
"""The pinned environment (plus ``OPENCV_CPU_DISABLE``, which depends on the CPU's flags)."""

LIBRARIES = ("torch", "numpy", "cv2", "scipy", "sklearn")
"""Modules that read the pinned variables when they load."""

_pinned = False  # inside deterministic_kernels(True); read through kernels_pinned()


# ------------------------------------------------------------------------------------ the mode
def _fit_configs(node: Any) -> Iterator[FitConfig]:
    if isinstance(node, FitConfig):
        yield node
    elif dataclasses.is_dataclass(node):
        for item in dataclasses.fields(node):
            yield from _fit_configs(getattr(node, item.name))


def study_deterministic(config: StudyConfig) -> bool:
    """True if every fit section of the study (``vqgan.fit``, ``dcgan.fit``, ...) says
    ``deterministic: true``: then every stage of the study runs with pinned kernels."""
    fits = list(_fit_configs(config))
    return bool(fits) and all(f.deterministic for f in fits)


@functools.cache
def cpu_info() -> dict[str, Any]:
    """CPU model and the SIMD flags that decide kernel choice (from ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text(errors="replace")
        if found := re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE):
            model = found.group(1).strip()
        if found := re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE):
            flags = set(found.group(1).split())
    return {"model": model, "flags": sorted(flags)}


def deterministic_environment() -> dict[str, str]:
    """Every variable deterministic mode sets, for this CPU."""
    flags = set(cpu_info()["flags"])
    opencv = [name for flag, name in _OPENCV_DISPATCH.items() if flag in flags]
    return {**ENVIRONMENT, "OPENCV_CPU_DISABLE": ",".join(opencv)}


def environment_pinned() -> bool:
    """The pinned variables are set in this process and torch (if loaded) honoured them."""
    if any(os.environ.get(k) != v for k, v in deterministic_environment().items()):
        return False
    torch = sys.modules.get("torch")
    return torch is None or torch.backends.cpu.get_cpu_capability() == "DEFAULT"


def prepare_process(deterministic: bool, *, restart: bool) -> bool:
    """Put the pinned environment in place for a deterministic stage; True if it is in effect.

    Sets the variables of :func:`deterministic_environment` that differ. If a library that reads
    them (:data:`LIBRARIES`) is already loaded, the process re-executes itself with the new
    environment when ``restart`` (a stage run as a script), else it warns: results are then only
    reproducible on this machine.
    """
    if not deterministic:
        return False
    missing = {k: v for k, v in deterministic_environment().items() if os.environ.get(k) != v}
    if not missing:
        return True
    os.environ.update(missing)
    loaded = [name for name in LIBRARIES if name in sys.modules]
    if not loaded:
        return True
    if restart and not os.environ.get(_RE_EXEC_GUARD):
        log.info("deterministic mode: restarting with pinned kernels (%s were loaded)", loaded)
        os.environ[_RE_EXEC_GUARD] = "1"
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    log.warning(
        "deterministic mode: %s loaded before the pinned environment was set; results are "
        "reproducible on this machine only. Run the stage as a script (dvc repro).",
        ", ".join(loaded),
    )
    return False


def kernels_pinned() -> bool:
    """True inside :func:`deterministic_kernels` (enabled): code with a faster path whose numbers
    differ in the last bits (the batched mirror-asymmetry search, channels-last scoring) takes
    its reference path there, so a deterministic study's numbers do not depend on it."""
    return _pinned


@contextlib.contextmanager
def deterministic_kernels(enabled: bool) -> Iterator[None]:
    """oneDNN and NNPACK off and :data:`THREADS` torch threads for the block (restored after);
    :func:`kernels_pinned` is true inside it.

    With oneDNN off, convolutions run ATen's im2col + MKL GEMM, which ``MKL_CBWR`` pins; NNPACK
    would otherwise take over convolutions (its kernels depend on the CPU).
    """
    if not enabled:
        yield
        return
    import torch

    global _pinned
    previous = (torch.backends.mkldnn.enabled, torch.get_num_threads(), _pinned)
    nnpack = torch.backends.nnpack.set_flags(False)[0]  # (mkldnn.flags() would warn about TF32)
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(THREADS)
    _pinned = True
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous[0]
        torch.backends.nnpack.set_flags(nnpack)
        torch.set_num_threads(previous[1])
        _pinned = previous[2]


# ------------------------------------------------------------------------------ provenance
def _build_versions(config_text: str) -> dict[str, str | None]:
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", config_text)
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config_text)
    return {"onednn": onednn.group(1) if onednn else None, "mkl": mkl.group(1) if mkl else None}


def describe(deterministic: bool) -> dict[str, Any]:
    """What decided this process's numbers: mode, CPU, kernel levels, threads, library versions.

    ``mode`` is ``deterministic`` (pinned: the same numbers on any x86-64 CPU), ``same-machine``
    (deterministic algorithms, but the kernels follow the CPU: reproducible on this machine) or
    ``fast`` (not deterministic; bf16 autocast where the CPU supports it).
    """
    import numpy
    import torch

    pinned = deterministic and environment_pinned() and not torch.backends.mkldnn.enabled
    flags = set(cpu_info()["flags"])
    versions = _build_versions(torch.__config__.show())
    return {
        "mode": "deterministic" if pinned else ("same-machine" if deterministic else "fast"),
        "deterministic": deterministic,
        "cpu_model": cpu_info()["model"],
        "cpu_simd": [f for f in _SIMD_FLAGS if f in flags],
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": {
            "version": versions["onednn"],
            "enabled": bool(torch.backends.mkldnn.enabled),
            "max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "(CPU maximum)"),
        },
        "mkl": {"version": versions["mkl"], "cbwr": os.environ.get("MKL_CBWR", "(auto)")},
        "threads": torch.get_num_threads(),
        "pinned_environment": {k: os.environ.get(k) for k in deterministic_environment()},
        "versions": {"torch": str(torch.__version__), "numpy": str(numpy.__version__)},
    }
