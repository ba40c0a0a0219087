"""Mask overlaps in COCO RLE space, the `--eval-size` resize, and a strict RLE check.

Legend: H x W mask size, S the side of the `--eval-size` square.
A mask is either a compressed RLE dict ``{"size": [h, w], "counts": str | bytes}`` or an
(H, W) array (bool or 0/1). Overlaps of two RLEs never decode them (pycocotools merges
run lengths), which keeps `refseg score` fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from pycocotools import mask as mask_utils

from refseg.data.masks import MAX_COUNT_CHARS as _MAX_COUNT_CHARS
_CHUNK_CHARS = 1 << 17


class Overlap(NamedTuple):
    """Pixel counts of one (prediction, ground truth) pair."""

    intersection: int  # |pred AND gt|
    union: int  # |pred OR gt|
    pred_area: int  # |pred|


def overlap(pred, gt) -> Overlap:
    """I, U and |pred| of two masks of one size.

    Both RLE dicts: computed on run lengths (no decoding); otherwise (H, W) arrays.
    """
    if isinstance(pred, dict) and isinstance(gt, dict):
        area_pred, area_gt = (int(a) for a in mask_utils.area([pred, gt]))
        if area_pred == 0 or area_gt == 0:
            return Overlap(0, area_pred + area_gt, area_pred)
        inter = int(mask_utils.area(mask_utils.merge([pred, gt], intersect=True)))
        return Overlap(inter, area_pred + area_gt - inter, area_pred)
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    area_pred = int(np.count_nonzero(pred))
    inter = int(np.count_nonzero(pred & gt))
    return Overlap(inter, area_pred + int(np.count_nonzero(gt)) - inter, area_pred)


def _nearest_source(n_in: int, n_out: int) -> np.ndarray:
    """Source index of every output pixel, exactly as Pillow's ``ImagingScaleAffine``:
    start at scale / 2, add scale = n_in / n_out per pixel in float64, truncate."""
    scale = n_in / n_out
    steps = np.full(n_out, scale)
    steps[0] = scale * 0.5
    return np.cumsum(steps).astype(np.int64)  # cumsum adds in sequence, as Pillow's loop


def resize_nearest(mask: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W) mask to (S, S) with nearest neighbour, pixel-exact to
    ``PIL.Image.resize(..., NEAREST)`` (the resize of the PIL/torchvision/detectron2
    pipelines the official evaluators use).

    Pillow samples source pixel ~ floor((i + 0.5) * H / S), accumulating the position in
    floating point, so exact .0 boundaries can fall one pixel lower; that is reproduced.
    """
    height, width = mask.shape
    rows = np.minimum(_nearest_source(height, size), height - 1)
    cols = np.minimum(_nearest_source(width, size), width - 1)
    return np.asarray(mask)[rows[:, None], cols[None, :]]


def at_eval_size(mask, size: int | None):
    """The mask unchanged (``size`` None) or decoded and resized to (S, S)."""
    if size is None:
        return mask
    if isinstance(mask, dict):
        from refseg.data.masks import rle_to_mask

        mask = rle_to_mask(mask)
    return resize_nearest(np.asarray(mask, dtype=bool), size)


def invalid_rle_counts(counts: Sequence[str | bytes], sizes: Sequence[int]) -> list[int]:
    """Indices of compressed RLE ``counts`` strings that are not valid for their mask size.

    Valid means: every character in COCO's alphabet ('0'..'o'), every count complete and
    at most `MAX_COUNT_CHARS` long (pycocotools misreads longer ones), every decoded run
    non-negative, and the runs adding up to exactly ``sizes[i]`` = h * w pixels.
    pycocotools checks none of this: a short string decodes to uninitialised memory and
    hangs ``merge``. Strings are checked a chunk at a time, in numpy (small chunks keep the
    work arrays in cache and avoid page faults).

    Decoding follows COCO's ``rleFrString``: 5 bits per character (char - 48), bit 0x20
    continues the count, bit 0x10 of its last character is the sign, and count m > 2 is
    stored as the difference to count m - 2.
    """
    bad: list[int] = []
    begin = 0
    while begin < len(counts):
        end, chars = begin, 0
        while end < len(counts) and (chars < _CHUNK_CHARS or end == begin):
            chars += len(counts[end]) if isinstance(counts[end], (str, bytes)) else 0
            end += 1
        bad += [begin + i for i in _invalid_chunk(counts[begin:end], sizes[begin:end])]
        begin = end
    return bad


