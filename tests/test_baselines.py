"""Tests for brainad.scoring.baselines on tiny synthetic brains."""

from __future__ import annotations

import numpy as np
import pytest

from brainad.config import EvaluateConfig, LesionConfig, MatchedConfig
from brainad.scoring.baselines import (
    Baseline,
    ImageStats,
    MeanIntensity,
    MirrorAsymmetry,
    NearestNeighbour,
    PCARecon,
    _masked_quantiles,
    default_baselines,
    image_statistics,
)
from brainad.scoring.detector import Detector, score_raw

SIZE = 32


def _score(baseline: Baseline, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """A baseline's scores through the one detector engine (as evaluation computes them); its
    components are the ones it declares."""
    components = score_raw(baseline, images, masks).components
    assert tuple(components) == baseline.components == ("score",), baseline.name
    return components["score"]


def _brains(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Ellipses with a shared smooth anatomy plus small per-image variation; background -1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    brain = (xx / 0.8) ** 2 + (yy / 0.85) ** 2 <= 1.0
    images = np.full((n, 1, SIZE, SIZE), -1.0, np.float32)
    for i in range(n):
        anatomy = 0.3 * np.cos(2 * xx) * np.cos(2 * yy) + 0.1 * rng.normal() * xx
        texture = anatomy + shift + 0.03 * rng.normal(size=xx.shape)
        images[i, 0][brain] = texture[brain]
    return images, np.repeat(brain[None, None], n, axis=0)


@pytest.fixture
def train() -> tuple[np.ndarray, np.ndarray]:
    return _brains(24, seed=0)


@pytest.fixture
def config() -> EvaluateConfig:
    return EvaluateConfig(
        bootstrap=10,
        ci=0.95,
        pca_components=5,
        seed=0,
        lesions=LesionConfig(1, (0.1, 0.1), (2.0, 2.0), 1.0, 0, 0.0),
        matched=MatchedConfig(("axial",), ("T1",), ("T1CE",)),
        default_model="vqgan",
    )


def test_default_baselines_fit_and_score_shapes(
    config: EvaluateConfig, train: tuple[np.ndarray, np.ndarray]
) -> None:
    baselines = default_baselines(config)
    assert [b.name for b in baselines] == [
        "mean_intensity",
        "image_stats",
        "pca_recon",
        "nearest_neighbour",
        "mirror_asymmetry",
    ]
    held_out = _brains(5, seed=1)
    shifted = _brains(5, seed=2, shift=0.4)  # a confounded "other source": brighter overall
    for baseline in baselines:
        assert isinstance(baseline, Baseline) and isinstance(baseline, Detector)
        baseline.fit(*train)
        normal = _score(baseline, *held_out)
        odd = _score(baseline, *shifted)
        assert normal.shape == (5,) and np.isfinite(normal).all(), baseline.name
        if baseline.name in ("pca_recon", "mirror_asymmetry"):  # per-image scale: blind to a shift
            assert abs(odd.mean() - normal.mean()) < 0.5 * normal.mean()
        else:  # the trivial statistics see the confound
            assert odd.min() > normal.max(), baseline.name


def test_scoring_before_fit_raises(train: tuple[np.ndarray, np.ndarray]) -> None:
    for baseline in (MeanIntensity(), ImageStats(), PCARecon(3), NearestNeighbour()):
        with pytest.raises(RuntimeError, match="fit"):
            _score(baseline, *train)


def test_mean_intensity_is_abs_z_of_brain_mean() -> None:
    masks = np.zeros((3, 1, 8, 8), bool)
    masks[:, :, 2:6, 2:6] = True
    images = np.full((3, 1, 8, 8), -1.0, np.float32)
    for i, value in enumerate([0.0, 0.2, 0.1]):
        images[i][masks[i]] = value
    baseline = MeanIntensity()
    baseline.fit(images[:2], masks[:2])  # training means 0.0 and 0.2 → centre 0.1, std 0.1
    test = images.copy()
    test[2][masks[2]] = 0.4
    np.testing.assert_allclose(_score(baseline, test, masks), [1.0, 1.0, 3.0], rtol=1e-5)


def test_image_statistics_by_hand() -> None:
    masks = np.zeros((1, 1, 10, 10), bool)
    masks[0, 0, :, :5] = True  # half the slice
    images = np.full((1, 1, 10, 10), -1.0, np.float32)
    values = np.linspace(-0.5, 0.5, 50, dtype=np.float32)
    images[0, 0, :, :5] = values.reshape(10, 5)
    features = image_statistics(images, masks)[0]
    assert features[0] == pytest.approx(0.0, abs=1e-7)
    assert features[1] == pytest.approx(values.std(), rel=1e-5)
    assert features[2] == pytest.approx(0.0, abs=1e-6)  # symmetric → no skew
    assert features[3] == pytest.approx(-1.2, abs=0.01)  # uniform: excess kurtosis ≈ −1.2
    assert features[4] == pytest.approx(0.5)
    assert features[5] == pytest.approx(np.quantile(values, 0.01), rel=1e-5)
    assert features[6] == pytest.approx(np.quantile(values, 0.99), rel=1e-5)


def test_masked_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 30))
    inside = rng.random((4, 30)) < 0.6
    out = _masked_quantiles(values, inside, (0.01, 0.5, 0.99))
    for row in range(4):
        expected = np.quantile(values[row][inside[row]], [0.01, 0.5, 0.99])
        np.testing.assert_allclose(out[row], expected)


