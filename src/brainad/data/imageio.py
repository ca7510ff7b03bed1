"""Robust decoding of one image file to a grayscale float array in [0, 1].

Every reader of image files (manifest, preprocess, ``brainad score``) goes through
:func:`read_image`, so 8/16-bit, 1/2/3/4-channel files and broken files are handled the same
everywhere. A file that cannot be used raises :class:`ImageDecodeError` with the reason; callers
quarantine it (with that reason in a report) instead of crashing or dropping it silently.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """A file that is not a usable image; ``reason`` is short and report-friendly."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """A decoded slice.

    Args:
        gray: float32 array (H, W) in [0, 1].
        width: width in pixels.
        height: height in pixels.
        channels: channels stored in the file (1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha).
        bit_depth: bits per channel in the file (8 or 16).
    """

    gray: np.ndarray
    width: int
    height: int
    channels: int
    bit_depth: int


def read_image(path: str | Path, max_pixels: int, data: bytes | None = None) -> DecodedImage:
    """Decode ``path`` (or its already-read ``data``) to grayscale.

    Raises:
        ImageDecodeError: empty file, not an image, truncated data, too many pixels.
    """
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    width, height, mode = _read_header(path, data)
    if width * height > max_pixels:
        raise ImageDecodeError(
            path,
            f"declared size {width}x{height} exceeds max_pixels={max_pixels} "
            "(possible decompression bomb; raise preprocess.max_pixels if it is genuine)",
        )
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-64:]:
        raise ImageDecodeError(path, "truncated JPEG (no end-of-image marker)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ImageDecodeError(path, "image data cannot be decoded (truncated or corrupt)")
    return _to_gray(path, array, mode)


class _Header(NamedTuple):
    width: int
    height: int
    mode: str  # PIL mode of the file ("L", "LA", "RGB", "I;16", ...)


def _read_header(path: Path, data: bytes) -> _Header:
    """Width, height and mode from the header alone (no pixel decoding), verifying the data."""
    import io

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # the caller applies its own max_pixels
            try:
                with Image.open(io.BytesIO(data)) as img:
                    size, mode = img.size, img.mode
                    img.verify()  # structural check, catches most truncated files
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception as exc:  # PIL raises many exception types for non-images
        raise ImageDecodeError(path, f"not a readable image ({_describe(exc)})") from exc
    return _Header(int(size[0]), int(size[1]), str(mode))


def _describe(exc: Exception) -> str:
    """A reproducible description of a PIL error (no object addresses, which vary per run)."""
    if isinstance(exc, UnidentifiedImageError):
        return "the content is not a recognised image format"
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<data>", str(exc))
    return f"{type(exc).__name__}: {text}"


def _to_gray(path: Path, array: np.ndarray, mode: str) -> DecodedImage:
    if array.dtype == np.uint8:
        bit_depth, scale = 8, 255.0
    elif array.dtype == np.uint16:
        bit_depth, scale = 16, 65535.0
    else:
        raise ImageDecodeError(path, f"unsupported pixel type {array.dtype} (use 8 or 16-bit)")
    channels = 1 if array.ndim == 2 else int(array.shape[2])
    if channels == 4 and mode in ("LA", "La"):  # OpenCV expands grey + alpha to BGRA
        array, channels = array[..., [0, 3]], 2
    if channels == 1:
        gray = array if array.ndim == 2 else array[..., 0]
    elif channels == 2:  # gray + alpha
        gray = array[..., 0]
    elif channels == 3:
        gray = cv2.cvtColor(array, cv2.COLOR_BGR2GRAY)
    elif channels == 4:
        gray = cv2.cvtColor(array, cv2.COLOR_BGRA2GRAY)
    else:
        raise ImageDecodeError(path, f"unsupported channel count {channels}")
    height, width = gray.shape
    return DecodedImage(
        gray=(gray.astype(np.float32) / scale),
        width=int(width),
        height=int(height),
        channels=channels,
        bit_depth=bit_depth,
    )
