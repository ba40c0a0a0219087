"""gRefCOCO GREC (gRefCOCO's mdetr refexp.py summarize): kept boxes, greedy GIoU
matching, F1 == 1, no-target, empty predictions; by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refseg.metrics.boxes import box_iou, generalized_box_iou
from refseg.metrics.grec import GRECAccumulator, greedy_matches, match_boxes

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
# Shifted diagonally by 1.8: IoU 67.24 / 132.76 = 0.506 >= 0.5, but GIoU 0.460 < 0.5.
A_SHIFTED = [1.8, 1.8, 11.8, 11.8]


def test_shifted_box_passes_iou_but_not_generalized_iou():
    assert box_iou([A], [A_SHIFTED])[0][0] == pytest.approx(67.24 / 132.76)
    assert generalized_box_iou([A], [A_SHIFTED])[0][0] == pytest.approx(
        67.24 / 132.76 - (139.24 - 132.76) / 139.24
    )
    assert match_boxes([A_SHIFTED], [0.9], [A], score_thr=0.7, iou_thr=0.5) == (1, 0)


def test_greedy_takes_the_global_maximum_not_the_best_assignment():
    # The best assignment pairs (0, 1) and (1, 0) for 2 matches; greedy takes 0.9 first,
    # retires row 0 and column 0, and the remaining 0.1 is below 0.5.
    giou = np.array([[0.9, 0.8], [0.85, 0.1]])
    assert greedy_matches(giou, 0.5) == 1
    assert greedy_matches(np.array([[0.6, 0.2], [0.1, 0.7]]), 0.5) == 2
    assert greedy_matches(np.zeros((0, 3)), 0.5) == 0
    assert greedy_matches([[0.7, 0.7], [0.7, 0.7]], 0.5) == 2  # ties
    # at most min(K, G) matches
    assert greedy_matches(np.ones((3, 1)), 0.5) == 1


def test_equal_scores_rank_the_larger_box_first_as_the_official_sort():
    """summarize sorts (score, box) pairs in reverse: of two boxes with one score, the one
    greater in (x1, y1, x2, y2) order is row 0 and wins a GIoU tie, whatever the input
    order. Here both tie at 100 / 110 on x; the winner is retired with x, and the other
    must then match y: upper 80 / 150 = 0.533 would, lower 70 / 160 = 0.4375 does not."""
    x, y = [0.0, 1.0, 10.0, 11.0], [0.0, 4.0, 10.0, 16.0]
    upper, lower = [0.0, 1.0, 10.0, 12.0], [0.0, 0.0, 10.0, 11.0]
    assert generalized_box_iou([upper, lower], [x, y]) == [
        [pytest.approx(100 / 110), pytest.approx(80 / 150)],
        [pytest.approx(100 / 110), pytest.approx(70 / 160)],
    ]
    # upper (y1 1 > 0) ranks first, takes x; lower vs y is below 0.5: TP 1 of 2.
    for boxes in ([lower, upper], [upper, lower]):
        assert match_boxes(boxes, [0.9, 0.9], [x, y], score_thr=0.7, iou_thr=0.5) == (2, 1)
    # A higher score still ranks first: lower takes x, upper then matches y.
    assert match_boxes([upper, lower], [0.9, 0.95], [x, y], score_thr=0.7, iou_thr=0.5) == (2, 2)


def test_generalized_iou_of_exactly_the_threshold_matches():
    # The lower half of A: IoU 50 / 100 and an enclosing box equal to A, so GIoU is exactly
    # 0.5; the official loop stops only below the threshold.
    half = [0.0, 0.0, 10.0, 5.0]
    assert generalized_box_iou([half], [A]) == [[0.5]]
    assert match_boxes([half], [0.9], [A], score_thr=0.7, iou_thr=0.5) == (1, 1)
    assert match_boxes([[0.0, 0.0, 10.0, 4.9]], [0.9], [A], score_thr=0.7, iou_thr=0.5) == (1, 0)


def test_score_threshold_keeps_score_at_threshold():
    # 0.7 is kept (>=), 0.69 dropped; kept boxes count as false positives when unmatched.
    assert match_boxes([A, B, A], [0.7, 0.69, 0.95], [A], score_thr=0.7, iou_thr=0.5) == (2, 1)
    assert match_boxes([], [], [A], score_thr=0.7, iou_thr=0.5) == (0, 0)


def test_samples_by_hand():
    acc = GRECAccumulator()
    # 1. Two referents, both found; a third box below the score threshold is ignored.
    acc.update(1, [B, A, A], [0.8, 0.9, 0.5], [A, B], gt_no_target=False)  # F1 = 1
    # 2. Two referents found plus one extra kept box: F1 = 4 / 5.
    acc.update(2, [A, B, [50, 50, 60, 60]], [0.9, 0.9, 0.9], [A, B], gt_no_target=False)
    # 3. Target, only a box that passes IoU but not GIoU: TP 0, one kept (T-acc counts it).
    acc.update(3, [A_SHIFTED], [0.99], [A], gt_no_target=False)
    # 4. Target, no box at all (an empty prediction list).
    acc.update(4, [], [], [A], gt_no_target=False)
    # 5. No-target, a box at exactly 0.7: kept, so F1 = 0.
    acc.update(5, [A], [0.7], np.zeros((0, 4)), gt_no_target=True)
    # 6. No-target, boxes all below 0.7: correct.
    acc.update(6, [A, B], [0.69, 0.1], np.zeros((0, 4)), gt_no_target=True)
    assert acc.records() == [
        (False, 2, 2, 2), (False, 3, 2, 2), (False, 1, 0, 1), (False, 0, 0, 1),
        (True, 1, 0, 0), (True, 0, 0, 0),
    ]
    assert acc.summary() == {
        "F1score": 100.0 * 2 / 6,  # samples 1 and 6
        "N-acc": 50.0,  # sample 6 of 5, 6
        "T-acc": 75.0,  # samples 1, 2, 3 of 1-4 keep a box
    }
    assert acc.counts() == {"sentences": 6, "target": 4, "no_target": 2}


def test_no_target_ignores_ground_truth_boxes_given_by_mistake():
    acc = GRECAccumulator()
    acc.update(1, [], [], [A], gt_no_target=True)
    assert acc.summary()["F1score"] == 100.0


def test_threshold_is_a_parameter():
    strict = GRECAccumulator(score_thr=0.95)
    strict.update(1, [A], [0.9], [A], gt_no_target=False)
    assert strict.summary()["F1score"] == 0.0
    assert strict.params() == {"score_thr": 0.95, "iou_thr": 0.5}


def test_perfect_and_all_empty_predictions():
    gts = [([A, B], False), ([], True), ([B], False)]
    perfect, empty = GRECAccumulator(), GRECAccumulator()
    for i, (boxes, nt) in enumerate(gts):
        perfect.update(i, boxes, [1.0] * len(boxes), boxes, gt_no_target=nt)
        empty.update(i, [], [], boxes, gt_no_target=nt)
    assert perfect.summary() == {"F1score": 100.0, "N-acc": 100.0, "T-acc": 100.0}
    assert empty.summary() == {"F1score": 100.0 / 3, "N-acc": 100.0, "T-acc": 0.0}


def test_box_iou_and_generalized_iou_by_hand():
    a = [[0, 0, 2, 2]]
    b = np.array([[1, 1, 3, 3], [2, 0, 3, 1], [0, 0, 2, 2]], dtype=np.float32)
    # overlap 1 of union 7; disjoint; identical
    assert box_iou(a, b) == [[pytest.approx(1 / 7), 0.0, 1.0]]
    # enclosing boxes: 3 x 3 = 9 (union 7) and 3 x 2 = 6 (union 5)
    assert generalized_box_iou(a, b) == [[pytest.approx(1 / 7 - 2 / 9), pytest.approx(-1 / 6), 1.0]]
    assert box_iou(np.zeros((0, 4)), b) == []
    assert generalized_box_iou(a, np.zeros((0, 4))) == [[]]
    # boxes without area have no union: NaN, as torch computes 0 / 0 in the official code
    assert math.isnan(generalized_box_iou([[1, 1, 1, 1]], [[5, 2, 5, 2]])[0][0])
    # one box with area: GIoU as usual (IoU 0, enclosing 4 x 3 = 12, union 4)
    assert generalized_box_iou([[0, 0, 2, 2]], [[4, 3, 4, 3]]) == [[pytest.approx(-8 / 12)]]
    with pytest.raises(ValueError, match="a box has 4 numbers"):
        box_iou([[0, 0, 1]], a)
    # One box given flat instead of as a list of one box: a ValueError saying so, not
    # "object of type 'int' has no len()".
    with pytest.raises(ValueError, match=r"expected a list of boxes.*\[\[x1, y1, x2, y2\]\]"):
        box_iou([0, 0, 2, 2], a)


def test_two_boxes_without_area_match_as_in_the_official_loop():
    """gRefCOCO's summarize: topk ranks a NaN GIoU first and NaN < 0.5 is false, so a
    zero-area prediction matches a zero-area ground truth wherever they lie."""
    point, line = [3, 3, 3, 3], [0, 5, 8, 5]
    assert match_boxes([point], [0.9], [line], score_thr=0.7, iou_thr=0.5) == (1, 1)
    # ranked above a real overlap: the NaN pair is taken first, the box pair after it
    assert greedy_matches([[0.9, math.nan], [0.8, 0.1]], 0.5) == 2
    assert greedy_matches([[math.nan, 0.9]], 0.5) == 1
    assert match_boxes([point], [0.9], [[0, 0, 4, 4]], score_thr=0.7, iou_thr=0.5) == (1, 0)


def test_mismatched_scores_are_an_error():
    with pytest.raises(ValueError, match="2 boxes but 1 scores"):
        match_boxes([A, B], [0.9], [A], score_thr=0.7, iou_thr=0.5)
