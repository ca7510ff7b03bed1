"""Perceptual feature networks: the fixed seeded net, and VGG16 only from a local weights file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brainad.config import PerceptualConfig
from brainad.models.perceptual import build_perceptual, perceptual_distance, perceptual_map

FIXED = PerceptualConfig(kind="fixed", channels=4, scales=2, seed=3, vgg16_weights="")


def test_fixed_network_depends_on_its_seed_only_and_is_frozen() -> None:
    torch.manual_seed(0)
    a = build_perceptual(FIXED)
    torch.manual_seed(123)
    b = build_perceptual(FIXED)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name
    assert all(not p.requires_grad for p in a.parameters())
    a.train()
    assert not a.training
    other = build_perceptual(PerceptualConfig(**{**FIXED.__dict__, "seed": 4}))
    assert not torch.equal(next(a.parameters()), next(other.parameters()))


def test_distance_is_zero_for_identical_images_and_grows_with_a_change() -> None:
    net = build_perceptual(FIXED)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 8:16, 8:16] = 1.0
    assert torch.allclose(perceptual_distance(net, x, x), torch.zeros(2), atol=1e-7)
    assert torch.all(perceptual_distance(net, x, y) > 0)
    m = perceptual_map(net, x, y)
    assert m.shape == (2, 1, 32, 32)
    assert m[:, :, 8:16, 8:16].mean() > m[:, :, 24:, 24:].mean()


def test_vgg16_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    for weights in ("", str(tmp_path / "missing.pth")):
        config = PerceptualConfig(kind="vgg16", channels=4, scales=1, seed=0, vgg16_weights=weights)
        with pytest.raises(ValueError, match="nothing is downloaded"):
            build_perceptual(config)


def test_vgg16_loads_a_local_features_state_dict(tmp_path: Path) -> None:
    from torchvision.models import vgg16

    features = vgg16(weights=None).features
    path = tmp_path / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    config = PerceptualConfig(kind="vgg16", channels=4, scales=1, seed=0, vgg16_weights=str(path))
    net = build_perceptual(config)
    assert torch.equal(net.body[0].weight, features[0].weight)
    out = net.features(torch.zeros(1, 1, 32, 32))
    assert [f.shape[1] for f in out] == [64, 128, 256]
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not VGG16 weights"):
        build_perceptual(PerceptualConfig(**{**config.__dict__, "vgg16_weights": str(bad)}))
