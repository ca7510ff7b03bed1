"""The small UNet of the denoising autoencoder and the segmenter: shapes per level, size checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brainad.models.blocks import group_norm
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


def test_group_norm_is_torchs_in_fp32_and_float32_math_for_bf16_channels_last() -> None:
    """fp32 (every deterministic run) and contiguous bf16 give nn.GroupNorm's own numbers bit for
    bit; a channels-last bf16 input (the slow kernel) is normalised in float32, returned in bf16,
    and its gradient flows."""
    torch.manual_seed(0)
    norm = group_norm(8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    plain = nn.GroupNorm(norm.num_groups, 8, eps=norm.eps)
    plain.load_state_dict(norm.state_dict())
    x = torch.randn(2, 8, 16, 16)
    last = x.contiguous(memory_format=torch.channels_last)
    for inputs in (x, last, x.bfloat16()):
        assert torch.equal(norm(inputs), plain(inputs))
    inputs = last.bfloat16().requires_grad_()
    out = norm(inputs)
    expected = F.group_norm(inputs.float(), norm.num_groups, norm.weight, norm.bias, norm.eps)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected.bfloat16(), rtol=0, atol=0)
    out.float().square().sum().backward()
    assert inputs.grad is not None and torch.isfinite(inputs.grad.float()).all()
