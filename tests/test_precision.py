"""bf16 scoring (``GANDetector(..., precision="bf16")``) against fp32: a measured, documented tolerance.

Setting: 32 phantom slices of 64 px (contrasts in turn, every fourth with a tumour), the score
settings of ``params.yaml``'s defaults (l1 residual, 5-px Gaussian smoothing, mean over the brain
mask, residual weight 1 only, so the combined score is the standardised residual), CPU autocast.
Models: a small VQGAN+D whose codebook is initialised from the data (three training-mode forward
passes, as after its first training step), and the DCGAN (encoder + generator) with PyTorch's
default initialisation and BatchNorm statistics from one training-mode pass — with the DCGAN
initialisation N(0, 0.02) an untrained ``G(E(x))`` is almost 0 and the test would be vacuous.

Measured on 2026-11-25 (Xeon with AVX512-BF16/AMX, torch 2.14.1, seeds 0-11; identical with 1 and
2 threads), per-image error of the residual score (= the combined score before standardisation)
and ranking agreement, worst seed of each column:

=======================  ===============  ==================  ================
model                    max rel. error   median rel. error   Spearman (min)
=======================  ===============  ==================  ================
VQGAN (all bf16)         4.8 %            0.85 %              0.9725
VQGAN (fp32 codes)       0.38 %           0.09 %              0.9985
DCGAN                    0.49 %           0.21 %              0.9985
=======================  ===============  ==================  ================

The VQGAN misses the issue's example tolerance (2 %, Spearman 0.98): its bf16 encoder output
picks a different nearest code at 1-3 % of the latent positions, and a changed code changes the
reconstruction of a whole patch. With the codes of an fp32 encoder (``FP32Codes``), the bf16
decoder alone stays within 0.4 %. The tolerances below are the worst measured values with a margin
(1.6-2x on errors): they guard against regressions; they do not certify bf16 for the evaluation,
which scores in fp32. The tests run one torch thread: results do not depend on it, and on a shared
CPU, OpenMP threads waiting for a descheduled peer made them 25x slower.

Skipped when the CPU has no fast bf16 (no AVX512-BF16/AMX: ``choose_precision("auto")`` is not
bf16), where autocast would only emulate it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from brainad.config import DCGANConfig, PerceptualConfig, VQGANConfig
from brainad.data.phantom import CONTRASTS, render_slice
from brainad.models.dcgan import DCGAN
from brainad.models.perceptual import build_perceptual
from brainad.models.vqgan import VQGAN
from brainad.scoring.detector import score_raw
from brainad.scoring.gan import SELECTION_SCORE, GANDetector
from brainad.training.loop import choose_precision

SIZE = 64
COUNT = 32
CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(
    choose_precision("auto", CPU).name != "bf16",
    reason="this CPU has no fast bf16 (AVX512-BF16/AMX); autocast would only emulate it",
)


class Tolerance(NamedTuple):
    """Bounds on bf16-vs-fp32 agreement of the per-image residual score."""

    max_relative: float
    median_relative: float
    min_spearman: float


VQGAN_TOLERANCE = Tolerance(max_relative=0.08, median_relative=0.015, min_spearman=0.95)
VQGAN_FP32_CODES_TOLERANCE = Tolerance(
    max_relative=0.0075, median_relative=0.002, min_spearman=0.99
)
DCGAN_TOLERANCE = Tolerance(max_relative=0.01, median_relative=0.005, min_spearman=0.99)

SCORE = dataclasses.replace(SELECTION_SCORE, smoothing="gaussian", smoothing_px=5, batch_size=16)
PERCEPTUAL = PerceptualConfig(kind="fixed", channels=8, scales=2, seed=0, vgg16_weights="")


class Phantoms(NamedTuple):
    images: np.ndarray  # float32 (N, 1, S, S) in [-1, 1]
    masks: np.ndarray  # bool (N, 1, S, S)


def phantoms(seed: int) -> Phantoms:
    rng = np.random.default_rng(seed)
    slices = [
        render_slice(rng, SIZE, CONTRASTS[i % len(CONTRASTS)], tumour=i % 4 == 0)
        for i in range(COUNT)
    ]
    images = np.stack([s.image for s in slices])[:, None].astype(np.float32) / 127.5 - 1.0
    return Phantoms(images, np.stack([s.brain_mask for s in slices])[:, None])


def small_vqgan(data: Phantoms, seed: int) -> VQGAN:
    """A small VQGAN+D whose codebook was initialised from ``data`` (no optimiser steps)."""
    torch.manual_seed(seed)
    config = VQGANConfig(
        channels=8,
        channel_mult=(1, 2, 2),
        res_blocks=1,
        embedding_dim=16,
        codebook_size=32,
        ema_decay=0.99,
        commitment_weight=0.25,
        dead_code_threshold=0.01,
        disc_channels=8,
        disc_layers=2,
        l1_weight=1.0,
        perceptual_weight=0.1,
        adv_start=0.1,
        adv_slope=0.0,
        adv_cap=0.5,
    )
    model = VQGAN(config, PERCEPTUAL, SIZE).train()
    x = torch.from_numpy(data.images)
    with torch.no_grad():
        for _ in range(3):
            model.generator["quantizer"](model.generator["encoder"](x))
    return model.eval()


def small_dcgan(data: Phantoms, seed: int) -> DCGAN:
    """A DCGAN with PyTorch's default init and BatchNorm statistics of ``data`` (no training)."""
    torch.manual_seed(seed)
    config = DCGANConfig(
        latent_dim=32, channels=8, encoder_kappa=1.0, latent_steps=0, latent_lr=0.05
    )
    model = DCGAN(config, SIZE)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one pass gives the batch statistics
    model.train()
    with torch.no_grad():
        model.generator(model.encoder(torch.from_numpy(data.images)))
    return model.eval()


