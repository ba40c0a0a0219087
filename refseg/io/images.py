"""Robust image loading: any file Pillow reads becomes (H, W, 3) uint8 RGB as displayed.

Rules (the same for every caller, so masks and pictures always line up):

- EXIF orientation is applied: arrays are in displayed orientation, and `image_size`
  reports the displayed (h, w).
- Alpha (RGBA, LA, PA, palette with transparency) is dropped, not composited: the colour
  channels are kept as stored, as ``Image.convert("RGB")`` does in the official loaders.
- CMYK and YCbCr go through Pillow's conversion (embedded ICC profiles are not applied).
- 16-bit and 32-bit grey (``I;16*`` of either byte order, ``I``) are scaled from 0..65535
  to 0..255; ``I`` values outside that range are min-max scaled. Float images (``F``) in
  0..1 are scaled by 255, in 0..255 kept as they are, and min-max scaled otherwise.
- Grey (``L``) and bilevel (``1``) are repeated over three channels.
- At most `MAX_PIXELS` pixels (256 MP); larger images, empty ones (a side of 0 pixels),
  corrupt, truncated or unreadable files and non-images raise `DataError` naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from refseg.errors import DataError

MAX_PIXELS = 256 * 2**20

# Pillow refuses images over twice its own limit (~179 MP) before we can check ours.
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # orientations that swap width and height

_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(src: Any, *, where: str | None = None) -> np.ndarray:
    """Pixels of an image as (H, W, 3) uint8 RGB, in displayed orientation.

    Args:
        src: a path, a PIL image, or an (H, W), (H, W, 3) or (H, W, 4) array: uint8;
            uint16 of either byte order (16-bit); bool; another integer type (values up to
            255 read as 8-bit, up to 65535 as 16-bit); float in 0..1 (scaled by 255) or in
            0..255 (kept); other ranges are stretched min-max.
        where: names the image in error messages (default: the path).

    Raises:
        DataError: missing, unreadable, corrupt, truncated or over-large image.
    """
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, where or "image array")
    if isinstance(src, Image.Image):
        return _decode(src, where or "PIL image")
    if not isinstance(src, (str, Path)):
        raise DataError(f"{where or 'image'}: expected a path, a PIL image or a numpy array, "
                        f"got {type(src).__name__}")
    path = Path(src)
    where = where or str(path)
    with _open(path, where) as img:
        return _decode(img, where)


def image_size(path: str | Path, *, where: str | None = None) -> tuple[int, int]:
    """(h, w) of an image file in displayed orientation, read from its header only."""
    path = Path(path)
    with _open(path, where or str(path)) as img:
        w, h = img.size
        # Pillow's TIFF reader already reports (and decodes) the displayed size.
        transposed = img.format != "TIFF" and _orientation(img) in _TRANSPOSED
        return (w, h) if transposed else (h, w)


def check_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> str | None:
    """Decode an image fully; return what is wrong with it, or None when it is fine.

    Args:
        path: the image file.
        expected_hw: the (h, w) the annotations were made at, if known.
    """
    try:
        hw = load_image(path).shape[:2]
    except DataError as exc:
        return str(exc)
    if expected_hw is not None and tuple(hw) != tuple(expected_hw):
        return (
            f"{path}: image is {hw[0]}x{hw[1]} (h x w, as displayed), annotations say "
            f"{expected_hw[0]}x{expected_hw[1]}"
        )
    return None


def _open(path: Path, where: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{where}: is a folder, not an image") from None
    except UnidentifiedImageError:
        if _is_empty(path):  # a download or copy that wrote nothing
            raise DataError(f"{where}: empty file (0 bytes), not an image") from None
        raise DataError(f"{where}: not an image file (or an unsupported format)") from None
    except _ERRORS as exc:
        raise DataError(f"{where}: cannot open image ({exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        img.close()
        raise DataError(
            f"{where}: {w}x{h} image has {w * h / 2**20:.0f} MP, over the limit of "
            f"{MAX_PIXELS // 2**20} MP"
        )
    return img


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except _ERRORS + (TypeError, KeyError):
        return 1  # an unreadable EXIF block does not make the picture unreadable


def _decode(img: Image.Image, where: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            if 0 in img.size:
                raise DataError(f"{where}: empty image ({img.size[0]}x{img.size[1]} pixels)")
            if _orientation(img) != 1:
                img = ImageOps.exif_transpose(img)
            return _to_rgb(img, where)
    except DataError:
        raise
    except _ERRORS as exc:
        raise DataError(f"{where}: corrupt or truncated image ({exc})") from None


def _to_rgb(img: Image.Image, where: str) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode.startswith("I") or mode == "F":  # I;16 (either byte order), I: 16-bit data
        return _array_to_rgb(np.asarray(img), where, sixteen_bit=mode.startswith("I"))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # a palette's transparency cannot go straight to RGB
    elif mode == "PA":
        img = img.convert("RGBA")
    try:
        img = img.convert("RGB")
    except ValueError:
        raise DataError(f"{where}: cannot convert pixel mode {mode} to RGB") from None
    return np.asarray(img, dtype=np.uint8)


def _array_to_rgb(array: np.ndarray, where: str, *, sixteen_bit: bool = False) -> np.ndarray:
    """(H, W[, C]) array of any supported dtype -> (H, W, 3) uint8; ``sixteen_bit`` reads
    integers as 0..65535 whatever their range (a dark 16-bit picture stays dark)."""
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        a = a[:, :, :3]  # alpha dropped
    elif a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    elif a.ndim != 2:
        raise DataError(f"{where}: expected an (H, W), (H, W, 3) or (H, W, 4) array, got {a.shape}")
    if a.size == 0:
        raise DataError(f"{where}: empty image array {array.shape}")
    a = _to_uint8(a, where, sixteen_bit)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray, where: str, sixteen_bit: bool = False) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        sixteen_bit = sixteen_bit or (a.dtype.kind == "u" and a.dtype.itemsize == 2)  # '>u2' too
        if not sixteen_bit and 0 <= lo and hi <= 255:  # e.g. int64 from np.array(...)
            return a.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            # Round to nearest: 65535 / 257 = 255 exactly.
            return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
        return _min_max(a.astype(np.float64))
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            return np.floor(a * 255.0 + 0.5).astype(np.uint8)
        if a.size and a.min() >= 0.0 and a.max() <= 255.0:  # 8-bit values held as floats
            return np.floor(a + 0.5).astype(np.uint8)
        return _min_max(a)
    raise DataError(f"{where}: unsupported pixel type {a.dtype}")


def _min_max(a: np.ndarray) -> np.ndarray:
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.floor((a - lo) * 255.0 / (hi - lo) + 0.5).astype(np.uint8)
