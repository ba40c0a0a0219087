"""refseg.data.masks: polygons, RLEs and their checks, against masks drawn by hand."""

from __future__ import annotations

import numpy as np
import pytest
from builders import compressed_rle, rect, rect_mask, uncompressed_rle

from refseg.data import masks
from refseg.errors import DataError

H, W = 12, 16


def test_polygon_union_keeps_overlap():
    # Two rectangles sharing the block rows 4..5, cols 6..7: refer's "== 1" would drop it.
    seg = [rect(2, 2, 8, 6), rect(6, 4, 12, 10)]
    rle = masks.segmentation_to_rle(seg, H, W)
    expected = rect_mask(H, W, (2, 2, 8, 6), (6, 4, 12, 10))
    np.testing.assert_array_equal(masks.rle_to_mask(rle), expected)
    assert expected[4:6, 6:8].all()
    assert isinstance(rle["counts"], str) and rle["size"] == [H, W]
    assert masks.rle_area(rle) == 24 + 36 - 4


def test_compressed_and_uncompressed_rle_give_the_same_mask():
    m = rect_mask(H, W, (1, 3, 5, 11), (9, 0, 16, 2))
    from_counts = masks.segmentation_to_rle(uncompressed_rle(m), H, W)
    from_string = masks.segmentation_to_rle(compressed_rle(m), H, W)
    bytes_rle = dict(compressed_rle(m), counts=compressed_rle(m)["counts"].encode())
    assert from_counts == from_string == masks.segmentation_to_rle(bytes_rle, H, W)
    assert from_counts == masks.mask_to_rle(m)
    np.testing.assert_array_equal(masks.rle_to_mask(from_counts), m)


def test_polygons_a_little_outside_the_image_are_clipped_by_rasterising():
    inside = masks.segmentation_to_rle([rect(0, 0, 4, 4)], H, W)
    spilling = masks.segmentation_to_rle([[-W, -H, 4, -H, 4, 4, -W, 4]], H, W)  # the limit
    np.testing.assert_array_equal(masks.rle_to_mask(spilling), masks.rle_to_mask(inside))


def test_polygons_of_one_or_two_points_are_left_out_not_read_as_a_box():
    # pycocotools would take [x, y, w, h] for a box; detectron2 and ReLA drop the polygon.
    alone = masks.segmentation_to_rle([rect(0, 0, 2, 2)], H, W)
    for degenerate in ([1, 1, 3, 3], [5, 5]):
        mixed = masks.segmentation_to_rle([degenerate, rect(0, 0, 2, 2)], H, W, where="ann 7")
        assert mixed == alone
    with pytest.raises(DataError, match=r"ann 7: no polygon has 3 points or more"):
        masks.segmentation_to_rle([[1, 1, 3, 3], [5, 5]], H, W, where="ann 7")


@pytest.mark.parametrize(
    "seg, message",
    [
        ([[0, 0, 4, 0, 4]], "5 coordinates"),
        ([rect(0, 0, 2, 2), []], "polygon 1 has 0 coordinates"),
        ([[0, 0, 4, 0, "x", 4]], "not a list of numbers"),
        ([[0, 0, 4, 0, float("inf"), 4]], r"polygon 0, point 2: x = inf lies far outside the 16 x 12"),
        ([[0, 0, 4, 0, 4, float("nan")]], "point 2: y = nan lies far outside"),
        ([rect(0, 0, 2, 2), [0, 0, 1e9, 0, 4, 4]], "polygon 1, point 1: x = 1000000000.0"),
        ([[0, -12.5, 4, 0, 4, 4]], "point 0: y = -12.5 lies far outside"),
        ([[0, 0, 10**400, 0, 4, 4]], "point 1: x = inf lies far outside"),
        ([], "empty"),
        ("polygon", "must be polygons or an RLE"),
        ({"counts": "abc"}, "'size' and 'counts'"),
        ({"size": [H, W + 1], "counts": [H * (W + 1)]}, r"size \[12, 17\] does not match"),
        ({"size": [H, W], "counts": [5, 5]}, "cover 10 pixels, the image has 192"),
        ({"size": [H, W], "counts": [100, -2, 94]}, "non-negative"),
        ({"size": [H, W], "counts": "0 "}, "invalid character"),
        ({"size": [H, W], "counts": "g"}, "truncated"),
        ({"size": [H, W], "counts": 17}, "string or a list"),
    ],
)
def test_malformed_segmentations_name_the_annotation(seg, message):
    with pytest.raises(DataError, match=rf"^refs\.p: ann 3: .*{message}"):
        masks.segmentation_to_rle(seg, H, W, where="refs.p: ann 3")


def test_validate_rle_rejects_counts_that_overrun_the_image():
    # pycocotools would write past its buffer decoding this: it must never see it.
    overrun = masks.mask_to_rle(np.ones((H, W + 4), dtype=bool))
    with pytest.raises(DataError, match="does not match"):
        masks.validate_rle(overrun, H, W, where="pred 1")
    forged = {"size": [H, W], "counts": overrun["counts"]}
    with pytest.raises(DataError, match="cover 240 pixels, the image has 192"):
        masks.validate_rle(forged, H, W, where="pred 1")


def test_uncompressed_runs_beyond_32_bits_are_refused():
    # pycocotools keeps a run in 32 bits.
    h, w = 2**16, 2**16
    assert masks.validate_rle({"size": [h, w], "counts": [2**32 - 1, 1]}, h, w)["size"] == [h, w]
    with pytest.raises(DataError, match=r"^ann 3: uncompressed RLE counts .* below 2\^32"):
        masks.validate_rle({"size": [h, w], "counts": [2**34]}, h, w, where="ann 3")


def test_parse_counts_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(1, 40, size=2)
        m = rng.random((h, w)) < rng.random()
        rle = masks.mask_to_rle(m)
        assert masks.validate_rle(rle, h, w) == rle
        runs = masks._parse_counts(rle["counts"], "x")
        assert runs == uncompressed_rle(m)["counts"]


def test_union_empty_and_decode():
    a = masks.mask_to_rle(rect_mask(H, W, (0, 0, 4, 4)))
    b = masks.mask_to_rle(rect_mask(H, W, (2, 2, 6, 6)))
    u = masks.union_rle([a, b])
    np.testing.assert_array_equal(masks.rle_to_mask(u), rect_mask(H, W, (0, 0, 4, 4), (2, 2, 6, 6)))
    assert masks.union_rle([a]) == a
    empty = masks.empty_rle(H, W)
    assert masks.rle_area(empty) == 0 and empty["size"] == [H, W]
    stack = masks.decode_rles([a, b, empty], H, W)
    assert stack.shape == (3, H, W) and stack.dtype == np.uint8 and stack.flags.c_contiguous
    assert stack.sum(axis=(1, 2)).tolist() == [16, 16, 0]
    assert masks.decode_rles([], H, W).shape == (0, H, W)


def test_boxes():
    m = np.zeros((H, W), dtype=bool)
    m[3, 5] = True
    assert masks.box_of_mask(m) == (5.0, 3.0, 6.0, 4.0)
    m[7, 9] = True
    assert masks.box_of_mask(m) == (5.0, 3.0, 10.0, 8.0)
    assert masks.rle_to_box(masks.mask_to_rle(m)) == (5.0, 3.0, 10.0, 8.0)
    assert masks.box_of_mask(np.zeros((H, W))) == (0.0, 0.0, 0.0, 0.0)
    assert masks.rle_to_box(masks.empty_rle(H, W)) == (0.0, 0.0, 0.0, 0.0)
