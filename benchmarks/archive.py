"""Archive-scale ``brainad score``: throughput and peak memory at two archive sizes.

    python -m benchmarks.archive [--files 2000 20000] [--image-size 32] [--threads N] [--out F]

Writes ``N`` synthetic JPEG slices (copies of 256 phantoms, each with its index in a JPEG comment
so no two files share a sha256 and none is skipped as a duplicate) into one folder and runs the real command, ``python -m brainad.cli score FOLDER
--maps none``, in a subprocess per size, with a scorer bundle around an untrained VQGAN+D of the
``demo`` study at ``--image-size`` px (default 32, so that 20,000 files take minutes on 2 cores;
an untrained model does the same work per image as a trained one). The
subprocess' peak resident memory comes from the kernel (``ru_maxrss`` of ``os.wait4``), so it
covers everything the command holds, imports included. ``benchmarks.run`` includes this row
(``scoring.archive``); ``benchmarks/README.md`` explains the numbers.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from brainad.config import StudyConfig, load_study
from brainad.utils import select_device, setup_logging, write_json

log = logging.getLogger("brainad")

REPO = Path(__file__).resolve().parents[1]
SIZES = (2_000, 20_000)
SOURCE_SIZE = 128  # side of the JPEG files before preprocessing
DISTINCT = 256  # distinct phantom slices rendered; the files are copies with distinct comments


def write_archive(folder: Path, n: int, source_size: int, seed: int = 4) -> None:
    """``n`` grey JPEG files ``folder/NNN/scan_NNNNNN.jpg`` (1,000 per subfolder), all with
    different bytes: copies of up to 256 distinct phantom slices, each with its own comment."""
    import cv2

    from benchmarks.measure import render_phantoms

    encoded = []
    for index, image in enumerate(render_phantoms(min(n, DISTINCT), source_size, seed).raw):
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise OSError(f"OpenCV could not encode archive slice {index} as JPEG")
        encoded.append(data.tobytes())
    for index in range(n):
        path = folder / f"{index // 1000:03d}" / f"scan_{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_with_comment(encoded[index % len(encoded)], f"slice {index}"))


def _with_comment(jpeg: bytes, text: str) -> bytes:
    """``jpeg`` with a COM segment after its SOI marker: other bytes (another sha256), the same
    pixels (decoders skip comments)."""
    payload = text.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _count_scored(csv_path: Path) -> int:
    with open(csv_path, encoding="utf-8", newline="") as handle:
        return sum(row["status"] == "scored" for row in csv.DictReader(handle))


def run_score(bundle: Path, folder: Path, out: Path, device: str, log_path: Path) -> dict:
    """One ``brainad score`` subprocess: wall seconds, peak RSS (MB), exit status, rows scored."""
    command = [sys.executable, "-m", "brainad.cli", "score", "--model", str(bundle), str(folder)]
    command += ["--out", str(out), "--maps", "none", "--device", device]
    threads = str(torch.get_num_threads())  # the child uses as many threads as this run
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": threads}
    with open(log_path, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"brainad score exited {proc.returncode}:\n{tail}")
    return {
        "seconds": seconds,
        "rss_peak_mb": usage.ru_maxrss / 1024,  # Linux: kilobytes
        "scored": _count_scored(out / "scores.csv"),
    }


def demo_bundle(config: StudyConfig, image_size: int, path: Path) -> Path:
    """The untrained demo VQGAN+D bundle at ``image_size`` (``benchmarks.workloads``'s builder)."""
    from benchmarks.workloads import write_untrained_bundle

    return write_untrained_bundle(config, image_size, path)


def bench_archive(
    config: StudyConfig, sizes: Sequence[int], image_size: int, device: torch.device
) -> dict[str, Any]:
    """``brainad score`` on archives of each size in ``sizes`` (ascending); one JSON entry."""
    sizes = sorted(sizes)
    runs = []
    with tempfile.TemporaryDirectory(prefix="brainad-archive-") as tmp:
        work = Path(tmp)
        bundle = demo_bundle(config, image_size, work / "vqgan-demo-untrained.pt")
        for n in sizes:
            folder = work / f"archive-{n}"
            log.info("archive benchmark: writing %d JPEG slices", n)
            write_archive(folder, n, min(SOURCE_SIZE, 2 * image_size))
            log.info("archive benchmark: brainad score on %d files", n)
            result = run_score(bundle, folder, work / f"out-{n}", str(device), work / f"{n}.log")
            runs.append(
                {"files": n, **result, "images_per_s": result["scored"] / result["seconds"]}
            )
    return _entry(config, runs, image_size, device)


def _entry(config: StudyConfig, runs: list[dict], image_size: int, device: torch.device) -> dict:
    small, big = runs[0], runs[-1]
    marginal = (big["files"] - small["files"]) / max(big["seconds"] - small["seconds"], 1e-9)
    return {
        "model": f"vqgan ({config.name} study, untrained)",
        "files": big["files"],
        "source_size": min(SOURCE_SIZE, 2 * image_size),
        "image_size": image_size,
        "device": device.type,
        "precision": "fp32",
        "seconds": big["seconds"],
        "images_per_s": big["images_per_s"],
        "marginal_images_per_s": marginal,
        "rss_peak_mb": big["rss_peak_mb"],
        "rss_peak_increase_mb": big["rss_peak_mb"] - small["rss_peak_mb"],
        "memory_method": f"ru_maxrss of the subprocess; increase = {big['files']} vs "
        f"{small['files']} files",
        "cuda_peak_allocated_mb": None,
        "runs": runs,
    }


def bench_demo_archive(
    params: Path, sizes: Sequence[int], image_size: int, device: torch.device
) -> dict[str, Any]:
    """:func:`bench_archive` with the ``demo`` study's configs at ``image_size``."""
    config = load_study("demo", params)
    preprocess = dataclasses.replace(config.preprocess, image_size=image_size)
    return bench_archive(
        dataclasses.replace(config, preprocess=preprocess), sizes, image_size, device
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the archive row alone; writes its JSON entry and prints one line per size."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive", description=__doc__)
    parser.add_argument("--files", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--image-size", type=int, default=32, help="model input side (px)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--out", type=Path, default=Path("benchmarks_archive.json"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    entry = bench_demo_archive(args.params, args.files, args.image_size, select_device())
    write_json(args.out, entry)
    for run in entry["runs"]:
        print(
            f"| {run['files']} files | {run['seconds']:.1f} s | {run['images_per_s']:.1f} files/s "
            f"| peak RSS {run['rss_peak_mb']:.0f} MB |"
        )
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
