"""RefCOCO / RefCOCO+ / RefCOCOg: RES (mIoU, oIoU, Pr@0.5..0.9) and REC (Pr@0.5).

RES as in ``yz93/LAVT-RIS : test.py``: per-sentence IoU (0 when U == 0), mIoU their mean,
oIoU = I_total / U_total, Pr@X the share of sentences with IoU >= X.
REC: the top-scoring predicted box against the ground-truth box, Pr@0.5 the share with
box IoU >= 0.5.
"""

from __future__ import annotations

from typing import Any

from refseg.metrics.accumulator import (
    Accumulator,
    mean_percent,
    percent,
    sample_iou,
    threshold_key,
)
from refseg.metrics.boxes import as_boxes, box_iou, score_order
from refseg.metrics.rle import overlap

RES_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def mask_iou_summary(pairs: list[tuple[int, int]],
                     thresholds: tuple[float, ...]) -> dict[str, float | None]:
    """mIoU, oIoU and Pr@X of (I, U) pairs (LAVT's definitions)."""
    ious = [sample_iou(i, u) for i, u in pairs]
    out = {
        "mIoU": mean_percent(ious),
        "oIoU": percent(sum(i for i, _ in pairs), sum(u for _, u in pairs)),
    }
    for threshold in thresholds:
        out[threshold_key(threshold)] = percent(sum(iou >= threshold for iou in ious), len(ious))
    return out


class RESAccumulator(Accumulator):
    """Classic RES. Record per sentence: (I, U).

    Args:
        pr_thresholds: IoU thresholds of Pr@X (IoU >= X).
    """

    def __init__(self, *, pr_thresholds: tuple[float, ...] = RES_THRESHOLDS) -> None:
        super().__init__()
        self.pr_thresholds = tuple(float(t) for t in pr_thresholds)

    def params(self) -> dict[str, Any]:
        return {"pr_thresholds": self.pr_thresholds}

    def update(self, sent_id: int, pred_mask, gt_mask) -> None:
        """Score one sentence from masks (RLE dicts or (H, W) arrays of one size)."""
        scored = overlap(pred_mask, gt_mask)
        self.add(sent_id, intersection=scored.intersection, union=scored.union)

    def add(self, sent_id: int, *, intersection: int, union: int) -> None:
        self._record(sent_id, (int(intersection), int(union)))

    def summary(self) -> dict[str, float | None]:
        return mask_iou_summary(self.records(), self.pr_thresholds)

    def counts(self) -> dict[str, int]:
        return {"sentences": len(self)}


def top_box_iou(pred_boxes, pred_scores, gt_boxes) -> float:
    """Box IoU of the top-scoring prediction with the ground truth (0 without boxes).

    Equal top scores go to the box greater in (x1, y1, x2, y2) order, the first of the
    official evaluators' ranking (`score_order`). With several
    ground-truth boxes (never in RefCOCO) the best-overlapping one counts.
    """
    boxes = as_boxes(pred_boxes)
    scores = list(pred_scores.tolist() if hasattr(pred_scores, "tolist") else pred_scores)
    gt = as_boxes(gt_boxes)
    if not boxes or not gt:
        return 0.0
    top = score_order(boxes, scores)[0]
    return max(box_iou([boxes[top]], gt)[0])


class RECAccumulator(Accumulator):
    """Classic REC. Record per sentence: (box IoU of the top-scoring box,).

    Args:
        iou_thr: box IoU a hit needs (IoU >= thr).
    """

    def __init__(self, *, iou_thr: float = 0.5) -> None:
        super().__init__()
        self.iou_thr = float(iou_thr)

    def params(self) -> dict[str, Any]:
        return {"iou_thr": self.iou_thr}

    def update(self, sent_id: int, pred_boxes, pred_scores, gt_boxes) -> None:
        """Score one sentence from (K, 4) predicted boxes, (K,) scores, (G, 4) GT boxes."""
        self.add(sent_id, iou=top_box_iou(pred_boxes, pred_scores, gt_boxes))

    def add(self, sent_id: int, *, iou: float) -> None:
        self._record(sent_id, (float(iou),))

    def summary(self) -> dict[str, float | None]:
        ious = [r[0] for r in self.records()]
        hits = sum(iou >= self.iou_thr for iou in ious)
        return {threshold_key(self.iou_thr): percent(hits, len(ious))}

    def counts(self) -> dict[str, int]:
        return {"sentences": len(self)}
