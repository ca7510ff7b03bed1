"""The anomaly segmenter and its detector: mirror channel, training by the one loop, scoring
(a corrupted image above its clean twin), detector dispatch, scorer bundle, train-time validator."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.brains import (
    DAE,
    SEGMENTER,
    SIZE,
    bundle_preprocess,
    disc_brains,
    segmenter_config,
    split_arrays,
)
from helpers.toy_gan import toy_config
from torch import nn

from brainad import runtime
from brainad.config import AugmentConfig, PerceptualConfig
from brainad.models.dae import DenoisingAE
from brainad.models.segmenter import Segmenter
from brainad.scoring.bundle import ScorerBundle, load_scorer, make_detector, save_scorer
from brainad.scoring.calibration import Calibration
from brainad.scoring.detector import Detector, score_raw
from brainad.scoring.gan import SELECTION_SCORE, GANDetector
from brainad.scoring.segmenter import SegmenterDetector
from brainad.training.loop import FitPaths, fit
from brainad.training.runner import make_segmenter_validator

CPU = torch.device("cpu")
PERCEPTUAL = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=0, vgg16_weights="")
SCORE = dataclasses.replace(SELECTION_SCORE, smoothing="gaussian", smoothing_px=3, batch_size=8)


def _segmenter(seed: int = 0, **change) -> Segmenter:
    torch.manual_seed(seed)
    return Segmenter(segmenter_config(**change), SIZE)


class Asymmetry(nn.Module):
    """A hand-set 'UNet' for the mirror-channel input: the logit rises with |slice − mirror|."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 20.0 * (inputs[:, :1] - inputs[:, 1:]).abs() - 5.0


@pytest.fixture(scope="module")
def trained() -> tuple[Segmenter, list[float]]:
    """A segmenter after 48 steps of the one training loop on 96 tiny healthy 'brains', and its
    per-epoch mean losses."""
    images, _ = disc_brains(96, seed=1)
    config = toy_config(
        epochs=8, batch_size=16, lr=3e-3, beta1=0.9,
        augment=AugmentConfig(flip=True, rotate_deg=0.0, contrast=0.0),
    )  # fmt: skip
    model = _segmenter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = FitPaths(root / "c", root / "f.pt", root / "b.pt", root / "s", None)
        result = fit(model, images, config, paths, device=CPU)
    return model.eval(), [entry["g_loss"] for entry in result.history]


def test_the_one_loop_lowers_the_segmentation_loss(trained) -> None:
    _, losses = trained
    assert losses[-1] < 0.6 * losses[0], losses


def test_mirror_channel_and_shapes() -> None:
    x, _ = disc_brains(3)
    mirrored = _segmenter()
    inputs = mirrored.inputs(x)
    assert inputs.shape == (3, 2, SIZE, SIZE) and torch.equal(inputs[:, 1:], x.flip(-1))
    assert mirrored.unet.stem.body[0].in_channels == 2
    single = _segmenter(mirror_channel=False)
    assert single.inputs(x) is x and single.unet.stem.body[0].in_channels == 1
    probability = mirrored.probability(x)
    assert probability.shape == x.shape and 0 <= probability.min() and probability.max() <= 1
    out = mirrored.generator_step(x, 0)
    assert out.fake is None and out.loss > 0 and mirrored.discriminator_step(x, x, 0) is None
    assert list(mirrored.networks()) == ["generator"]


def test_a_corrupted_slice_scores_above_its_clean_twin() -> None:
    """The detector path (mirror input → probability inside the brain → smoothing →
    aggregation) with a hand-set network: 48 training steps are too few for a reliable ranking
    (measured: 42-71 % of pairs), a left-right asymmetry detector is exact on symmetric slices."""
    clean, masks = disc_brains(24, seed=9)
    clean = torch.where(masks, (clean + clean.flip(-1)) / 2, clean)  # symmetric 'brains'
    config = dataclasses.replace(SEGMENTER, clean_fraction=0.0)
    corrupted = Segmenter(config, SIZE).corrupt(clean, torch.Generator().manual_seed(5)).images
    model = _segmenter()
    model.unet = Asymmetry()
    detector = SegmenterDetector("segmenter", model, SCORE, CPU)
    assert isinstance(detector, Detector)
    both, brain = torch.cat([clean, corrupted]).numpy(), torch.cat([masks, masks]).numpy()
    scores = score_raw(detector, both, brain, keep_maps=True)
    values = scores.components["segmentation"]
    assert (values[24:] > values[:24]).all(), values
    assert scores.recons is None and scores.maps.shape == both.shape
    assert (scores.maps[~brain] == 0).all()


