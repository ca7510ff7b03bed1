"""The hostile-input corpus of ``brainad score``: every kind of bad input we know of, built in a
temporary folder (never committed), each with the outcome the command must give it.

It grows with every bug: when a new input breaks ``brainad score``, add a :class:`Case` here
(the builder writes it, the expectation says what the row must be) before fixing the code.
``tests/test_cli_hostile.py`` runs the command over it and checks every case.

Outcomes: ``scored``, ``quarantined`` or ``duplicate`` (a row in ``scores.csv`` whose ``reason``
contains every word of ``reason``), or ``skipped`` (no row; counted in the log under ``reason``).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from helpers.scorer_bundle import encode, phantom_slices
from PIL import Image

BOMB_SIDE = 30_000  # 900 Mpx declared: above every study's max_pixels (40 Mpx)
SPARSE_BYTES = 400 << 20  # larger than any image within 40 Mpx (8 bytes per pixel + 1 MiB)
NON_UTF8 = os.fsdecode(b"caf\xe9_latin1.png")  # a name that is not valid UTF-8


class Case(NamedTuple):
    """One corpus entry.

    Args:
        name: path inside the corpus folder, as it appears in the ``path`` column (after the
            folder prefix; undecodable bytes and control characters escaped as ``\\xNN``).
        outcome: ``scored``, ``quarantined``, ``duplicate`` or ``skipped``.
        reason: words the row's reason must contain (the log's skip reason for ``skipped``).
        why: the bug or issue item the case guards.
        target: for a symlink, the end of its recorded ``target`` column.
    """

    name: str
    outcome: str
    reason: str
    why: str
    target: str = ""


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    if mode is None:
        return encode(array, ".png")
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb_png(side: int) -> bytes:
    """A tiny valid PNG whose header declares ``side`` x ``side`` pixels (CRC fixed up)."""
    data = bytearray(_png(np.zeros((8, 8), np.uint8)))
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class _Evil:
    """Unpickling this would run a shell command: it must never be unpickled."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch /tmp/brainad-hostile-pickle-ran",))


