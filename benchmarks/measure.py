"""What the benchmark measures with: work sizes, synthetic phantom inputs, timing, peak memory
and the machine it runs on."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from brainad.training.loop import choose_precision
from brainad.utils import select_device

log = logging.getLogger("brainad")

REPO = Path(__file__).resolve().parents[1]


class Sizes(NamedTuple):
    """How much work each measurement does.

    Args:
        image_size: side of the images; ``None`` = the study's ``preprocess.image_size``.
        batch_size: training batch; ``None`` = each model's ``fit.batch_size`` in the study.
        warmup: untimed training steps before the timed ones (>= 1: the first one counts FLOPs).
        steps: timed training steps.
        matmul_n: side of the square matrices of the reference matmul.
        matmul_reps: timed matmuls (after one untimed).
        score_images: images scored on the evaluate path.
        cli_files: JPEG files scored on the ``brainad score`` path.
        source_size: side of those JPEG files (before preprocessing).
        dvc_reps: timed no-op ``dvc repro`` runs.
        archive_files: archive sizes (files) of the archive-scale ``brainad score`` row.
        archive_image_size: model input side of that row (the demo study's VQGAN+D).
    """

    image_size: int | None
    batch_size: int | None
    warmup: int
    steps: int
    matmul_n: int
    matmul_reps: int
    score_images: int
    cli_files: int
    source_size: int
    dvc_reps: int
    archive_files: tuple[int, int]
    archive_image_size: int


FULL = Sizes(None, None, 2, 8, 2048, 5, 512, 256, 256, 3, (2_000, 20_000), 32)
QUICK = Sizes(32, 4, 1, 2, 256, 2, 8, 4, 48, 1, (16, 48), 32)


class Phantoms(NamedTuple):
    """Rendered phantom head slices.

    Args:
        images: float32 (N, 1, S, S) in [-1, 1].
        masks: bool (N, 1, S, S) brain masks.
        raw: uint8 (N, S, S) slices as rendered (written as JPEG for the CLI path).
    """

    images: np.ndarray
    masks: np.ndarray
    raw: np.ndarray


# ------------------------------------------------------------------------------------ helpers
def render_phantoms(n: int, size: int, seed: int) -> Phantoms:
    """``n`` phantom slices (contrasts in turn, every fourth with a tumour)."""
    from brainad.data.phantom import CONTRASTS, render_slice

    rng = np.random.default_rng(seed)
    slices = [
        render_slice(rng, size, CONTRASTS[i % len(CONTRASTS)], tumour=i % 4 == 0) for i in range(n)
    ]
    raw = np.stack([s.image for s in slices])
    masks = np.stack([s.brain_mask for s in slices])[:, None]
    return Phantoms(raw[:, None].astype(np.float32) / 127.5 - 1.0, masks, raw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], device: torch.device, warmup: int, reps: int
) -> list[float]:
    """Seconds of each of ``reps`` calls of ``fn``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    seconds = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def _rss_bytes() -> int | None:
    """Current resident set size (Linux ``/proc``), or ``None`` elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so the baseline is honest."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager measuring the peak memory above the level at entry.

    The resident set size is sampled from a thread every ``interval`` seconds (``/proc``); where
    ``/proc`` is missing the rise of ``ru_maxrss`` is used instead (it only shows growth above the
    process' earlier peak). On CUDA the caching allocator's peak is reported as well.

    Args:
        device: the device the measured code runs on.
        interval: sampling period in seconds.
    """

    def __init__(self, device: torch.device, interval: float = 0.002) -> None:
        self.device, self.interval = device, interval
        self.base = self.peak = self.maxrss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        _release_free_memory()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.maxrss = _maxrss_bytes()
        rss = _rss_bytes()
        if rss is not None:
            self.base = self.peak = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes() or 0)
        self.maxrss = _maxrss_bytes() - self.maxrss

    def result(self) -> dict[str, Any]:
        """``rss_peak_increase_mb``, the method used, and the CUDA allocator peak (or None)."""
        sampled = self._thread is not None
        cuda = None
        if self.device.type == "cuda":
            cuda = torch.cuda.max_memory_allocated(self.device) / 2**20
        return {
            "rss_peak_increase_mb": (self.peak - self.base if sampled else self.maxrss) / 2**20,
            "memory_method": "sampled /proc/self/statm" if sampled else "ru_maxrss increase",
            "cuda_peak_allocated_mb": cuda,
        }


def _maxrss_bytes() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _load_average() -> float | None:
    """1-minute load average: above the core count, other processes compete for the CPU."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch version and threads, bf16 support, device, load, commit."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16_supported": choose_precision("auto", torch.device("cpu")).name == "bf16",
        "device": str(select_device()),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": _load_average(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