def _invalid_chunk(counts: Sequence[str | bytes], sizes: Sequence[int]) -> list[int]:
    n = len(counts)
    bad = np.zeros(n, dtype=bool)
    encoded = []
    for i, c in enumerate(counts):
        if isinstance(c, str):
            c = c.encode("ascii") if c.isascii() else None
        ok = isinstance(c, bytes) and len(c) > 0
        bad[i] = not ok
        encoded.append(c if ok else b"")
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=n)
    nonempty = np.flatnonzero(lengths)
    if len(nonempty) == 0:
        return np.flatnonzero(bad).tolist()
    string_end = np.cumsum(lengths)
    chars = np.frombuffer(b"".join(encoded), dtype=np.uint8) - np.uint8(48)  # wraps below '0'
    out_of_alphabet = np.flatnonzero(chars > 63)
    bad[np.searchsorted(string_end, out_of_alphabet, side="right")] = True
    chars = np.minimum(chars, 63)

    # A count ends at a character without the continuation bit; every string must end one.
    ends = (chars & 0x20) == 0
    last_char = string_end[nonempty] - 1
    bad[nonempty[~ends[last_char]]] = True
    ends[last_char] = True
    count_end = np.flatnonzero(ends)
    count_start = np.concatenate(([0], count_end[:-1] + 1))
    count_chars = count_end - count_start + 1
    too_long = count_start[count_chars > _MAX_COUNT_CHARS]
    bad[np.searchsorted(string_end, too_long, side="right")] = True
    chunks = (chars & 0x1F).astype(np.int64)
    value = chunks[count_start]
    for k in range(1, _MAX_COUNT_CHARS):
        longer = np.flatnonzero(count_chars > k)
        if len(longer) == 0:
            break
        value[longer] |= chunks[count_start[longer] + k] << (5 * k)
    negative = np.flatnonzero(chars[count_end] & 0x10)
    value[negative] -= np.left_shift(1, 5 * np.minimum(count_chars[negative], _MAX_COUNT_CHARS))

    # Undo the difference coding: run m = value m + run m - 2 for m > 2, i.e. a cumulative
    # sum along each parity chain of one string (m = 0 stands alone).
    n_counts = np.zeros(n, dtype=np.int64)
    n_counts[nonempty] = np.add.reduceat(ends, (string_end - lengths)[nonempty], dtype=np.int64)
    first_count = np.cumsum(n_counts) - n_counts  # per string
    first = np.repeat(first_count, n_counts)  # per count: first count of its string
    index = np.arange(len(value))
    m = index - first
    runs = value
    for chain in (((m & 1) == 0) & (m >= 2), (m & 1) == 1):
        summed = np.concatenate(([0], np.cumsum(np.where(chain, value, 0))))
        runs = np.where(chain, summed[index + 1] - summed[first], runs)
    bad[nonempty[np.minimum.reduceat(runs, first_count[nonempty]) < 0]] = True
    totals = np.zeros(n, dtype=np.int64)
    totals[nonempty] = np.add.reduceat(runs, first_count[nonempty])
    bad |= totals != _int64_sizes(sizes)
    return np.flatnonzero(bad).tolist()


def _int64_sizes(sizes: Sequence[int]) -> np.ndarray:
    """``sizes`` as int64; one too large for it becomes -1, which no string's runs add up
    to (a string with a negative run is bad already)."""
    limit = np.iinfo(np.int64).max
    return np.fromiter((s if s <= limit else -1 for s in sizes), dtype=np.int64,
                       count=len(sizes))