def _pil(image: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _bad_crc(png: bytes) -> bytes:
    data = bytearray(png)
    data[40] ^= 0xFF  # inside the first data chunk: its CRC no longer matches
    return bytes(data)


def _probed(slices: list[np.ndarray]) -> dict[str, bytes]:
    """Cases added after the first probe (December 2026)."""
    second = Image.fromarray(slices[3])
    return {
        "float32.tif": encode(slices[2].astype(np.float32) / 255, ".tif"),
        "bad_crc.png": _bad_crc(_png(slices[2])),
        "html_404.jpg": b"<html><body>404 Not Found</body></html>",
        "black.png": _png(np.zeros_like(slices[0])),
        "apng.png": _pil(slices[2], "PNG", save_all=True, append_images=[second]),
        "multi_page.tif": _pil(slices[2], "TIFF", save_all=True, append_images=[second]),
        "two_by_two.png": _png(slices[2][:2, :2]),
    }


def _files(slices: list[np.ndarray]) -> dict[str, bytes]:
    gif = io.BytesIO()
    Image.fromarray(slices[6]).save(gif, format="GIF")
    jpeg = encode(slices[5], ".jpg")
    return {
        **_probed(slices),
        **{f"valid_{i:02d}.png": _png(slices[i]) for i in range(4)},
        "valid.jpg": jpeg,
        "UPPER.JPG": encode(slices[7], ".jpg"),
        "png_named.jpg": _png(slices[8]),
        "with space é ü.png": _png(slices[9]),
        NON_UTF8: _png(slices[10]),
        "new\nline.png": _png(slices[11]),
        "deep16.png": _png(slices[12].astype(np.uint16) * 257),
        "rgba.png": _png(cv2.cvtColor(slices[13], cv2.COLOR_GRAY2BGRA)),
        "grey_alpha.png": _png(np.dstack([slices[14], np.full_like(slices[14], 255)]), "LA"),
        "bmp.bmp": encode(slices[15], ".bmp"),
        "tiff.tif": encode(slices[16], ".tif"),
        "empty.png": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "notes.png": b"these are notes, not an image\n" * 20,
        "tiny.png": _png(np.full((1, 1), 200, np.uint8)),
        "bomb.png": _bomb_png(BOMB_SIDE),
        "pickle.png": pickle.dumps(_Evil()),
        "valid_00_copy.png": _png(slices[0]),
        "anim.gif": gif.getvalue(),
        "readme.txt": b"not a scan\n",
        "nested.zip": b"PK\x05\x06" + bytes(18),
        ".hidden.png": _png(slices[17]),
        "._valid_00.png": b"\x00\x05\x16\x07AppleDouble",
        "__MACOSX/valid_00.png": b"\x00\x05\x16\x07AppleDouble",
        "sub/deeper/valid_sub.png": _png(slices[18]),
        "empty_folder/.keep": b"",
    }


CASES = (
    *(Case(f"valid_{i:02d}.png", "scored", "", "baseline") for i in range(4)),
    Case("valid.jpg", "scored", "", "baseline"),
    Case("UPPER.JPG", "scored", "", "suffixes are case-insensitive"),
    Case("png_named.jpg", "scored", "", "the decoder reads content, not the suffix"),
    Case("with space é ü.png", "scored", "", "unicode and spaces in names"),
    Case("caf\\xe9_latin1.png", "scored", "", "a non-UTF-8 name is escaped, never a crash"),
    Case("new\\x0aline.png", "scored", "", "a newline in a name cannot break a CSV row"),
    Case("deep16.png", "scored", "", "16-bit"),
    Case("rgba.png", "scored", "", "RGBA"),
    Case("grey_alpha.png", "scored", "", "grey + alpha"),
    Case("bmp.bmp", "scored", "", "BMP"),
    Case("tiff.tif", "scored", "", "TIFF"),
    Case("sub/deeper/valid_sub.png", "scored", "", "folders are searched recursively"),
    Case("empty.png", "quarantined", "empty file", "decoding problems"),
    Case("truncated.jpg", "quarantined", "truncated jpeg", "decoding problems"),
    Case("notes.png", "quarantined", "not a readable image", "decoding problems"),
    Case("tiny.png", "quarantined", "preprocessing failed", "1x1 image"),
    Case("bomb.png", "quarantined", "exceeds max_pixels downscale", "item 8: no max_pixels advice"),
    Case("pickle.png", "quarantined", "not a readable image", "a pickle is never unpickled"),
    Case("valid_00_copy.png", "duplicate", "same bytes as", "same bytes, other name"),
    Case(
        "valid_01_link.png", "duplicate", "same bytes as", "symlink keeps its name", "valid_01.png"
    ),
    Case(
        "passwd.png", "quarantined", "not a readable image", "item 8: symlink name kept", "passwd"
    ),
    Case(
        "broken_link.png",
        "quarantined",
        "broken symlink",
        "broken link: target kept",
        "missing.png",
    ),
    Case(
        "zero_link.png",
        "quarantined",
        "not a regular file (character device)",
        "never read /dev/zero",
        "zero",
    ),
    Case("fifo.png", "quarantined", "not a regular file (fifo)", "a fifo would block a read"),
    Case("sparse_huge.png", "quarantined", "more than any image", "a huge file is never read"),
    Case("float32.tif", "quarantined", "unsupported pixel type float32", "float TIFF"),
    Case("bad_crc.png", "quarantined", "not a readable image", "corrupt PNG chunk"),
    Case("html_404.jpg", "quarantined", "not a readable image", "a saved error page"),
    Case("black.png", "scored", "", "blank slice: scored, brain extraction falls back"),
    Case("apng.png", "scored", "", "animated PNG: its first frame"),
    Case("multi_page.tif", "scored", "", "multi-page TIFF: its first page"),
    Case("two_by_two.png", "scored", "", "the smallest slice preprocessing accepts"),
    Case("anim.gif", "skipped", "not an image type (.gif)", "item 8: counted, not silent"),
    Case("readme.txt", "skipped", "not an image type (.txt)", "other files are counted"),
    Case("nested.zip", "skipped", "not an image type (.zip)", "archives are not opened"),
    Case(".hidden.png", "skipped", "hidden", "hidden files (.venv icons, item 7)"),
    Case("._valid_00.png", "skipped", "macOS metadata", "AppleDouble files"),
    Case("loop", "skipped", "folder reached a second time", "a folder symlink loop ends"),
)


def _links(root: Path) -> None:
    os.symlink(root / "valid_01.png", root / "valid_01_link.png")
    os.symlink("/etc/passwd", root / "passwd.png")
    os.symlink(root / "missing.png", root / "broken_link.png")
    os.symlink("/dev/zero", root / "zero_link.png")
    os.symlink("..", root / "sub" / "loop")  # sub/loop -> the corpus root: a loop
    os.mkfifo(root / "fifo.png")
    with open(root / "sparse_huge.png", "wb") as handle:
        handle.truncate(SPARSE_BYTES)  # sparse: no disk space used


def build(root: Path) -> tuple[Case, ...]:
    """Write the corpus into ``root`` (created); returns its cases."""
    root.mkdir(parents=True, exist_ok=True)
    for name, data in _files(phantom_slices(20, seed=11)).items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    _links(root)
    return CASES
