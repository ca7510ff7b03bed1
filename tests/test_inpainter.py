"""The masked-region inpainter: masks, no sight of the hidden pixels, training by the one loop,
scoring, rebuild."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers.brains import INPAINTER, SIZE, disc_brains
from helpers.toy_gan import toy_config

from brainad.config import AugmentConfig
from brainad.models.checkpoint import load_model, save_checkpoint
from brainad.models.inpainter import PHASES, Inpainter, cell_masks
from brainad.models.protocol import GANModule
from brainad.models.registry import entry
from brainad.training.loop import FitPaths, fit

CPU = torch.device("cpu")
NO_AUGMENT = AugmentConfig(flip=False, rotate_deg=0.0, contrast=0.0)


def _inpainter(seed: int = 0, **change) -> Inpainter:
    torch.manual_seed(seed)
    return Inpainter(dataclasses.replace(INPAINTER, **change), SIZE).eval()


def _phase_masks(size: int, cell: int) -> torch.Tensor:
    """(4, 1, S, S): the hidden cells of the four scoring phases (unshifted grid)."""
    phases = torch.tensor(PHASES)
    return cell_masks(size, cell, phases, torch.zeros(4, 2, dtype=torch.long), CPU)


def test_the_four_phases_hide_every_pixel_exactly_once() -> None:
    masks = _phase_masks(SIZE, 4)
    assert torch.equal(masks.sum(0), torch.ones(1, SIZE, SIZE, dtype=torch.long))
    assert masks[0, 0, :4, :4].all() and not masks[0, 0, :4, 4:8].any()  # 4-px cells
    assert masks.float().mean() == 0.25


def test_training_masks_hide_a_quarter_of_shifted_cells() -> None:
    model = _inpainter()
    x, _ = disc_brains(64, seed=2)
    hidden = model.training_masks(x, torch.Generator().manual_seed(0))
    assert hidden.shape == x.shape and hidden.dtype == torch.bool
    share = hidden.float().mean().item()
    assert 0.15 < share < 0.35, share
    # random offsets: not every mask is one of the four unshifted phases
    unshifted = _phase_masks(SIZE, 4)
    same = (hidden[:, None] == unshifted[None]).flatten(2).all(-1).any(-1)
    assert not same.all()


def test_the_prediction_of_hidden_pixels_ignores_their_content() -> None:
    """Whatever is in a hidden cell (here: a bright 'lesion'), the prediction there is the same:
    the input channels, mirror included, carry nothing of it."""
    model = _inpainter()
    x, _ = disc_brains(2)
    hidden = _phase_masks(SIZE, 4)[:1].expand(2, -1, -1, -1)
    lesioned = torch.where(hidden, torch.ones_like(x), x)
    assert torch.equal(model.inputs(x, hidden), model.inputs(lesioned, hidden))
    assert torch.equal(model.predict(x, hidden), model.predict(lesioned, hidden))


def test_reconstruct_takes_each_pixel_from_the_pass_that_hid_it() -> None:
    model = _inpainter()
    x, _ = disc_brains(2)
    masks = _phase_masks(SIZE, 4)
    expected = torch.zeros_like(x)
    for hidden in masks:
        hidden = hidden.expand_as(x)
        expected = torch.where(hidden, model.predict(x, hidden), expected)
    assert torch.allclose(model.reconstruct(x), expected.clamp(-1, 1))
    # a change inside one cell moves the reconstruction only outside that cell
    changed = x.clone()
    changed[:, :, 8:12, 8:12] = 1.0
    diff = (model.reconstruct(changed) - model.reconstruct(x)).abs()
    assert diff[:, :, 8:12, 8:12].max() == 0 and diff.max() > 0


def test_protocol_and_registry() -> None:
    model = _inpainter()
    x, _ = disc_brains(4)
    assert isinstance(model, GANModule) and entry("inpainter").cls is Inpainter
    assert list(model.networks()) == ["generator"]
    out = model.train().generator_step(x, 0)
    assert out.fake is None and out.loss.ndim == 0 and out.loss > 0
    assert model.discriminator_step(x, x, 0) is None
    assert model.eval().reconstruct(x * 3).abs().max() <= 1.0
    plain = _inpainter(mirror_channel=False)
    assert plain.inputs(x, torch.zeros_like(x, dtype=torch.bool)).shape[1] == 2


def test_loss_counts_hidden_brain_pixels_only() -> None:
    """Changing the output on visible pixels or outside the brain does not change the loss."""
    model = _inpainter()
    x, masks = disc_brains(4)
    torch.manual_seed(1)
    base = model.generator_step(x, 0).loss
    saved = {}

    def remember(_m, inputs, out):
        saved["hidden"] = inputs[0][:, 1:2] > 0.5
        keep = saved["hidden"] & masks
        return torch.where(keep, out, out + 5.0)

    model.unet.register_forward_hook(remember)
    torch.manual_seed(1)
    assert torch.allclose(model.generator_step(x, 0).loss, base)


def test_the_one_loop_lowers_the_inpainting_loss(tmp_path: Path) -> None:
    images, _ = disc_brains(64, seed=1)
    config = toy_config(epochs=8, batch_size=16, lr=3e-3, beta1=0.9, augment=NO_AUGMENT)
    paths = FitPaths(tmp_path / "c", tmp_path / "f.pt", tmp_path / "b.pt", tmp_path / "s", None)
    result = fit(_inpainter().train(), images, config, paths, device=CPU)  # 32 steps
    losses = [entry["g_loss"] for entry in result.history]
    assert losses[-1] < 0.6 * losses[0], losses


def test_checkpoint_rebuilds_the_same_model(tmp_path: Path) -> None:
    model = _inpainter(seed=3)
    save_checkpoint(tmp_path / "inpainter.pt", model, epoch=1)
    rebuilt, _ = load_model(tmp_path / "inpainter.pt")
    x, _ = disc_brains(2)
    assert type(rebuilt) is Inpainter and rebuilt.config == model.config
    assert torch.equal(rebuilt.reconstruct(x), model.reconstruct(x))


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match="inpainter.model.cell"):
        _inpainter(cell=SIZE)
    with pytest.raises(ValueError, match="inpainter.model.cell"):
        _inpainter(cell=0)
