"""RefCOCO-family RES (LAVT's test.py) and REC (top-scoring box, IoU >= 0.5); by hand."""

from __future__ import annotations

import pytest

from refseg.metrics.res import RECAccumulator, RESAccumulator, top_box_iou


def test_res_by_hand():
    acc = RESAccumulator()
    acc.add(1, intersection=3, union=4)  # 0.75
    acc.add(2, intersection=0, union=5)  # 0
    acc.add(3, intersection=0, union=0)  # U == 0: IoU 0
    acc.add(4, intersection=5, union=5)  # 1
    assert acc.summary() == {
        "mIoU": 100.0 * 1.75 / 4,
        "oIoU": 100.0 * 8 / 14,
        "Pr@0.5": 50.0, "Pr@0.6": 50.0, "Pr@0.7": 50.0, "Pr@0.8": 25.0, "Pr@0.9": 25.0,
    }
    assert acc.counts() == {"sentences": 4}


def test_res_threshold_is_inclusive():
    acc = RESAccumulator()
    acc.add(1, intersection=1, union=2)
    assert acc.summary()["Pr@0.5"] == 100.0
    assert acc.summary()["Pr@0.6"] == 0.0


A = [0.0, 0.0, 10.0, 10.0]


def test_rec_uses_the_top_scoring_box_only():
    # The lower-scoring box matches, the top one does not: a miss.
    assert top_box_iou([A, [20, 20, 30, 30]], [0.3, 0.9], [A]) == 0.0
    assert top_box_iou([A, [20, 20, 30, 30]], [0.9, 0.3], [A]) == 1.0
    assert top_box_iou([], [], [A]) == 0.0


def test_rec_equal_scores_take_the_larger_box_as_the_official_sort():
    # The official evaluators sort (score, box) pairs in reverse and take the first: of
    # two boxes with the top score, the one greater in (x1, y1, x2, y2) order, whatever
    # the input order. [5, 5, 15, 15] overlaps A by 25 / 175.
    far = [5.0, 5.0, 15.0, 15.0]
    for boxes in ([A, far], [far, A]):
        assert top_box_iou(boxes, [0.9, 0.9], [A]) == pytest.approx(25 / 175)
    assert top_box_iou([far, A], [0.9, 0.95], [A]) == 1.0


def test_rec_by_hand():
    acc = RECAccumulator()
    acc.update(1, [A], [0.2], [A])  # IoU 1 (a low score does not matter)
    acc.update(2, [[0, 0, 10, 5]], [0.9], [A])  # IoU exactly 0.5: a hit
    acc.update(3, [[0, 0, 10, 4.9]], [0.9], [A])  # IoU 0.49: a miss
    acc.update(4, [], [], [A])  # nothing predicted
    assert acc.records() == [(1.0,), (0.5,), (pytest.approx(0.49),), (0.0,)]
    assert acc.summary() == {"Pr@0.5": 50.0}
