"""A model's detector combined with the training-free mirror asymmetry (``score.weight_asymmetry``).

The combination the detector bake-off chooses on validation (:mod:`brainad.evaluation.ablation`):
the model's own components plus one more, ``asymmetry`` — the
:class:`~brainad.scoring.baselines.MirrorAsymmetry` statistic of the slice (a high quantile of
its left-right difference after alignment). Like every model component it is standardised on the
healthy validation scans, so :func:`~brainad.scoring.calibration.combine` adds
``weight_asymmetry · z(asymmetry)`` to the model's weighted z-scores. The two signals fail on
different slices: the model's map on tissue it never learned (skull remnants, unusual contrast),
the asymmetry on slices that are naturally asymmetric (tilt, gyri); a lesion raises both.

The anomaly map stays the model's (pixel metrics and heat maps judge the model's localisation).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from brainad.scoring.baselines import MirrorAsymmetry
from brainad.scoring.detector import AnomalyMaps, Detector, ImageScores

COMPONENT = "asymmetry"


class WithAsymmetry:
    """``inner`` (a model's :class:`~brainad.scoring.detector.Detector`) plus the ``asymmetry``
    component with weight ``weight`` (> 0).

    Raises:
        ValueError: ``weight`` not > 0, or ``inner`` does not standardise its components (a
            baseline: its raw statistic cannot be summed with a z-score).
    """

    kind = "model"
    standardise = True

    def __init__(self, inner: Detector, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"score.weight_asymmetry must be > 0 to combine, got {weight}")
        if not inner.standardise:
            raise ValueError(f"{inner.name}: only a standardised model detector can be combined")
        if COMPONENT in inner.weights:
            raise ValueError(f"{inner.name}: already has a component named {COMPONENT!r}")
        self.inner = inner
        self.name = inner.name
        self.batch_size = inner.batch_size
        self.components = (*inner.components, COMPONENT)
        self.weights = {**inner.weights, COMPONENT: float(weight)}
        self._mirror = MirrorAsymmetry()

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.inner.fit(images, masks)

    def maps(self, images: Tensor, masks: Tensor) -> AnomalyMaps:
        """The model's maps, and the asymmetry statistic of each image (computed on the host)."""
        found = self.inner.maps(images, masks)
        x, m = images.detach().cpu().numpy(), masks.detach().cpu().numpy()
        statistic = self._mirror.statistic_of_map(x, m, self._mirror.anomaly_map(x, m))
        image = {**found.image, COMPONENT: torch.from_numpy(statistic.astype(np.float32))}
        return AnomalyMaps(found.pixel, image, found.recon)

    def scores(self, maps: AnomalyMaps, masks: Tensor) -> ImageScores:
        own = {k: v for k, v in maps.image.items() if k != COMPONENT}
        scored = self.inner.scores(AnomalyMaps(maps.pixel, own, maps.recon), masks)
        components = {**scored.components, COMPONENT: maps.image[COMPONENT].to(torch.float32)}
        return ImageScores(components, scored.map)