def test_fast_scoring_runs_channels_last_and_pinned_scoring_is_unchanged() -> None:
    """Fast mode runs the forward pass with channels-last weights and puts the model's own
    tensors back; deterministic mode keeps the model's layout and its numbers are exactly the
    plain forward pass's (the detector before channels-last scoring)."""
    model = _segmenter(seed=4)
    first = model.unet.stem.body[0]
    layouts: list[bool] = []
    first.register_forward_pre_hook(
        lambda m, _: layouts.append(m.weight.is_contiguous(memory_format=torch.channels_last))
    )
    before = {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    x, masks = disc_brains(6, seed=3)
    detector = SegmenterDetector("segmenter", model, SCORE, CPU)
    fast = detector.maps(x, masks).pixel["segmentation"]
    with runtime.deterministic_kernels(True):
        pinned = detector.maps(x, masks).pixel["segmentation"]
        with torch.no_grad():
            plain = model.eval().probability(x).float() * masks
    assert layouts == [True, False, False]
    assert before == {name: (p.data_ptr(), p.stride()) for name, p in model.named_parameters()}
    assert torch.equal(pinned, plain)
    torch.testing.assert_close(fast, pinned, rtol=0, atol=1e-5)


def test_make_detector_dispatches_on_the_registry_kind() -> None:
    dae = make_detector("dae", DenoisingAE(DAE, SIZE), SCORE, PERCEPTUAL, CPU)
    segmenter = make_detector("segmenter", _segmenter(), SCORE, PERCEPTUAL, CPU)
    assert type(dae) is GANDetector and dae.components == ("residual",)
    assert type(segmenter) is SegmenterDetector and segmenter.components == ("segmentation",)
    with pytest.raises(ValueError, match="score.aggregate"):
        make_detector("segmenter", _segmenter(), dataclasses.replace(SCORE, aggregate="median"),
                      PERCEPTUAL, CPU)  # fmt: skip


def test_scorer_bundle_round_trip_scores_the_same(tmp_path: Path, trained) -> None:
    calibration = Calibration({"segmentation": 0.1}, {"segmentation": 0.05}, 1.0, "fixed", {})
    preprocess = bundle_preprocess()
    meta = {"study": "test", "model": "segmenter", "epoch": 8}
    bundle = ScorerBundle(trained[0], calibration, SCORE, preprocess, PERCEPTUAL, meta)
    save_scorer(tmp_path / "segmenter.pt", bundle)
    loaded = load_scorer(tmp_path / "segmenter.pt")
    assert loaded.calibration == calibration
    x, masks = disc_brains(4, seed=2)
    before = score_raw(bundle.detector(CPU), x.numpy(), masks.numpy()).components
    after = score_raw(loaded.detector(CPU), x.numpy(), masks.numpy()).components
    np.testing.assert_array_equal(before["segmentation"], after["segmentation"])


def test_validator_uses_a_fixed_corrupted_copy(trained) -> None:
    images, masks = disc_brains(12, seed=7)
    labels = np.r_[np.zeros(8), np.ones(4)]
    validate = make_segmenter_validator(split_arrays(images, masks, labels), CPU, batch=5)
    first, second = validate(trained[0]), validate(trained[0])
    assert first == second and set(first) == {"val_seg", "val_auroc"}
    assert 0 < first["val_seg"] < 1 and 0 <= first["val_auroc"] <= 1
    untrained = validate(_segmenter(seed=1))
    assert first["val_seg"] < untrained["val_seg"]
