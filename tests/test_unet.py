"""The small UNet of the denoising autoencoder and the segmenter: shapes per level, size checks."""

from __future__ import annotations

import pytest
import torch

from brainad.models.unet import UNet, check_unet


def test_unet_keeps_the_image_size_and_halves_it_per_level() -> None:
    net = UNet((4, 8, 16, 32), in_channels=2, out_channels=3)
    seen: list[tuple[int, ...]] = []
    for step in net.down:
        step.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    out = net(torch.randn(2, 2, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    assert seen == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4)]
    assert net.stem.body[0].in_channels == 2


def test_unet_output_sees_the_skip_and_the_bottleneck() -> None:
    """A change in one corner moves the output there (skip) and far away (coarse levels)."""
    torch.manual_seed(0)
    net = UNet((4, 8, 16), in_channels=1, out_channels=1).eval()
    x = torch.zeros(1, 1, 16, 16)
    y = x.clone()
    y[..., :3, :3] = 1.0
    with torch.no_grad():
        diff = (net(y) - net(x)).abs()[0, 0]
    assert diff[:3, :3].mean() > 0 and diff[-4:, -4:].mean() > 0


def test_check_unet_names_the_key_and_the_fix() -> None:
    check_unet((8, 16, 32, 64), 64, "dae.model")
    with pytest.raises(ValueError, match=r"dae\.model\.channels .* divisible by 8"):
        check_unet((8, 16, 32, 64), 36, "dae.model")
    with pytest.raises(ValueError, match=r"segmenter\.model\.channels must be a non-empty"):
        check_unet((), 64, "segmenter.model")
    with pytest.raises(ValueError, match="in_channels and out_channels"):
        UNet((4,), in_channels=0, out_channels=1)
