"""A 2-D model's detector on a volume's own grid (scoring/native.py) and the case slices as
model inputs (data/volume_arrays.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.volumes import brats_case

from brainad.config import CasePatterns, CaseSourceConfig, SliceRulesConfig, load_study
from brainad.data.brats import read_cases, slice_rows, slice_stack
from brainad.data.volume_arrays import model_arrays
from brainad.scoring.detector import AnomalyMaps, ImageScores, pixel_maps
from brainad.scoring.native import NativeGrid

ROOT = Path(__file__).resolve().parents[1]
DEMO = load_study("demo", ROOT / "params.yaml")


class Echo:
    """A fake model detector: its one raw map is its (preprocessed) input, shifted to >= 0."""

    name, kind, batch_size = "echo", "model", 8
    components, weights, standardise = ("residual",), {"residual": 1.0}, True

    def __init__(self) -> None:
        self.seen: list[tuple[int, ...]] = []

    def fit(self, images, masks) -> None:
        pass

    def maps(self, images: torch.Tensor, masks: torch.Tensor) -> AnomalyMaps:
        self.seen.append(tuple(images.shape))
        return AnomalyMaps({"residual": images + 1.0}, {}, None)

    def scores(self, maps: AnomalyMaps, masks: torch.Tensor) -> ImageScores:
        return ImageScores({"residual": maps.pixel["residual"].mean((1, 2, 3))}, None)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cases")
    brats_case(root, "a", "brats2018", size=48, depth=12)
    source = CaseSourceConfig("brats", str(root), "auto", CasePatterns("", "", "", ""), "")
    found = read_cases(source, ("a",), ("flair",))[0]["a"]
    return found, slice_rows(found, SliceRulesConfig(50, 20))


def test_native_grid_maps_come_back_on_the_slice_grid(case) -> None:
    found, rows = case
    ks = [r.slice for r in rows]
    images = slice_stack(found.channels["flair"], ks)
    masks = slice_stack(found.brain, ks)
    inner = Echo()
    detector = NativeGrid(inner, DEMO.preprocess, DEMO.volume)
    out = pixel_maps(detector, images, masks)["map"].numpy()
    size = DEMO.preprocess.image_size
    assert inner.seen and all(shape[-2:] == (size, size) for shape in inner.seen)
    assert out.shape == images.shape  # the case's own slice grid, not the model's
    assert not out[~masks].any() and (out[masks] > 0).mean() > 0.95
    # the bright tumour is bright in the restored map too: the geometry lines up
    tumour = slice_stack(found.label, ks)
    inside = masks & ~tumour
    assert out[tumour].mean() > out[inside].mean() + 0.2


def test_a_detector_with_several_maps_is_refused(case) -> None:
    found, rows = case

    class Two(Echo):
        def maps(self, images, masks):
            return AnomalyMaps({"a": images, "b": images}, {}, None)

    ks = [rows[len(rows) // 2].slice]
    detector = NativeGrid(Two(), DEMO.preprocess, DEMO.volume)
    with pytest.raises(ValueError, match="one raw pixel map"):
        pixel_maps(detector, slice_stack(found.channels["flair"], ks), slice_stack(found.brain, ks))


def test_model_arrays_keep_the_rows_asked_for(case) -> None:
    found, rows = case
    cases, by_case = {"a": found}, {"a": rows}
    healthy = model_arrays(cases, by_case, "flair", DEMO.preprocess, DEMO.volume, True)
    everything = model_arrays(cases, by_case, "flair", DEMO.preprocess, DEMO.volume, False)
    statuses = [r.status for r in rows]
    assert len(healthy) == statuses.count("healthy") and not healthy.labels.any()
    assert len(everything) == len(rows) - statuses.count("excluded")
    assert everything.labels.sum() == statuses.count("anomalous")
    assert everything.lesion_masks[everything.labels == 1].any()
    size = DEMO.preprocess.image_size
    assert everything.images.shape[1:] == (1, size, size)
    assert everything.images.min() >= -1.0 and everything.images.max() <= 1.0
    assert np.all(everything.images[~everything.brain_masks] == -1.0)
