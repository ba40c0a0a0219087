"""R-RefCOCO (robust-ref-seg's validation.py): mIoU, mRR, rIoU averaged per ref; by hand."""

from __future__ import annotations

import pytest

from refseg.metrics.rrefcoco import RRefCOCOAccumulator


def _add(acc, sent_id, ref_id, inter, union, pred_area, negative):
    acc.add(sent_id, ref_id=ref_id, intersection=inter, union=union, pred_area=pred_area,
            gt_no_target=negative)


def test_per_ref_averaging_by_hand():
    acc = RRefCOCOAccumulator()
    # ref 10: positives IoU 1 (4/4) and 0.5 (2/4); negatives: one empty (TN), one with 3
    # foreground pixels (FP, its area joins the ref's U).
    _add(acc, 1, 10, 4, 4, 4, False)
    _add(acc, 2, 10, 2, 4, 3, False)
    _add(acc, 3, 10, 0, 0, 0, True)
    _add(acc, 4, 10, 0, 3, 3, True)
    # ref 20: one positive, IoU 0; no negatives (no r).
    _add(acc, 5, 20, 0, 5, 1, False)
    # ref 30: one positive 3/4, one true negative.
    _add(acc, 6, 30, 3, 4, 3, False)
    _add(acc, 7, 30, 0, 0, 0, True)
    out = acc.summary()
    assert out["mIoU"] == pytest.approx(100.0 * (0.75 + 0.0 + 0.75) / 3)  # not 56.25 per sentence
    assert out["mRR"] == pytest.approx(100.0 * (0.5 + 1.0) / 2)
    assert out["rIoU"] == pytest.approx(100.0 * (6 / 11 + 0.0 + 3 / 4) / 3)
    assert acc.counts() == {"sentences": 7, "target": 4, "no_target": 3, "refs": 3,
                            "refs_with_negatives": 2}


def test_ref_of_negatives_only_counts_for_mrr_only():
    acc = RRefCOCOAccumulator()
    _add(acc, 1, 10, 1, 1, 1, False)
    _add(acc, 2, 20, 0, 2, 2, True)  # a ref with only a false positive
    assert acc.summary() == {"mIoU": 100.0, "mRR": 0.0, "rIoU": 100.0}


def test_no_negatives_gives_no_mrr():
    acc = RRefCOCOAccumulator()
    _add(acc, 1, 10, 1, 2, 1, False)
    assert acc.summary() == {"mIoU": 50.0, "mRR": None, "rIoU": 50.0}
