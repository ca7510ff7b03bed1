"""The volume studies' intensity detectors: thresholding, plain mirror difference and the
edge-normalised (learned) hyperintensity, all through the Detector interface."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from brainad.config import VoxelDetectorConfig
from brainad.scoring.detector import Detector, pixel_maps, score_raw
from brainad.scoring.intensity import (
    VOLUME_METHODS,
    EdgeNormalised,
    IntensityMap,
    MirrorDifference,
    edge_distance,
)


def _disc(n: int = 3, size: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.4 * size) ** 2
    return np.repeat(disc[None, None], n, axis=0)


def test_every_method_is_a_detector_named_as_in_the_config() -> None:
    allowed = typing.get_args(typing.get_type_hints(VoxelDetectorConfig)["method"])
    assert set(VOLUME_METHODS) == set(allowed)
    for cls in VOLUME_METHODS.values():
        assert isinstance(cls(), Detector)


def test_intensity_map_is_the_image_inside_the_brain() -> None:
    masks = _disc()
    images = np.random.default_rng(0).standard_normal(masks.shape).astype(np.float32)
    found = pixel_maps(IntensityMap(), images, masks)["map"].numpy()
    assert np.array_equal(found[masks], images[masks]) and not found[~masks].any()
    scores = score_raw(IntensityMap(), images, masks).components["score"]
    k = int(np.ceil(masks[0].sum() * 0.01))
    expected = np.sort(images[0][masks[0]])[-k:].mean()
    assert scores[0] == pytest.approx(expected, rel=1e-5)


def test_mirror_difference_shows_a_one_sided_lesion_once() -> None:
    masks = _disc(1)
    images = np.where(masks, 1.0, 0.0).astype(np.float32)
    images[0, 0, 18:22, 8:12] = 3.0  # left of the midline
    found = pixel_maps(MirrorDifference(), images, masks)["map"].numpy()[0, 0]
    assert found[18:22, 8:12].min() == pytest.approx(2.0)
    assert found[18:22, 28:32].max() == 0.0  # its mirror position stays 0 (positive part)
    assert found.sum() == pytest.approx(2.0 * 16)


def test_edge_normalised_learns_that_a_bright_rim_is_normal() -> None:
    masks = _disc(4)
    rim = (edge_distance(masks) < 3) & masks
    healthy = np.where(masks, 1.0, 0.0) + np.where(rim, 2.0, 0.0)
    healthy = healthy + 0.1 * np.random.default_rng(1).standard_normal(masks.shape)
    detector = EdgeNormalised()
    with pytest.raises(RuntimeError, match="fit"):
        detector.anomaly_map(healthy.astype(np.float32), masks)
    detector.fit(healthy.astype(np.float32), masks)
    test = healthy[:1].copy()
    test[0, 0, 18:22, 18:22] += 2.0  # an interior lesion as bright as the rim
    z = detector.anomaly_map(test.astype(np.float32), masks[:1])[0, 0]
    plain = IntensityMap().anomaly_map(test.astype(np.float32), masks[:1])[0, 0]
    lesion = np.zeros_like(masks[0, 0])
    lesion[18:22, 18:22] = True
    # thresholding cannot tell the lesion from the rim; the learned normality can
    assert plain[lesion].mean() == pytest.approx(plain[rim[0, 0]].mean(), abs=0.2)
    assert z[lesion].min() > 5 * np.abs(z[rim[0, 0]]).mean()
