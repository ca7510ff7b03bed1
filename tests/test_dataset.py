"""Device tensors, seeded DDP-aware batches and the training augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainad.config import AugmentConfig
from brainad.data.arrays import SplitArrays, empty_arrays
from brainad.training.batches import (
    SliceDataset,
    augment_batch,
    batch_indices,
    to_tensor,
)

OFF = AugmentConfig(flip=False, rotate_deg=0.0, contrast=0.0)


def _arrays(n: int = 6, size: int = 16) -> SplitArrays:
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, 1, size, size)).astype(np.float16)
    strings = np.array([f"f{i}.jpg" for i in range(n)])
    return SplitArrays(
        images=images,
        brain_masks=images > -0.5,
        lesion_masks=np.zeros(images.shape, bool),
        has_lesion_mask=np.zeros(n, bool),
        labels=np.array([0, 1] * (n // 2), np.int8),
        paths=strings,
        sha256=strings,
        class_names=np.array(["notumor", "glioma"] * (n // 2)),
        folders=np.array(["Training"] * n),
        fallback=np.zeros(n, bool),
        coverage=np.full(n, 0.4, np.float32),
    )


@pytest.fixture
def brains() -> torch.Tensor:
    """Four 32 px 'brains': textured off-centre disks on a -1 background."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disk = ((yy - 15) ** 2 + (xx - 12) ** 2) < 100
    texture = torch.sin(xx / 2) * 0.4 + yy / 64
    x = torch.where(disk, texture, torch.tensor(-1.0))
    dim = torch.where(disk, texture * 0.5, torch.tensor(-1.0))
    return torch.stack([x, dim, x.flip(0), x.T])[:, None].contiguous()


# ----------------------------------------------------------------------------- tensors
def test_to_tensor_and_healthy_only() -> None:
    arrays = _arrays()
    x = to_tensor(arrays, "cpu")
    assert x.dtype == torch.float32 and x.shape == (6, 1, 16, 16)
    np.testing.assert_array_equal(x.numpy(), arrays.images.astype(np.float32))
    healthy = to_tensor(arrays, torch.device("cpu"), healthy_only=True)
    assert healthy.shape[0] == 3
    np.testing.assert_array_equal(healthy.numpy(), arrays.images[::2].astype(np.float32))
    assert to_tensor(empty_arrays(8), "cpu").shape == (0, 1, 8, 8)


def test_slice_dataset_items() -> None:
    dataset = SliceDataset(_arrays(), healthy_only=True)
    assert len(dataset) == 3
    item = dataset[1]
    assert item.image.shape == (1, 16, 16) and item.image.dtype == torch.float32
    assert item.mask.dtype == torch.bool and item.label == 0
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=3)))
    assert batch.image.shape == (3, 1, 16, 16) and batch.label.tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------- batches
def test_batch_indices_are_deterministic_per_epoch() -> None:
    a = batch_indices(50, 8, seed=3, epoch=2)
    b = batch_indices(50, 8, seed=3, epoch=2)
    assert [t.tolist() for t in a] == [t.tolist() for t in b]
    assert len(a) == 50 // 8 and all(len(t) == 8 for t in a)
    assert len(set(torch.cat(a).tolist())) == 48  # a permutation: no repeats
    other_epoch = torch.cat(batch_indices(50, 8, seed=3, epoch=3)).tolist()
    other_seed = torch.cat(batch_indices(50, 8, seed=4, epoch=2)).tolist()
    assert torch.cat(a).tolist() != other_epoch and torch.cat(a).tolist() != other_seed


def test_batch_indices_keep_the_tail_without_drop_last() -> None:
    batches = batch_indices(10, 4, seed=0, epoch=0, drop_last=False)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert batch_indices(3, 4, seed=0, epoch=0) == []  # drop_last with fewer items than a batch