class FP32Codes(nn.Module):
    """A VQGAN whose encoder and quantiser run in fp32 even under autocast (decoder does not).

    Args:
        vqgan: the wrapped model.
    """

    def __init__(self, vqgan: VQGAN) -> None:
        super().__init__()
        self.vqgan = vqgan

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            quant = self.vqgan.quantize(self.vqgan.encode(x.float()))
        return self.vqgan.decode(quant.quantized)

    def discriminator_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqgan.discriminator_features(x)


class Agreement(NamedTuple):
    max_relative: float
    median_relative: float
    spearman: float


def _ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values)).astype(np.float64)


def agreement(model: nn.Module, data: Phantoms) -> Agreement:
    """bf16-vs-fp32 agreement of the per-image residual score of ``model`` on ``data``."""
    net = build_perceptual(PERCEPTUAL)
    scores = {
        precision: score_raw(
            GANDetector("under_test", model, SCORE, net, CPU, precision, components=("residual",)),
            data.images,
            data.masks,
        )
        .components["residual"]
        .astype(np.float64)
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = scores["fp32"], scores["bf16"]
    assert np.all(fp32 > 0), "a zero fp32 score would make the relative error meaningless"
    relative = np.abs(bf16 - fp32) / fp32
    spearman = float(np.corrcoef(_ranks(fp32), _ranks(bf16))[0, 1])
    return Agreement(float(relative.max()), float(np.median(relative)), spearman)


def assert_within(measured: Agreement, tolerance: Tolerance) -> None:
    assert measured.max_relative <= tolerance.max_relative, measured
    assert measured.median_relative <= tolerance.median_relative, measured
    assert measured.spearman >= tolerance.min_spearman, measured


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for this module (see the module docstring), restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data() -> Phantoms:
    return phantoms(seed=0)


def test_scores_spread_across_images(data: Phantoms) -> None:
    """The ranking check needs scores that differ between images (coefficient of variation)."""
    model = small_vqgan(data, seed=0)
    net = build_perceptual(PERCEPTUAL)
    detector = GANDetector("under_test", model, SCORE, net, CPU, components=("residual",))
    table = score_raw(detector, data.images, data.masks)
    residual = table.components["residual"]
    assert residual.std() / residual.mean() > 0.05


def test_vqgan_bf16_scores_within_tolerance(data: Phantoms) -> None:
    assert_within(agreement(small_vqgan(data, seed=0), data), VQGAN_TOLERANCE)


def test_vqgan_bf16_decoder_on_fp32_codes_is_close(data: Phantoms) -> None:
    """Where the VQGAN's bf16 error comes from: with fp32 codes the bf16 decoder is < 0.4 % off."""
    model = FP32Codes(small_vqgan(data, seed=0))
    assert_within(agreement(model, data), VQGAN_FP32_CODES_TOLERANCE)


def test_dcgan_bf16_scores_within_tolerance(data: Phantoms) -> None:
    model = small_dcgan(data, seed=0)
    with torch.no_grad():
        recon = model.reconstruct(torch.from_numpy(data.images))
    assert recon.std() > 0.2, "the reconstruction must not be ~0 (that would make this vacuous)"
    assert_within(agreement(model, data), DCGAN_TOLERANCE)
