"""Deterministic brain-like phantom slices, written in the Kaggle "Brain Tumor MRI" folder layout.

The demo study runs the real ingest path on these files, so the phantom imitates what matters for
that path: an axial head slice (scalp, skull, CSF, grey and white matter, ventricles) in a random
pose with a bias field and Rician-like noise, three MRI contrasts, implanted tumours of three kinds
with ground-truth masks, a mix of 1- and 3-channel JPEGs, and near-duplicate healthy slices, some
of them across the official ``Training``/``Testing`` folders (the real dataset's leak).

Every slice is drawn from its own generator seeded by ``(seed, class, index)``, so the same
:class:`~brainad.config.PhantomConfig` writes byte-identical files, and a slice does not change
when the number of other slices changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from brainad.config import PhantomConfig
from brainad.data.labels import Labels, write_source_labels
from brainad.utils import write_bytes

log = logging.getLogger("brainad")

CONTRASTS = ("t1", "t2", "flair")
TUMOUR_KINDS = ("solid", "ring", "oedema")
HEALTHY_CLASS = "notumor"
ANOMALY_CLASS = "glioma"
TEST_FRACTION = 0.2
JPEG_QUALITY = 90
MIN_IMAGE_SIZE = 32
_ANGLE_TABLE = 2048  # samples of one turn for the angular shape functions

_SPLIT_PREFIX = {"Training": "Tr", "Testing": "Te"}
_CLASS_CODE = {HEALTHY_CLASS: "no", ANOMALY_CLASS: "gl"}


class Tissue(NamedTuple):
    """Mean signal of each tissue class for one contrast (before bias field and noise)."""

    scalp: float
    bone: float
    csf: float
    grey: float
    white: float


class TumourLook(NamedTuple):
    """Mean signal of the tumour compartments for one contrast."""

    solid: float
    rim: float
    core: float
    oedema: float


# T1: WM > GM, CSF dark. T2: CSF bright, GM > WM. FLAIR: CSF suppressed, GM > WM.
_TISSUE = {
    "t1": Tissue(scalp=0.85, bone=0.06, csf=0.12, grey=0.45, white=0.68),
    "t2": Tissue(scalp=0.60, bone=0.05, csf=0.95, grey=0.55, white=0.38),
    "flair": Tissue(scalp=0.65, bone=0.05, csf=0.10, grey=0.58, white=0.42),
}
# Oedema is bright in T2/FLAIR and dark in T1; a ring has a bright rim around a darker core.
_TUMOUR = {
    "t1": TumourLook(solid=0.88, rim=0.92, core=0.15, oedema=0.30),
    "t2": TumourLook(solid=0.80, rim=0.88, core=0.58, oedema=0.82),
    "flair": TumourLook(solid=0.85, rim=0.90, core=0.20, oedema=0.88),
}


class PhantomSlice(NamedTuple):
    """One rendered slice.

    Args:
        image: uint8 (H, W) slice.
        brain_mask: bool (H, W), the intracranial region (brain tissue and CSF inside the inner
            surface of the skull): the ground truth for skull stripping.
        tumour_mask: bool (H, W), tumour plus oedema; all False for healthy slices.
    """

    image: np.ndarray
    brain_mask: np.ndarray
    tumour_mask: np.ndarray


class _Head(NamedTuple):
    """Head-frame coordinates of every pixel: ``rho`` is 1 on the scalp surface."""

    u: np.ndarray
    v: np.ndarray
    rho: np.ndarray
    phi: np.ndarray


class _Anatomy(NamedTuple):
    signal: np.ndarray  # float (H, W) before bias field and noise
    brain: np.ndarray  # intracranial mask
    parenchyma: np.ndarray  # grey + white matter + ventricles (where a tumour may grow)


class _Rendered(NamedTuple):
    slice: PhantomSlice
    kind: str  # "none" or one of TUMOUR_KINDS


# ------------------------------------------------------------------------------------ rendering
def render_slice(rng: np.random.Generator, size: int, contrast: str, tumour: bool) -> PhantomSlice:
    """Render one axial brain-like slice of ``size`` x ``size`` pixels.

    The tumour's random draws come from a generator split off ``rng`` at a fixed point, so two calls
    on generators in the same state differ only inside (and within 3 pixels of) the tumour:
    the healthy call is the exact paired control of the anomalous one.

    Raises:
        ValueError: unknown ``contrast`` or ``size`` below 32.
    """
    return _render(rng, size, contrast, tumour).slice


def _render(rng: np.random.Generator, size: int, contrast: str, tumour: bool) -> _Rendered:
    if contrast not in _TISSUE:
        raise ValueError(f"contrast {contrast!r} is not one of {list(CONTRASTS)}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"size {size} is too small; use at least {MIN_IMAGE_SIZE} pixels")
    head = _pose(rng, size)
    anatomy = _anatomy(rng, head, _TISSUE[contrast], size)
    tumour_rng = np.random.default_rng(rng.integers(2**63))  # always drawn: keeps pairs aligned
    signal, tumour_mask, kind = anatomy.signal, np.zeros((size, size), bool), "none"
    if tumour:
        kind = TUMOUR_KINDS[int(tumour_rng.integers(len(TUMOUR_KINDS)))]
        signal, tumour_mask = _implant(tumour_rng, head, anatomy, _TUMOUR[contrast], kind)
    image = _acquire(rng, signal, size)
    return _Rendered(PhantomSlice(image, anatomy.brain, tumour_mask), kind)


def _pose(rng: np.random.Generator, size: int) -> _Head:
    """Random rotation, translation, scale and aspect; returns head-frame polar coordinates."""
    angle = np.deg2rad(rng.uniform(-20.0, 20.0))
    radius = rng.uniform(0.34, 0.42) * size  # scalp radius along the anterior-posterior axis
    aspect = rng.uniform(0.78, 0.92)  # heads are narrower left-right
    cx, cy = (size - 1) / 2 + rng.uniform(-0.04, 0.04, size=2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    u = (np.cos(angle) * dx + np.sin(angle) * dy) / (radius * aspect)
    v = (-np.sin(angle) * dx + np.cos(angle) * dy) / radius
    phi = np.arctan2(v, u)
    outline = 1.0 + _wobble(rng, phi, range(2, 5), 0.025)
    return _Head(u=u, v=v, rho=np.hypot(u, v) / outline, phi=phi)


def _wobble(
    rng: np.random.Generator, phi: np.ndarray, orders: range, amplitude: float
) -> np.ndarray:
    """A random periodic function of the angle: a sum of cosines of the given orders."""
    weights = amplitude * rng.uniform(0.3, 1.0, len(orders))
    phases = rng.uniform(0.0, 2 * np.pi, len(orders))
    return _periodic(phi, np.asarray(orders), weights, phases)


def _periodic(
    phi: np.ndarray, orders: np.ndarray, weights: np.ndarray, phases: np.ndarray
) -> np.ndarray:
    """``sum_k weights[k] cos(orders[k] phi + phases[k])`` via a 1-D table (fast on big grids)."""
    table = np.linspace(-np.pi, np.pi, _ANGLE_TABLE, endpoint=False)
    values = np.cos(np.outer(table, orders) + phases) @ weights
    index = np.rint((phi + np.pi) * (_ANGLE_TABLE / (2 * np.pi))).astype(np.intp) % _ANGLE_TABLE
    return values[index]


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth zero-mean unit-ish noise: a ``cells`` x ``cells`` grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def _anatomy(rng: np.random.Generator, head: _Head, tissue: Tissue, size: int) -> _Anatomy:
    """Scalp, skull, CSF rim, gyrified grey matter ribbon, white matter and two ventricles."""
    rho, phi = head.rho, head.phi
    scalp_inner = rng.uniform(0.91, 0.94)
    bone_inner = scalp_inner - rng.uniform(0.05, 0.08)
    sulci = np.maximum(_folding(rng, phi), 0.0)  # CSF reaching into the cortex
    grey_outer = bone_inner - rng.uniform(0.015, 0.03) - 0.035 * sulci
    gyri = _folding(rng, phi)  # white matter reaching into the gyri
    white_outer = grey_outer - rng.uniform(0.09, 0.12) + 0.035 * gyri
    signal = np.zeros((size, size))
    signal[rho < 1.0] = tissue.scalp
    signal[rho < scalp_inner] = tissue.bone
    signal[rho < bone_inner] = tissue.csf
    grey = rho < grey_outer
    white = rho < white_outer
    signal[grey] = tissue.grey
    signal[white] = tissue.white
    signal[_ventricles(rng, head) & white] = tissue.csf
    coarse = _smooth_noise(rng, size, max(4, size // 10))
    fine = _smooth_noise(rng, size, max(8, size // 4))
    signal += np.where(grey & ~white, 0.05, 0.025) * grey * (0.6 * coarse + 0.4 * fine)
    scalp = (rho < 1.0) & (rho >= scalp_inner)
    signal += 0.06 * scalp * _smooth_noise(rng, size, max(4, size // 8))
    return _Anatomy(signal=signal, brain=rho < bone_inner, parenchyma=grey)


def _folding(rng: np.random.Generator, phi: np.ndarray) -> np.ndarray:
    """Irregular cortical folding along the angle: unit-variance noise of orders 6 to 24."""
    orders = np.arange(6, 25)
    weights = rng.uniform(0.2, 1.0, orders.size) / np.sqrt(orders)
    phases = rng.uniform(0.0, 2 * np.pi, orders.size)
    return _periodic(phi, orders, weights, phases) / np.sqrt(0.5 * np.sum(weights**2))


def _ventricles(rng: np.random.Generator, head: _Head) -> np.ndarray:
    """Two lateral ventricles either side of the midline, of random, slightly asymmetric size."""
    half_width, half_length = rng.uniform(0.02, 0.10), rng.uniform(0.08, 0.30)
    gap = half_width + rng.uniform(0.02, 0.05)
    centre_v = rng.uniform(-0.1, 0.05)
    tilt = np.deg2rad(rng.uniform(0.0, 15.0))  # frontal horns diverge slightly
    mask = np.zeros(head.u.shape, bool)
    for side in (-1.0, 1.0):
        scale = rng.uniform(0.8, 1.2)
        du, dv = head.u - side * gap * scale, head.v - centre_v
        a = side * tilt
        p = np.cos(a) * du + np.sin(a) * dv
        q = -np.sin(a) * du + np.cos(a) * dv
        mask |= (p / (half_width * scale)) ** 2 + (q / (half_length * scale)) ** 2 < 1.0
    return mask


def _implant(
    rng: np.random.Generator, head: _Head, anatomy: _Anatomy, look: TumourLook, kind: str
) -> tuple[np.ndarray, np.ndarray]:
    """Implant a tumour of ``kind`` in the parenchyma; returns (signal, tumour mask)."""
    radius = rng.uniform(0.11, 0.22)
    where = rng.uniform(0, 2 * np.pi)
    reach = rng.uniform(0.0, max(0.05, 0.62 - 1.3 * radius))
    du, dv = head.u - reach * np.cos(where), head.v - reach * np.sin(where)
    local_phi = np.arctan2(dv, du)
    outline = radius * (1.0 + _wobble(rng, local_phi, range(2, 7), 0.12))
    distance = np.hypot(du, dv) / outline  # < 1 inside the tumour
    core = (distance < 1.0) & anatomy.parenchyma
    heterogeneity = 0.04 * _smooth_noise(rng, head.u.shape[0], max(6, head.u.shape[0] // 6))
    signal = anatomy.signal.copy()
    if kind == "ring":
        wall = rng.uniform(0.25, 0.45)
        signal[core] = np.where(distance[core] > 1.0 - wall, look.rim, look.core)
        mask = core
    else:
        signal[core] = look.solid
        mask = core
        if kind == "oedema":
            spread = rng.uniform(1.6, 2.3) * (1.0 + _wobble(rng, local_phi, range(2, 6), 0.1))
            oedema = (distance < spread) & anatomy.parenchyma & ~core
            signal[oedema] = look.oedema
            mask = core | oedema
    signal[mask] += heterogeneity[mask]
    return signal, mask


def _acquire(rng: np.random.Generator, signal: np.ndarray, size: int) -> np.ndarray:
    """Partial-volume blur, multiplicative bias field, Rician-like noise and an 8-bit window."""
    blurred = cv2.GaussianBlur(signal, (0, 0), sigmaX=0.7)
    bias = np.exp(0.28 * _smooth_noise(rng, size, 4))
    sigma = rng.uniform(0.012, 0.035)
    real = blurred * bias + sigma * rng.standard_normal((size, size))
    imaginary = sigma * rng.standard_normal((size, size))
    magnitude = np.hypot(real, imaginary)
    gain = rng.uniform(0.78, 0.95) * 255.0
    return np.clip(np.rint(magnitude * gain), 0, 255).astype(np.uint8)


# -------------------------------------------------------------------------------------- writing
class _Item(NamedTuple):
    """One planned file: an original slice (``source`` is None) or a near-duplicate of one."""

    split: str
    label: str
    index: int  # original: index within its class (the generator key); duplicate: running number
    source: int | None = None  # duplicate: index of the healthy original


def write_phantom_dataset(config: PhantomConfig, dest: Path) -> dict:
    """Write the phantom dataset into ``dest`` in the Kaggle layout and return a JSON-ready summary.

    Files: ``Training|Testing/notumor/*.jpg`` (healthy slices and their near-duplicates),
    ``Training|Testing/glioma/*.jpg`` (tumours) and ``masks/<split>/glioma/<stem>.png`` (0/255).
    File numbers are shuffled within each folder, so a name does not tell a duplicate apart.

    Raises:
        ValueError: an invalid ``phantom`` value, or ``dest`` exists and is not an empty directory.
    """
    _check_config(config)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest}: exists and is not an empty directory; delete it or pick another")
    healthy = _assign_splits(config, HEALTHY_CLASS, config.n_healthy, 0)
    anomalous = _assign_splits(config, ANOMALY_CLASS, config.n_anomalous, 1)
    duplicates = _plan_duplicates(config, healthy)
    names = _assign_names(config.seed, healthy + anomalous + duplicates)
    summary = _empty_summary()
    originals: dict[int, np.ndarray] = {}  # healthy images, the sources of the near-duplicates
    for item in healthy + anomalous:
        image = _write_original(config, dest, item, names[item], summary)
        if image is not None:
            originals[item.index] = image
    for item in duplicates:
        _write_duplicate(config.seed, dest, item, healthy[item.source], originals, names, summary)
    summary["n_images"] = sum(sum(c.values()) for c in summary["counts"].values())
    labels = {n: Labels("axial", "MR", c.upper(), "") for n, c in summary.pop("sequences").items()}
    write_source_labels(dest, labels)  # root/labels.csv: what it drew (axial MR, its contrast)
    log.info(
        "phantom: %d images (%d near-duplicates, %d across folders), %d masks in %s",
        summary["n_images"],
        summary["n_duplicates"],
        summary["n_duplicates_cross_folder"],
        summary["n_masks"],
        dest,
    )
    return summary


def _write_original(
    config: PhantomConfig, dest: Path, item: _Item, name: str, summary: dict
) -> np.ndarray | None:
    """Render and write one slice (and its mask); returns a healthy slice's image for duplicates."""
    anomalous = item.label == ANOMALY_CLASS
    rng = np.random.default_rng([config.seed, int(anomalous), item.index])
    contrast = CONTRASTS[int(rng.integers(len(CONTRASTS)))]
    channels = 3 if rng.random() < 0.5 else 1
    rendered = _render(rng, config.image_size, contrast, anomalous)
    _write_jpeg(dest / name, rendered.slice.image, channels)
    _count(summary, item, contrast, channels)
    summary["sequences"][name] = contrast
    if not anomalous:
        return rendered.slice.image
    mask = rendered.slice.tumour_mask.astype(np.uint8) * 255
    _write_png(dest / "masks" / Path(name).with_suffix(".png"), mask)
    summary["n_masks"] += 1
    summary["kinds"][rendered.kind] += 1
    return None


def _check_config(config: PhantomConfig) -> None:
    if config.n_healthy < 0 or config.n_anomalous < 0:
        raise ValueError("phantom.n_healthy / phantom.n_anomalous: must be >= 0; fix params.yaml")
    if config.image_size < MIN_IMAGE_SIZE:
        raise ValueError(
            f"phantom.image_size: {config.image_size} is below {MIN_IMAGE_SIZE}; use a larger side"
        )
    if not 0.0 <= config.duplicate_fraction <= 1.0:
        raise ValueError(f"phantom.duplicate_fraction: {config.duplicate_fraction} not in [0, 1]")


def _assign_splits(config: PhantomConfig, label: str, n: int, stream: int) -> list[_Item]:
    """Put ``round(0.2 n)`` randomly chosen slices of a class in Testing, the rest in Training."""
    order = np.random.default_rng([config.seed, 100 + stream]).permutation(n)
    testing = set(order[: int(round(TEST_FRACTION * n))].tolist())
    return [_Item("Testing" if i in testing else "Training", label, i) for i in range(n)]


def _plan_duplicates(config: PhantomConfig, healthy: list[_Item]) -> list[_Item]:
    """Pick the healthy slices to duplicate; about half of the copies go to the other folder."""
    n_dup = int(round(config.duplicate_fraction * config.n_healthy))
    rng = np.random.default_rng([config.seed, 200])
    chosen = sorted(rng.choice(config.n_healthy, size=n_dup, replace=False).tolist())
    plan = []
    for number, source in enumerate(chosen):
        split = healthy[source].split
        if rng.random() < 0.5:
            split = "Testing" if split == "Training" else "Training"
        plan.append(_Item(split, HEALTHY_CLASS, number, source))
    return plan


def _assign_names(seed: int, items: list[_Item]) -> dict[_Item, str]:
    """Kaggle-style names (``Tr-no_0001.jpg``), numbered in a seeded random order per folder."""
    rng = np.random.default_rng([seed, 300])
    names: dict[_Item, str] = {}
    for split, prefix in _SPLIT_PREFIX.items():
        for label, code in _CLASS_CODE.items():
            folder = [item for item in items if (item.split, item.label) == (split, label)]
            for number, position in enumerate(rng.permutation(len(folder)).tolist(), start=1):
                names[folder[position]] = f"{split}/{label}/{prefix}-{code}_{number:04d}.jpg"
    return names


def _empty_summary() -> dict:
    return {
        "n_images": 0,
        "n_masks": 0,
        "n_duplicates": 0,
        "n_duplicates_cross_folder": 0,
        "counts": {s: {HEALTHY_CLASS: 0, ANOMALY_CLASS: 0} for s in _SPLIT_PREFIX},
        "kinds": {k: 0 for k in TUMOUR_KINDS},
        "contrasts": {c: 0 for c in CONTRASTS},
        "channels": {"1": 0, "3": 0},
        "duplicates": [],
        "sequences": {},
    }


def _count(summary: dict, item: _Item, contrast: str | None, channels: int) -> None:
    summary["counts"][item.split][item.label] += 1
    summary["channels"][str(channels)] += 1
    if contrast is not None:
        summary["contrasts"][contrast] += 1


def _write_duplicate(
    seed: int,
    dest: Path,
    item: _Item,
    original: _Item,
    originals: dict[int, np.ndarray],
    names: dict[_Item, str],
    summary: dict,
) -> None:
    """Write one near-duplicate of a healthy slice and record it in the summary."""
    rng = np.random.default_rng([seed, 201, item.index])
    image, change = _near_duplicate(rng, originals[original.index])
    channels = 3 if rng.random() < 0.5 else 1
    _write_jpeg(dest / names[item], image, channels)
    _count(summary, item, None, channels)
    summary["sequences"][names[item]] = summary["sequences"][names[original]]
    summary["duplicates"].append({"source": names[original], "copy": names[item], "change": change})
    summary["n_duplicates"] += 1
    summary["n_duplicates_cross_folder"] += int(item.split != original.split)


def _near_duplicate(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, str]:
    """The same slice resized to another side and/or re-windowed (gamma and gain)."""
    change = ("resize", "window", "resize+window")[int(rng.integers(3))]
    out, parts = image, []
    if "window" in change:
        gamma = float(rng.choice([0.75, 0.85, 1.2, 1.35]))
        gain = float(rng.uniform(0.85, 1.1))
        scaled = 255.0 * gain * (out.astype(np.float64) / 255.0) ** gamma
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        parts.append(f"gamma {gamma:.2f}, gain {gain:.2f}")
    if "resize" in change:
        factor = float(rng.choice([0.75, 1.25, 1.5, 2.0]))
        side = int(round(image.shape[0] * factor))
        interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
        out = cv2.resize(out, (side, side), interpolation=interpolation)
        parts.append(f"resized to {side} px")
    return out, "; ".join(parts)


def _write_jpeg(path: Path, image: np.ndarray, channels: int) -> None:
    array = np.repeat(image[..., None], 3, axis=2) if channels == 3 else image
    _write_png(path, array, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])


def _write_png(path: Path, image: np.ndarray, ext: str = ".png", options: tuple = ()) -> None:
    ok, data = cv2.imencode(ext, image, list(options))
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the {ext} image")
    write_bytes(path, data.tobytes())
