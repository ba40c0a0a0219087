"""gRefCOCO GRES (ReLA's refer_evaluation.py): every no-target branch, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from refseg.metrics.gres import GRESAccumulator


def row(*pixels: int, width: int = 12) -> np.ndarray:
    """(1, width) mask with the given pixels set."""
    mask = np.zeros((1, width), dtype=bool)
    mask[0, list(pixels)] = True
    return mask


EMPTY = row()
GT4 = row(0, 1, 2, 3)


def test_each_branch_by_hand():
    acc = GRESAccumulator()
    # 1. GT no-target, predicted no-target: gIoU += 1, cIoU untouched.
    acc.update(1, EMPTY, EMPTY, pred_no_target=True, gt_no_target=True)
    # 2. GT no-target, not predicted no-target, 3 pixels: gIoU += 0, U_total += 3.
    acc.update(2, row(5, 6, 7), EMPTY, pred_no_target=False, gt_no_target=True)
    # 3. GT target, predicted no-target with a 2-pixel mask overlapping 1: I := 0, U = 5.
    acc.update(3, row(3, 4), GT4, pred_no_target=True, gt_no_target=False)
    # 4. GT target: I = 3, U = 5, IoU 0.6.
    acc.update(4, row(1, 2, 3, 4), GT4, pred_no_target=False, gt_no_target=False)
    # 5. GT target, exact: I = U = 4.
    acc.update(5, GT4, GT4, pred_no_target=False, gt_no_target=False)
    # 6. GT target of 10 pixels, 8 predicted inside: IoU exactly 0.8 (Pr@0.8 counts it).
    acc.update(6, row(*range(8)), row(*range(10)), pred_no_target=False, gt_no_target=False)

    out = acc.summary()
    assert out["cIoU"] == 100.0 * (0 + 3 + 4 + 8) / (3 + 5 + 5 + 4 + 10)
    assert out["gIoU"] == pytest.approx(100.0 * (1 + 0 + 0 + 0.6 + 1 + 0.8) / 6)
    assert out["N-acc"] == 50.0  # 1 of 2 no-target sentences
    assert out["T-acc"] == 75.0  # 3 of 4 target sentences not predicted no-target
    assert out["Pr@0.7"] == 50.0  # IoUs of target sentences: 0, 0.6, 1, 0.8
    assert out["Pr@0.8"] == 50.0
    assert out["Pr@0.9"] == 25.0
    assert list(out) == ["cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9"]
    assert acc.counts() == {"sentences": 6, "target": 4, "no_target": 2}


def test_no_target_called_right_adds_nothing_to_ciou_whatever_the_mask():
    # ReLA's true-positive branch adds nothing to U_total, even when the mask written next
    # to the no-target flag has pixels; only a missed no-target sentence adds |pred|.
    acc = GRESAccumulator()
    acc.update(1, row(5, 6, 7), EMPTY, pred_no_target=True, gt_no_target=True)
    acc.update(2, row(8, 9), EMPTY, pred_no_target=False, gt_no_target=True)
    acc.update(3, row(1, 2, 3), GT4, pred_no_target=False, gt_no_target=False)
    out = acc.summary()
    assert out["cIoU"] == 100.0 * 3 / (2 + 4)
    assert out["gIoU"] == pytest.approx(100.0 * (1 + 0 + 0.75) / 3)
    assert out["N-acc"] == 50.0


def test_target_with_empty_union_scores_zero_iou():
    acc = GRESAccumulator()
    acc.add(1, intersection=0, union=0, pred_no_target=False, gt_no_target=False)
    acc.add(2, intersection=4, union=4, pred_no_target=False, gt_no_target=False)
    out = acc.summary()
    assert out["gIoU"] == 50.0
    assert out["cIoU"] == 100.0


def test_perfect_and_all_empty_predictions():
    gts = [(1, EMPTY, True), (2, GT4, False), (3, row(9), False)]
    perfect, empty = GRESAccumulator(), GRESAccumulator()
    for sent_id, gt, nt in gts:
        perfect.update(sent_id, gt, gt, pred_no_target=nt, gt_no_target=nt)
        empty.update(sent_id, EMPTY, gt, pred_no_target=True, gt_no_target=nt)
    assert set(perfect.summary().values()) == {100.0}
    assert empty.summary() == {
        "cIoU": 0.0, "gIoU": 100.0 / 3, "N-acc": 100.0, "T-acc": 0.0,
        "Pr@0.7": 0.0, "Pr@0.8": 0.0, "Pr@0.9": 0.0,
    }


def test_undefined_metrics_are_none():
    acc = GRESAccumulator()
    assert set(acc.summary().values()) == {None}
    acc.update(1, EMPTY, EMPTY, pred_no_target=True, gt_no_target=True)
    out = acc.summary()
    assert out["gIoU"] == 100.0 and out["N-acc"] == 100.0
    assert out["cIoU"] is None and out["T-acc"] is None and out["Pr@0.7"] is None


def test_rle_and_array_inputs_agree():
    from refseg.data.masks import mask_to_rle

    a, b = GRESAccumulator(), GRESAccumulator()
    a.update(1, row(1, 2, 3), GT4, pred_no_target=False, gt_no_target=False)
    b.update(1, mask_to_rle(row(1, 2, 3)), mask_to_rle(GT4), pred_no_target=False,
             gt_no_target=False)
    assert a.state_dict() == b.state_dict()
    assert a.summary()["gIoU"] == 100.0 * 3 / 4