def test_ddp_shards_are_disjoint_and_cover() -> None:
    shards = [batch_indices(24, 3, seed=1, epoch=5, rank=r, world=4) for r in range(4)]
    assert len({len(s) for s in shards}) == 1  # every rank steps the same number of times
    flat = [torch.cat(s).tolist() for s in shards]
    assert sorted(sum(flat, [])) == list(range(24))
    assert all(set(flat[i]).isdisjoint(flat[j]) for i in range(4) for j in range(i + 1, 4))
    single = torch.cat(batch_indices(24, 3, seed=1, epoch=5)).tolist()
    assert sorted(single) == list(range(24))


def test_ddp_shards_with_uneven_n() -> None:
    dropped = [batch_indices(11, 2, seed=0, epoch=0, rank=r, world=3) for r in range(3)]
    assert {len(s) for s in dropped} == {1}  # 11 -> 9 usable -> 3 per rank -> 1 full batch
    padded = [
        batch_indices(11, 2, seed=0, epoch=0, rank=r, world=3, drop_last=False) for r in range(3)
    ]
    assert {len(s) for s in padded} == {2}
    assert set(sum((torch.cat(s).tolist() for s in padded), [])) == set(range(11))


def test_batch_indices_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rank"):
        batch_indices(10, 2, 0, 0, rank=2, world=2)
    with pytest.raises(ValueError, match="batch_size"):
        batch_indices(10, 0, 0, 0)


# ------------------------------------------------------------------------ augmentation
def test_augment_off_is_identity(brains: torch.Tensor) -> None:
    out = augment_batch(brains, OFF, torch.Generator().manual_seed(0))
    assert torch.equal(out, brains)


def test_augment_preserves_shape_range_and_background(brains: torch.Tensor) -> None:
    config = AugmentConfig(flip=True, rotate_deg=10.0, contrast=0.3)
    out = augment_batch(brains, config, torch.Generator().manual_seed(0))
    assert out.shape == brains.shape and out.dtype == brains.dtype
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.equal(out, brains)
    corners = out[..., :3, -3:]  # far from every disk: background must stay exactly -1
    assert torch.all(corners == -1)
    again = augment_batch(brains, config, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # reproducible from the generator
    half = augment_batch(brains.half(), config, torch.Generator().manual_seed(0))
    assert half.dtype == torch.float16


def test_flip_is_a_real_flip(brains: torch.Tensor) -> None:
    x = brains.repeat(8, 1, 1, 1)  # 32 samples
    out = augment_batch(x, AugmentConfig(True, 0.0, 0.0), torch.Generator().manual_seed(1))
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x)]
    kept = [torch.equal(o, i) for o, i in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_rotation_keeps_background_and_mass(brains: torch.Tensor) -> None:
    out = augment_batch(brains, AugmentConfig(False, 15.0, 0.0), torch.Generator().manual_seed(2))
    assert not torch.equal(out, brains)
    area_in = (brains > -1).float().sum(dim=(1, 2, 3))
    area_out = (out > -0.6).float().sum(dim=(1, 2, 3))  # edge pixels are interpolated
    assert torch.allclose(area_in, area_out, rtol=0.1)  # a rotation, not a zoom or a shift
    assert torch.all(out[..., 0, :] == -1) and torch.all(out[..., -1, :] == -1)


def test_contrast_scales_brain_pixels_only(brains: torch.Tensor) -> None:
    contrast = 0.3
    out = augment_batch(brains, AugmentConfig(False, 0.0, contrast), torch.Generator())
    background = brains == -1
    assert torch.equal(out[background], brains[background])
    for o, i, bg in zip(out, brains, background):
        ratio = o[~bg].std() / i[~bg].std()
        assert 1 - contrast - 1e-4 <= ratio <= 1 + contrast + 1e-4
        assert torch.isclose(o[~bg].mean(), i[~bg].mean(), atol=1e-4)  # about the brain mean


def test_augment_rejects_bad_input(brains: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment_batch(brains[0], OFF, torch.Generator())
    with pytest.raises(ValueError, match="rotate_deg"):
        augment_batch(brains, AugmentConfig(False, -1.0, 0.0), torch.Generator())
