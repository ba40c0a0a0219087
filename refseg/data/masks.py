"""Masks in COCO run-length encoding: decoding published segmentations, unions, checks.

Every RLE that leaves this module is compressed with ``counts`` as ``str`` (JSON-ready):
``{"size": [h, w], "counts": str}``. Legend: N instances, H x W image size.

pycocotools does no bounds checking when it decodes: counts that sum past ``h * w`` write
past the end of the output buffer. Every RLE from a file is therefore checked here
(`validate_rle`) before pycocotools sees it.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from refseg.data.types import RLE
from refseg.errors import DataError

# The most characters one compressed-RLE count may take: pycocotools' ``rleFrString``
# assembles a count with 32-bit int shifts, so a 7th character (bits 30-34) overflows and
# the string decodes to other runs than it says (its area wrong, ``merge`` looping for
# minutes). Six characters hold 30 bits: runs up to 2^29 pixels, more than any image.
MAX_COUNT_CHARS = 6
# Uncompressed runs go into pycocotools' 32-bit counts: a longer one is an OverflowError.
MAX_RUN = 2**32


def segmentation_to_rle(segmentation: Any, h: int, w: int, *, where: str = "segmentation") -> RLE:
    """Compressed RLE of a published COCO segmentation at image size (h, w).

    Polygons are rasterised one by one and united (a pixel covered by two overlapping
    polygons is foreground: refer's ``getMask`` sums the channels and some repositories
    keep ``== 1``, dropping overlaps; not here). A polygon of one or two points (2 or 4
    coordinates, no area) is left out, as detectron2's COCO loader and ReLA's gRefCOCO
    loader leave it out.

    Args:
        segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]``, a compressed RLE
            dict (``counts`` str or bytes) or an uncompressed RLE dict (``counts`` list).
        h, w: the image size the segmentation belongs to.
        where: names the annotation in error messages (file and id).

    Raises:
        DataError: no polygon of at least 3 points, a polygon with an odd number of
            coordinates or a coordinate far outside the image (or not finite), an RLE of
            another size, counts that are malformed or do not cover h * w pixels.
    """
    if isinstance(segmentation, dict):
        return validate_rle(segmentation, h, w, where=where)
    if isinstance(segmentation, (list, tuple)) and segmentation:
        polygons = [_check_polygon(p, i, h, w, where) for i, p in enumerate(segmentation)]
        polygons = [p for p in polygons if len(p) >= 6]
        if not polygons:
            raise DataError(f"{where}: no polygon has 3 points or more (6 coordinates)")
        # frPyObjects takes a list of 4 numbers as a box: pass polygons as lists of lists.
        rles = mask_utils.frPyObjects(polygons, h, w)
        return _as_str(mask_utils.merge(rles, intersect=False))
    raise DataError(
        f"{where}: segmentation must be polygons or an RLE dict, got "
        f"{type(segmentation).__name__}{' (empty)' if not segmentation else ''}"
    )


def _check_polygon(polygon: Any, index: int, h: int, w: int, where: str) -> list[float]:
    """The polygon as floats. Coordinates must be finite and lie within the image grown by
    its own size on every side: pycocotools rasterises every edge point by point, so one
    coordinate of 1e9 (or inf) takes gigabytes or never returns."""
    if not isinstance(polygon, (list, tuple)) or not all(
        isinstance(v, Real) and not isinstance(v, bool) for v in polygon
    ):
        raise DataError(f"{where}: polygon {index} is not a list of numbers")
    if len(polygon) % 2 or not polygon:
        raise DataError(
            f"{where}: polygon {index} has {len(polygon)} coordinates; a polygon needs an even "
            "number of them, x and y of each point"
        )
    coords = [_coordinate(v) for v in polygon]
    for k, v in enumerate(coords):
        side = w if k % 2 == 0 else h
        if not -side <= v <= 2 * side:  # also refuses nan
            axis = "x" if k % 2 == 0 else "y"
            raise DataError(f"{where}: polygon {index}, point {k // 2}: {axis} = {v} lies far "
                            f"outside the {w} x {h} image")
    return coords


def _coordinate(value: Real) -> float:
    """float(value); an integer too large for a float becomes an infinity of its sign."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def validate_rle(rle: Any, h: int, w: int, *, where: str = "RLE") -> RLE:
    """Check an RLE dict against image size (h, w); return it compressed with str counts.

    Cheap: parses the run lengths (no mask is decoded) and checks that they are
    non-negative and sum to exactly ``h * w``. Use it on every RLE read from a file
    (annotations and predictions) before handing it to pycocotools.

    Raises:
        DataError: not a dict with ``size`` and ``counts``, a size other than [h, w], or
            counts that are malformed or cover another number of pixels.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise DataError(f"{where}: RLE must be a dict with 'size' and 'counts'")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in size)
    ):
        raise DataError(f"{where}: RLE size must be [height, width], got {size!r}")
    if [int(size[0]), int(size[1])] != [int(h), int(w)]:
        raise DataError(f"{where}: RLE size {list(size)} does not match the image size {[h, w]}")
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):
        runs = _check_run_list(counts, where)
        if sum(runs) != h * w:
            raise DataError(f"{where}: RLE counts cover {sum(runs)} pixels, the image has {h * w}")
        return _as_str(mask_utils.frPyObjects({"size": [h, w], "counts": runs}, h, w))
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            raise DataError(f"{where}: RLE counts are not ASCII") from None
    if not isinstance(counts, str):
        raise DataError(f"{where}: RLE counts must be a string or a list of integers")
    total = sum(_parse_counts(counts, where))
    if total != h * w:
        raise DataError(f"{where}: RLE counts cover {total} pixels, the image has {h * w}")
    return {"size": [int(h), int(w)], "counts": counts}


def _check_run_list(counts: Any, where: str) -> list[int]:
    """The runs as ints; pycocotools holds a run in 32 bits."""
    if not all(isinstance(v, Integral) and not isinstance(v, bool) and 0 <= v < MAX_RUN
               for v in counts):
        raise DataError(
            f"{where}: uncompressed RLE counts must be non-negative integers below 2^32")
    return [int(v) for v in counts]


def _parse_counts(counts: str, where: str) -> list[int]:
    """Run lengths of a compressed counts string (COCO maskApi ``rleFrString``).

    Each run is a little-endian base-32 number in characters ``'0' + c``: bit 0x20 marks a
    continuation, bit 0x10 of the last character the sign; from the third run on the value
    is a difference to the run two before.
    """
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        c = ord(char) - 48
        if not 0 <= c < 64:
            raise DataError(f"{where}: RLE counts hold the invalid character {char!r}")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            if shift >= 5 * MAX_COUNT_CHARS:
                raise DataError(f"{where}: an RLE count longer than {MAX_COUNT_CHARS} "
                                "characters (pycocotools would misread it)")
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise DataError(f"{where}: RLE counts decode to a negative run length")
        runs.append(value)
        value = shift = 0
    if shift:
        raise DataError(f"{where}: RLE counts end in the middle of a run (truncated)")
    return runs


def _as_str(rle: dict) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": counts}


def empty_rle(h: int, w: int) -> RLE:
    """All-background RLE of size (h, w) (the target of a no-target sentence)."""
    return mask_to_rle(np.zeros((h, w), dtype=bool))


def mask_to_rle(mask: np.ndarray) -> RLE:
    """Compressed RLE (str counts) of a (H, W) mask; nonzero is foreground."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects a (H, W) mask, got shape {mask.shape}")
    return _as_str(mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8)))


