"""Ref-ZOM (DMMI's test.py): IoUs over one/many sentences, Acc over zero ones; by hand."""

from __future__ import annotations

import numpy as np

from refseg.metrics.refzom import RefZomAccumulator


def test_refzom_by_hand():
    acc = RefZomAccumulator()
    acc.add(1, intersection=3, union=4, pred_area=3, gt_no_target=False)  # one: 0.75
    acc.add(2, intersection=2, union=8, pred_area=6, gt_no_target=False)  # many: 0.25
    acc.add(3, intersection=0, union=0, pred_area=0, gt_no_target=True)  # zero, empty: right
    acc.add(4, intersection=0, union=5, pred_area=5, gt_no_target=True)  # zero, 5 px: wrong
    # Zero sentences never enter the IoUs (their 5 pixels are not in oIoU's union).
    assert acc.summary() == {"oIoU": 100.0 * 5 / 12, "mIoU": 50.0, "Acc": 50.0}
    assert acc.counts() == {"sentences": 4, "target": 2, "no_target": 2}


def test_refzom_from_masks():
    acc = RefZomAccumulator()
    gt = np.zeros((2, 3), bool)
    gt[0] = True
    acc.update(1, gt, gt, gt_no_target=False)
    acc.update(2, np.zeros((2, 3), bool), np.zeros((2, 3), bool), gt_no_target=True)
    acc.update(3, gt, np.zeros((2, 3), bool), gt_no_target=True)
    assert acc.summary() == {"oIoU": 100.0, "mIoU": 100.0, "Acc": 50.0}


def test_refzom_undefined_parts_are_none():
    acc = RefZomAccumulator()
    acc.add(1, intersection=0, union=0, pred_area=0, gt_no_target=True)
    assert acc.summary() == {"oIoU": None, "mIoU": None, "Acc": 100.0}
