"""Mask overlaps in RLE space, the PIL-exact nearest resize, and the batch RLE check."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from refseg.data import masks
from refseg.errors import DataError
from refseg.metrics.rle import at_eval_size, invalid_rle_counts, overlap, resize_nearest


def _rle(mask: np.ndarray) -> dict:
    return masks.mask_to_rle(mask)


def test_overlap_of_rles_matches_numpy_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, 2)
        pred = rng.random((h, w)) < rng.random()
        gt = rng.random((h, w)) < rng.random()
        inter = int((pred & gt).sum())
        expected = (inter, int((pred | gt).sum()), int(pred.sum()))
        assert overlap(_rle(pred), _rle(gt)) == expected
        assert overlap(pred, gt) == expected


def test_overlap_by_hand():
    pred = np.zeros((2, 5), bool)
    gt = np.zeros((2, 5), bool)
    pred[0, :3] = True  # 3 pixels
    gt[0, 2:] = True  # 3 pixels, 1 shared
    assert overlap(_rle(pred), _rle(gt)) == (1, 5, 3)
    assert overlap(_rle(pred), _rle(np.zeros((2, 5), bool))) == (0, 3, 3)


def test_overlap_rejects_arrays_of_different_shapes():
    with pytest.raises(ValueError, match="shapes differ"):
        overlap(np.zeros((2, 3), bool), np.zeros((3, 2), bool))


def test_resize_nearest_is_pixel_exact_to_pil():
    rng = np.random.default_rng(1)
    # (446, 307) hits an exact .0 boundary where Pillow's float accumulation rounds down.
    shapes = [(5, 446, 307), (480, 640, 480), (1, 1, 3), (3, 7, 1)]
    shapes += [(int(h), int(w), int(s)) for h, w, s in rng.integers(1, 500, (40, 3))]
    for h, w, size in shapes:
        mask = rng.random((h, w)) < 0.5
        pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
        np.testing.assert_array_equal(resize_nearest(mask, size), np.asarray(pil) > 0)


def test_at_eval_size_decodes_rles_and_keeps_masks_without_size():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    rle = _rle(mask)
    assert at_eval_size(rle, None) is rle
    np.testing.assert_array_equal(at_eval_size(rle, 3), resize_nearest(mask, 3))


def _reference_valid(counts, size: int) -> bool:
    """The plain one-string check of refseg.data.masks (pure Python)."""
    try:
        h, w = size, 1
        masks.validate_rle({"size": [h, w], "counts": counts}, h, w)
        return True
    except DataError:
        return False


def test_invalid_rle_counts_agrees_with_the_plain_check_on_corrupted_strings():
    rng = np.random.default_rng(2)
    counts, sizes = [], []
    for _ in range(1500):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = rng.random((h, w)) < rng.random()
        if rng.random() < 0.2:
            mask[:] = rng.random() < 0.5
        text = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))["counts"].decode()
        r = rng.random()
        if r < 0.2:
            text = text[:-1]  # truncated: too few pixels, or a count cut in the middle
        elif r < 0.3:
            text += chr(int(rng.integers(48, 112)))  # one count too many
        elif r < 0.45:
            j = int(rng.integers(len(text)))
            text = text[:j] + chr(int(rng.integers(40, 120))) + text[j + 1:]
        counts.append(text)
        sizes.append(h * w)
    expected = [i for i, (c, s) in enumerate(zip(counts, sizes)) if not _reference_valid(c, s)]
    assert 100 < len(expected) < 1000  # the corruptions produced both kinds
    assert invalid_rle_counts(counts, sizes) == expected


def test_invalid_rle_counts_by_hand():
    # "5220003" is pycocotools' encoding of a 4 x 5 mask (a 2 x 3 block).
    assert mask_utils.area({"size": [4, 5], "counts": b"5220003"}) > 0
    counts = ["5220003", "", "06", "5220003x", "5220003", b"5220003", "é", None, "P"]
    sizes = [20, 20, 20, 20, 21, 20, 20, 20, 20]
    # empty; 6 pixels only; out-of-alphabet 'x'; wrong size; non-ASCII; not a string;
    # 'P' continues a count that never ends.
    assert invalid_rle_counts(counts, sizes) == [1, 2, 3, 4, 6, 7, 8]
    assert invalid_rle_counts([], []) == []


def test_invalid_rle_counts_catches_negative_runs():
    # Difference coding: the 4th count is stored as (run 4 - run 2); a large negative
    # difference gives a negative run even when the total is right.
    runs = [2, 3, 5, -1, 11]  # one negative run, total 20
    text = _encode_runs(runs)
    assert invalid_rle_counts([text], [20]) == [0]
    assert invalid_rle_counts([_encode_runs([2, 3, 5, 1, 9])], [20]) == []


def _encode_runs(runs: list[int]) -> str:
    """COCO's rleToString of arbitrary (even negative) runs."""
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def test_encode_runs_matches_pycocotools():
    mask = np.zeros((4, 5), np.uint8)
    mask[1:3, 1:4] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    assert _encode_runs(masks._parse_counts(rle["counts"].decode(), "x")) == rle["counts"].decode()


def _padded_count(value: int, chars: int) -> str:
    """One count written in ``chars`` characters (sign-extended), as no encoder writes it."""
    bits = value + (1 << 5 * chars) if value < 0 else value
    return "".join(chr(48 + (((bits >> 5 * i) & 0x1F) | (0x20 if i < chars - 1 else 0)))
                   for i in range(chars))


def test_counts_longer_than_pycocotools_reads_are_invalid():
    # Runs 0, 70, 5, 6, 319 of a 20 x 20 mask (76 foreground pixels); the 4th run is the
    # difference -64 to the 2nd. Written in 6 characters pycocotools reads it right; in 7 its
    # 32-bit shifts overflow and it sees other runs (and `merge` may loop for minutes).
    head = _padded_count(0, 1) + _padded_count(70, 2) + _padded_count(5, 1)
    tail = _padded_count(319 - 5, 2)
    six, seven = (head + _padded_count(-64, n) + tail for n in (6, 7))
    assert masks._parse_counts(six, "x") == [0, 70, 5, 6, 319]
    assert mask_utils.area({"size": [20, 20], "counts": six}) == 76
    assert mask_utils.area({"size": [20, 20], "counts": seven}) != 76
    assert invalid_rle_counts([six, seven], [400, 400]) == [1]
    assert masks.validate_rle({"size": [20, 20], "counts": six}, 20, 20, where="m")
    with pytest.raises(DataError, match="m: an RLE count longer than 6 characters"):
        masks.validate_rle({"size": [20, 20], "counts": seven}, 20, 20, where="m")