def test_pca_recon_scores_lesion_higher_and_maps(train: tuple[np.ndarray, np.ndarray]) -> None:
    baseline = PCARecon(n_components=5, seed=0)
    baseline.fit(*train)
    held_out, masks = _brains(4, seed=3)
    odd = held_out.copy()
    odd[:, 0, 10:15, 10:15] += 0.8  # a bright square inside the brain
    normal_scores = _score(baseline, held_out, masks)
    odd_scores = _score(baseline, odd, masks)
    assert (odd_scores > normal_scores).all()
    maps = score_raw(baseline, odd, masks, keep_maps=True).maps
    assert maps.shape == odd.shape and not maps[~masks].any()
    inside_square = maps[:, 0, 10:15, 10:15].mean()
    assert inside_square > 3 * maps[masks].mean()


def test_pca_components_clamped_and_validated(train: tuple[np.ndarray, np.ndarray]) -> None:
    baseline = PCARecon(n_components=100)
    baseline.fit(*train)  # 24 images → at most 24 components
    assert baseline.pca.n_components_ <= 24
    with pytest.raises(ValueError, match="pca_components"):
        PCARecon(0)


def test_nearest_neighbour_distances(train: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = train
    baseline = NearestNeighbour(chunk=5)  # several chunks
    baseline.fit(images, masks)
    np.testing.assert_allclose(_score(baseline, images, masks), 0.0, atol=1e-6)
    # at 32 px no pooling: shifting every brain pixel by 0.1 moves the nearest distance by
    # at most 0.1·√(brain pixels) (the identical training image is at exactly that distance)
    shifted = images + 0.1 * masks
    scores = _score(baseline, shifted, masks)
    assert (scores > 0).all()
    assert (scores <= 0.1 * np.sqrt(masks[0].sum()) + 1e-5).all()


def test_bad_shapes_raise(train: tuple[np.ndarray, np.ndarray]) -> None:
    images, masks = train
    with pytest.raises(ValueError, match="shape"):
        MeanIntensity().fit(images[:, 0], masks[:, 0])
    with pytest.raises(ValueError, match="differs"):
        MeanIntensity().fit(images, masks[:3])


def _symmetric_head(size: int = 64, angle: float = 0.0, offset: float = 0.0) -> tuple:
    """A left-right symmetric brain (ellipse, symmetric ventricles and texture), optionally tilted
    by ``angle`` degrees and moved ``offset`` pixels sideways, as a slice off the image axis."""
    import cv2

    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    brain = (xx / 0.7) ** 2 + (yy / 0.85) ** 2 <= 1.0
    texture = (
        0.4 * np.cos(3 * xx)
        + 0.2 * np.sin(4 * yy)
        - 0.6 * (((xx.__abs__() - 0.2) / 0.1) ** 2 + (yy / 0.3) ** 2 <= 1)
    )
    image = np.where(brain, texture, -1.0).astype(np.float32)
    centre = (size - 1) / 2
    warp = cv2.getRotationMatrix2D((centre, centre), angle, 1.0)
    warp[0, 2] += offset
    image = cv2.warpAffine(image, warp, (size, size), borderValue=-1.0)
    mask = cv2.warpAffine(brain.astype(np.uint8), warp, (size, size)) > 0
    return image, mask


def _with_blob(image: np.ndarray, mask: np.ndarray, y: int, x: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    out = image.copy()
    out[((yy - y) ** 2 + (xx - x) ** 2 <= r * r) & mask] = 0.9
    return out


def test_mirror_asymmetry_sees_a_one_sided_lesion_and_aligns_a_tilted_midline() -> None:
    """A lesion on one side raises the score far above the same symmetric slice's, also when the
    head is tilted and off-centre (the alignment search finds the mirror axis); the map peaks on
    the lesion (and at its mirror position), not elsewhere."""
    baseline = MirrorAsymmetry()
    baseline.fit(np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 1, 8, 8), bool))  # no-op
    rows, masks = [], []
    for angle, offset in ((0.0, 0.0), (4.0, 3.0), (-5.0, -2.0)):
        image, mask = _symmetric_head(angle=angle, offset=offset)
        rows += [image, _with_blob(image, mask, 26, 22, 5)]
        masks += [mask, mask]
    images = np.stack(rows)[:, None]
    masks = np.stack(masks)[:, None]
    scores = _score(baseline, images, masks)
    healthy, lesioned = scores[0::2], scores[1::2]
    assert lesioned.min() > 3 * healthy.max(), scores
    found = baseline.anomaly_map(images[1:2], masks[1:2])[0, 0]
    peak = np.unravel_index(np.argmax(found), found.shape)
    assert abs(peak[0] - 26) <= 6 and (abs(peak[1] - 22) <= 6 or abs(peak[1] - 41) <= 6), peak


def test_mirror_asymmetry_is_zero_outside_the_brain_and_handles_a_tiny_mask() -> None:
    image, mask = _symmetric_head(size=32)
    found = MirrorAsymmetry().anomaly_map(image[None, None], mask[None, None])
    assert (found[0, 0][~mask] == 0).all() and np.isfinite(found).all()
    tiny = np.zeros_like(mask)
    tiny[15:17, 15:17] = True  # eroded away: score 0, not an error
    assert _score(MirrorAsymmetry(), image[None, None], tiny[None, None]).tolist() == [0.0]