def rle_to_mask(rle: RLE) -> np.ndarray:
    """(H, W) bool mask of a checked RLE."""
    return _decode([rle])[:, :, 0].astype(bool)


def decode_rles(rles: list[RLE], h: int, w: int) -> np.ndarray:
    """(N, H, W) uint8 masks of N checked RLEs of size (h, w); (0, H, W) when N = 0."""
    if not rles:
        return np.zeros((0, h, w), dtype=np.uint8)
    stacked = _decode(rles)  # (H, W, N), Fortran order
    return np.ascontiguousarray(stacked.transpose(2, 0, 1))


def union_rle(rles: list[RLE]) -> RLE:
    """Union of checked RLEs of one size (the merged mask of several referents)."""
    if not rles:
        raise ValueError("union_rle needs at least one RLE (use empty_rle for none)")
    if len(rles) == 1:
        return _as_str(rles[0])
    return _as_str(mask_utils.merge([_for_coco(r) for r in rles], intersect=False))


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_for_coco(rle)))


def rle_to_box(rle: RLE) -> tuple[float, float, float, float]:
    """Tight xyxy box of an RLE's foreground (pixel edges); (0, 0, 0, 0) when empty."""
    x, y, w, h = (float(v) for v in mask_utils.toBbox(_for_coco(rle)))
    return (x, y, x + w, y + h)


def box_of_mask(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight xyxy box of a (H, W) mask's foreground, in pixel edges.

    A single pixel at (row 3, col 5) gives (5, 3, 6, 4), as COCO's ``toBbox`` does;
    an empty mask gives (0, 0, 0, 0).
    """
    mask = np.asarray(mask) != 0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _decode(rles: list[RLE]) -> np.ndarray:
    """(H, W, N) uint8 via pycocotools, without its numpy-2 ``copy=False`` warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode([_for_coco(r) for r in rles])


def _for_coco(rle: RLE) -> dict:
    """The dict pycocotools wants (it accepts str counts)."""
    return {"size": list(rle["size"]), "counts": rle["counts"]}
