"""Rule-based check of the skull stripping: did the brain mask come out brain-shaped and inside
the skull?

Measured on the full-resolution brain mask of :func:`brainad.data.preprocess.extract_brain`
against the head outline of :func:`brainad.data.features.head_outline`:

* ``fallback``: extraction failed (coverage outside ``[min_coverage, max_coverage]``, blank);
* ``head_fraction``: brain area / head area — near 1 when skull, scalp (or face and neck) were
  kept, small when the brain was cut away;
* ``rim_touch``: fraction of the head's outline within 2 % of the image size of the brain mask —
  high when the mask reaches the scalp (the skull ring was not removed);
* ``solidity``: brain area / its convex hull's area — low for fragmented or ragged masks.

:func:`strip_failed` flags a slice when any measure is outside the rule's limits
(:data:`RULE`); the limits were chosen by looking at the annotated sample's measures (so the
agreement reported on that sample is optimistic) and are fixed here, not fit.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from brainad.data.preprocess import head_mask


class StripRule(NamedTuple):
    """Limits of the rule: a slice fails outside any of them."""

    max_head_fraction: float
    max_rim_touch: float
    min_solidity: float
    min_head_fraction: float


RULE = StripRule(
    max_head_fraction=0.80, max_rim_touch=0.35, min_solidity=0.85, min_head_fraction=0.25
)


def strip_measures(gray: np.ndarray, brain: np.ndarray, fallback: bool) -> dict[str, float]:
    """The measures of the module docstring for one slice and its full-resolution brain mask."""
    head = head_mask(gray, 0.0)
    area = float(brain.sum())
    head_area = float(head.sum()) or 1.0
    outline = head & ~cv2.erode(head.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    reach = max(3, int(0.02 * max(gray.shape)))
    near = cv2.dilate(brain.astype(np.uint8), np.ones((reach, reach), np.uint8)).astype(bool)
    solidity = 0.0
    if area > 0:
        contours, _ = cv2.findContours(
            brain.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        hull = cv2.convexHull(np.concatenate(contours))
        solidity = area / max(float(cv2.contourArea(hull)), 1.0)
    return {
        "fallback": float(fallback),
        "head_fraction": area / head_area,
        "rim_touch": float((near & outline).sum()) / max(float(outline.sum()), 1.0),
        "solidity": min(solidity, 1.0),
    }


def strip_failed(measures: dict[str, float], rule: StripRule = RULE) -> str:
    """Why the rule flags the slice ("" if it passes)."""
    reasons = []
    if measures["fallback"]:
        reasons.append("extraction fell back")
    if measures["head_fraction"] > rule.max_head_fraction:
        reasons.append(f"head_fraction {measures['head_fraction']:.2f} > {rule.max_head_fraction}")
    if measures["head_fraction"] < rule.min_head_fraction:
        reasons.append(f"head_fraction {measures['head_fraction']:.2f} < {rule.min_head_fraction}")
    if measures["rim_touch"] > rule.max_rim_touch:
        reasons.append(f"rim_touch {measures['rim_touch']:.2f} > {rule.max_rim_touch}")
    if measures["solidity"] < rule.min_solidity:
        reasons.append(f"solidity {measures['solidity']:.2f} < {rule.min_solidity}")
    return "; ".join(reasons)
