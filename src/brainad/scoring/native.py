"""A 2-D model's detector on a volume's own grid: :class:`NativeGrid` wraps any
:class:`~brainad.scoring.detector.Detector` of the slice studies (which sees preprocessed
S × S slices) so that it takes the volume's slices as they are and returns maps on their grid.

Each slice is prepared exactly as ``brainad score`` prepares a volume's slice
(:func:`brainad.data.volume_arrays.model_slice`: windowed, cropped to the given brain mask,
resized, normalised); the inner detector's one raw pixel map is put back by
:func:`brainad.data.preprocess.restore_map` (crop and resize undone) and is 0 outside the brain.
"""

from __future__ import annotations

import numpy as np
import torch

from brainad.config import PreprocessConfig, VolumeConfig
from brainad.data.preprocess import restore_map
from brainad.data.volume_arrays import model_slice
from brainad.scoring.detector import AnomalyMaps, Detector, ImageScores
from brainad.scoring.maps import aggregate

TOPK_PERCENT = 1.0


class NativeGrid:
    """``inner`` (a model's detector with one raw pixel map) on native-resolution slices.

    Args:
        inner: the detector; its ``maps`` must return exactly one pixel map.
        preprocess: the slice study's preprocessing (image size, normalisation).
        volume: the slice study's slice windowing.
    """

    kind = "model"
    components = ("score",)
    weights = {"score": 1.0}
    standardise = False

    def __init__(self, inner: Detector, preprocess: PreprocessConfig, volume: VolumeConfig):
        self.inner, self.preprocess, self.volume = inner, preprocess, volume
        self.name = inner.name
        self.batch_size = inner.batch_size

    def fit(self, images: np.ndarray, masks: np.ndarray) -> None:
        """Nothing to fit here (the model was trained by the training loop)."""

    def maps(self, images: torch.Tensor, masks: torch.Tensor) -> AnomalyMaps:
        x, m = images.numpy(), masks.numpy().astype(bool)
        prepared = [
            model_slice(x[i, 0], m[i, 0], self.preprocess, self.volume) for i in range(len(x))
        ]
        small = torch.from_numpy(np.stack([p.image for p in prepared])[:, None].astype(np.float32))
        small_masks = torch.from_numpy(np.stack([p.mask for p in prepared])[:, None])
        raw = self.inner.maps(small, small_masks).pixel
        if len(raw) != 1:
            raise ValueError(f"{self.name}: expected one raw pixel map, got {sorted(raw)}")
        values = next(iter(raw.values())).float().cpu().numpy()
        shape = x.shape[-2:]
        out = np.stack([restore_map(values[i, 0], p.box, shape) for i, p in enumerate(prepared)])[
            :, None
        ]
        out = torch.from_numpy(np.where(m, out, 0.0).astype(np.float32))
        score = aggregate(out, masks.bool(), "topk", TOPK_PERCENT)
        return AnomalyMaps({"map": out}, {"score": score}, None)

    def scores(self, maps: AnomalyMaps, masks: torch.Tensor) -> ImageScores:
        return ImageScores({"score": maps.image["score"]}, maps.pixel["map"])
