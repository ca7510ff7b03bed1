"""Tests for the synthetic phantom generator (tiny images, a few dozen files)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainad.config import PhantomConfig
from brainad.data.phantom import CONTRASTS, render_slice, write_phantom_dataset

CONFIG = PhantomConfig(n_healthy=20, n_anomalous=10, image_size=48, duplicate_fraction=0.25, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _gray(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("phantom") / "raw"
    return root, write_phantom_dataset(CONFIG, root)


def test_same_seed_writes_identical_bytes(written: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = written
    again = write_phantom_dataset(CONFIG, tmp_path / "again")
    assert _files(tmp_path / "again") == _files(root)
    assert again == summary


def test_different_seed_writes_different_images(written: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = written
    write_phantom_dataset(dataclasses.replace(CONFIG, seed=4), tmp_path / "other")
    first, other = _files(root), _files(tmp_path / "other")
    shared = set(first) & set(other)
    assert shared
    assert sum(first[name] != other[name] for name in shared) == len(shared)


def test_layout_counts_and_names(written: tuple[Path, dict]) -> None:
    root, summary = written
    n_dup = round(0.25 * 20)  # duplicate_fraction * n_healthy
    healthy = sorted(root.glob("*/notumor/*.jpg"))
    glioma_train = sorted(root.glob("Training/glioma/*.jpg"))
    glioma_test = sorted(root.glob("Testing/glioma/*.jpg"))
    assert len(healthy) == 20 + n_dup
    assert (len(glioma_train), len(glioma_test)) == (8, 2)  # 20 % of 10 in Testing
    assert {p.name for p in root.iterdir()} == {"Training", "Testing", "masks", "labels.csv"}
    for path in healthy + glioma_train + glioma_test:
        prefix = "Tr" if path.parent.parent.name == "Training" else "Te"
        code = "no" if path.parent.name == "notumor" else "gl"
        assert re.fullmatch(rf"{prefix}-{code}_\d{{4}}\.jpg", path.name), path
    channels = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim for p in healthy + glioma_train}
    assert channels == {2, 3}  # a mix of 1-channel and 3-channel JPEGs
    assert all(_gray(p).shape == (48, 48) for p in glioma_train + glioma_test)
    assert summary["n_images"] == len(healthy) + 10
    assert summary["n_duplicates"] == n_dup


def test_masks_match_every_anomalous_image(written: tuple[Path, dict]) -> None:
    root, summary = written
    gliomas = sorted(root.glob("*/glioma/*.jpg"))
    masks = sorted((root / "masks").rglob("*.png"))
    assert len(masks) == len(gliomas) == summary["n_masks"] == 10
    for image_path in gliomas:
        split = image_path.parent.parent.name
        mask = _gray(root / "masks" / split / "glioma" / f"{image_path.stem}.png")
        image = _gray(image_path)
        assert mask.shape == image.shape
        assert set(np.unique(mask).tolist()) == {0, 255}
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        assert image[mask > 0].mean() > 2 * border.mean() + 10  # inside the head, not background
    assert not list((root / "masks").rglob("notumor"))


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_tumour_changes_only_the_masked_region(contrast: str) -> None:
    for seed in range(6):
        healthy = render_slice(np.random.default_rng(seed), 64, contrast, tumour=False)
        lesion = render_slice(np.random.default_rng(seed), 64, contrast, tumour=True)
        assert not healthy.tumour_mask.any()
        mask = lesion.tumour_mask
        assert mask.sum() >= 10
        assert not (mask & ~lesion.brain_mask).any()  # the tumour grows inside the brain
        assert np.array_equal(healthy.brain_mask, lesion.brain_mask)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        difference = np.abs(healthy.image.astype(int) - lesion.image.astype(int))
        assert not difference[~near].any()  # paired control: identical away from the tumour
        assert difference[mask].mean() > 8  # the mask covers a visibly brighter/darker region


@pytest.mark.parametrize("contrast", CONTRASTS)
def test_brain_mask_lies_inside_a_dark_skull_and_bright_scalp(contrast: str) -> None:
    size = 96
    for seed in range(4):
        rendered = render_slice(np.random.default_rng(seed), size, contrast, tumour=False)
        brain, image = rendered.brain_mask, rendered.image.astype(float)
        assert brain.dtype == bool and 0.1 < brain.mean() < 0.6
        assert not (brain[0].any() or brain[-1].any() or brain[:, 0].any() or brain[:, -1].any())
        assert max(image[0].max(), image[-1].max()) < 40  # dark background at the border
        ys, xs = np.nonzero(brain)
        with_band = 0
        for angle in np.linspace(0, 2 * np.pi, 24, endpoint=False):
            radius = np.arange(0, size, 0.5)
            yy = np.clip(np.rint(ys.mean() + radius * np.sin(angle)).astype(int), 0, size - 1)
            xx = np.clip(np.rint(xs.mean() + radius * np.cos(angle)).astype(int), 0, size - 1)
            outside = int(np.argmin(brain[yy, xx]))
            assert not brain[yy[outside:], xx[outside:]].any()  # one crossing: no brain outside
            profile = image[yy[outside:], xx[outside:]][: int(0.15 * size)]
            peak = int(np.argmax(profile))  # the bright scalp ...
            with_band += profile[peak] - profile[: peak + 1].min() >= 20  # ... behind dark bone
        assert with_band >= 18  # of 24 rays


def test_near_duplicates_are_present_and_cross_folders(written: tuple[Path, dict]) -> None:
    root, summary = written
    paths = sorted(root.glob("*/notumor/*.jpg"))
    thumbs = []
    for path in paths:
        small = cv2.resize(_gray(path), (16, 16), interpolation=cv2.INTER_AREA).astype(float)
        thumbs.append((small - small.mean()).ravel() / (small.std() + 1e-6))
    similarity = np.corrcoef(np.stack(thumbs))
    rows, cols = np.nonzero(np.triu(similarity > 0.95, k=1))
    pairs = {
        frozenset((paths[i].relative_to(root).as_posix(), paths[j].relative_to(root).as_posix()))
        for i, j in zip(rows, cols)
    }
    listed = {frozenset((d["source"], d["copy"])) for d in summary["duplicates"]}
    assert listed == pairs  # every listed pair is a near-copy, and no other pair is
    sizes = {_gray(root / d["copy"]).shape[0] for d in summary["duplicates"]}
    assert sizes - {48}  # some copies were resized
    crossing = [d for d in summary["duplicates"] if d["source"][:5] != d["copy"][:5]]
    assert crossing and summary["n_duplicates_cross_folder"] == len(crossing)


def test_bad_config_and_non_empty_dest_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="duplicate_fraction"):
        write_phantom_dataset(dataclasses.replace(CONFIG, duplicate_fraction=1.5), tmp_path / "a")
    with pytest.raises(ValueError, match="image_size"):
        write_phantom_dataset(dataclasses.replace(CONFIG, image_size=8), tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        write_phantom_dataset(CONFIG, tmp_path / "c")
    with pytest.raises(ValueError, match="contrast"):
        render_slice(np.random.default_rng(0), 64, "dwi", tumour=False)
