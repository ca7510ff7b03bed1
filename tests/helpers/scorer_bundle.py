"""A tiny scorer bundle and phantom scans for the ``brainad score`` tests (32 px, CPU, seconds).

The bundle is what the evaluate stage writes (``save_scorer``) around a freshly initialised
micro VQGAN+D with a calibration fitted on a few phantom slices, so some scans are flagged and
some are not. An untrained model does the same work per image as a trained one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from brainad.config import load_study
from brainad.data.phantom import CONTRASTS, render_slice
from brainad.models.vqgan import VQGAN
from brainad.scoring.bundle import ScorerBundle, make_detector, save_scorer
from brainad.scoring.calibration import Calibration

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SIZE = 32
SOURCE_SIZE = 64


def micro_config():
    """The demo study shrunk to 32 px and a micro VQGAN+D (as in tests/test_pipeline.py)."""
    config = load_study("demo", ROOT / "params.yaml")
    model = dataclasses.replace(
        config.vqgan.model,
        channels=8,
        channel_mult=(1, 2),
        embedding_dim=8,
        codebook_size=16,
        disc_channels=8,
        disc_layers=2,
    )
    return dataclasses.replace(
        config,
        preprocess=dataclasses.replace(config.preprocess, image_size=IMAGE_SIZE),
        perceptual=dataclasses.replace(config.perceptual, channels=4, scales=2),
        vqgan=dataclasses.replace(config.vqgan, model=model),
        score=dataclasses.replace(config.score, batch_size=16),
    )


def write_bundle(
    path: Path, threshold: float = 0.0, seed: int = 0, volume: dict | None = None
) -> Path:
    """Write a micro scorer bundle to ``path``; standardisation statistics 0/1 (raw scores);
    ``volume`` overrides keys of the study's volume settings."""
    config = micro_config()
    config = dataclasses.replace(
        config, volume=dataclasses.replace(config.volume, **(volume or {}))
    )
    torch.manual_seed(seed)
    model = VQGAN(config.vqgan.model, config.perceptual, IMAGE_SIZE)
    detector = make_detector("vqgan", model, config.score, config.perceptual, torch.device("cpu"))
    names = detector.components  # the study's combination (e.g. + mirror asymmetry) included
    calibration = Calibration(
        {c: 0.0 for c in names}, {c: 1.0 for c in names}, threshold, "fixed", {}
    )
    meta = {"study": "test", "model": "vqgan", "epoch": 0, "note": "untrained test bundle"}
    bundle = ScorerBundle(
        model, calibration, config.score, config.preprocess, config.perceptual, meta, config.volume
    )
    save_scorer(path, bundle)
    return path


def phantom_slices(n: int, seed: int = 0, size: int = SOURCE_SIZE) -> list[np.ndarray]:
    """``n`` distinct uint8 phantom head slices (contrasts in turn, every third with a tumour)."""
    rng = np.random.default_rng(seed)
    return [
        render_slice(rng, size, CONTRASTS[i % len(CONTRASTS)], tumour=i % 3 == 0).image
        for i in range(n)
    ]


def encode(image: np.ndarray, suffix: str = ".png") -> bytes:
    """``image`` encoded by OpenCV (``.png``, ``.jpg``, ``.bmp``, ``.tif``)."""
    ok, data = cv2.imencode(suffix, image)
    assert ok, suffix
    return data.tobytes()


def write_scans(folder: Path, n: int, seed: int = 0, suffix: str = ".png") -> list[Path]:
    """``n`` distinct phantom scans ``scan_000.png`` ... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(phantom_slices(n, seed)):
        path = folder / f"scan_{i:03d}{suffix}"
        path.write_bytes(encode(image, suffix))
        paths.append(path)
    return paths
