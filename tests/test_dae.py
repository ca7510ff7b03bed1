"""The coarse-noise denoising autoencoder: protocol, training by the one loop, scoring, rebuild."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.brains import DAE, SIZE, disc_brains
from helpers.toy_gan import toy_config
from torch import nn

from brainad.config import AugmentConfig
from brainad.models.checkpoint import load_model, save_checkpoint
from brainad.models.dae import DenoisingAE
from brainad.models.protocol import GANModule
from brainad.scoring.gan import SELECTION_SCORE, GANDetector
from brainad.training.loop import FitPaths, fit

CPU = torch.device("cpu")
NO_AUGMENT = AugmentConfig(flip=False, rotate_deg=0.0, contrast=0.0)


def _dae(seed: int = 0, **change) -> DenoisingAE:
    torch.manual_seed(seed)
    return DenoisingAE(dataclasses.replace(DAE, **change), SIZE)


def test_protocol_without_a_discriminator() -> None:
    model = _dae()
    x, _ = disc_brains(4)
    assert isinstance(model, GANModule)
    assert list(model.networks()) == ["generator"] and model.networks()["generator"] is model.unet
    out = model.generator_step(x, 0)
    assert out.fake is None and out.loss.ndim == 0 and out.loss > 0
    assert model.discriminator_step(x, x, 0) is None
    recon = model.reconstruct(x * 3)  # out-of-range input: the output is still clipped
    assert recon.shape == x.shape and recon.abs().max() <= 1.0


def test_loss_is_measured_inside_the_brain_only() -> None:
    """Changing the UNet's output outside the brain does not change the loss."""
    model = _dae(noise_std=0.0)
    x, masks = disc_brains(4)
    torch.manual_seed(1)
    base = model.generator_step(x, 0).loss
    model.unet.register_forward_hook(lambda _m, _i, out: torch.where(masks, out, out + 5.0))
    assert torch.allclose(model.generator_step(x, 0).loss, base)


def test_the_one_loop_lowers_the_denoising_loss(tmp_path: Path) -> None:
    images, _ = disc_brains(64, seed=1)
    config = toy_config(epochs=8, batch_size=16, lr=3e-3, beta1=0.9, augment=NO_AUGMENT)
    paths = FitPaths(tmp_path / "c", tmp_path / "f.pt", tmp_path / "b.pt", tmp_path / "s", None)
    result = fit(_dae(), images, config, paths, device=CPU)  # 8 epochs x 4 steps = 32 steps
    losses = [entry["g_loss"] for entry in result.history]
    assert losses[-1] < 0.6 * losses[0], losses


def test_a_discriminator_score_is_refused_with_the_key_to_change() -> None:
    score = dataclasses.replace(SELECTION_SCORE, weight_discriminator=1.0)
    components = ("residual", "discriminator")
    detector = GANDetector("dae", _dae(), score, nn.Identity(), CPU, components=components)
    x, masks = disc_brains(2)
    with pytest.raises(ValueError, match="score.weight_discriminator: 0"):
        detector.maps(x, masks)


def test_the_shared_detector_leaves_out_the_discriminator_for_the_dae(caplog) -> None:
    """A study whose score weighs the GANs' discriminator (the thesis) still scores the dae:
    make_detector drops that component for it and says so."""
    from brainad.config import load_study
    from brainad.scoring.bundle import make_detector

    study = load_study("thesis", Path(__file__).resolve().parents[1] / "params.yaml")
    assert study.score.weight_discriminator > 0
    with caplog.at_level("WARNING", logger="brainad"):
        detector = make_detector("dae", _dae(), study.score, study.perceptual, CPU)
    assert "no discriminator" in caplog.text
    assert "discriminator" not in detector.components and "discriminator" not in {
        k for k, w in detector.weights.items() if w
    }
    x, masks = disc_brains(2)
    assert "discriminator" not in detector.scores(detector.maps(x, masks), masks).components


def test_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = _dae(seed=3)
    save_checkpoint(tmp_path / "dae.pt", model, epoch=1)
    rebuilt, _ = load_model(tmp_path / "dae.pt")
    x, _ = disc_brains(2)
    assert type(rebuilt) is DenoisingAE and rebuilt.config == model.config
    assert torch.equal(rebuilt.reconstruct(x), model.eval().reconstruct(x))


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="dae.model.noise_res"):
        _dae(noise_res=SIZE + 1)
    with pytest.raises(ValueError, match="dae.model.noise_std"):
        _dae(noise_std=-0.1)
