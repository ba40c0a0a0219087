"""gRefCOCO GREC: Pr@(F1=1, IoU>=0.5), N-acc, T-acc.

Semantics of ``henghuiding/gRefCOCO : mdetr/datasets/refexp.py : summarize``: keep the
predicted boxes with score >= 0.7 (no NMS), match them greedily to the ground-truth boxes
by generalized IoU, and count a sentence correct iff its F1 is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from refseg.metrics.accumulator import Accumulator, percent
from refseg.metrics.boxes import as_boxes, generalized_box_iou, score_order


def greedy_matches(giou: Sequence[Sequence[float]], iou_thr: float) -> int:
    """True positives of the greedy matching (gRefCOCO ``summarize``).

    Up to min(K, G) times: take the global maximum of the K x G GIoU matrix; stop when it
    is below ``iou_thr``; otherwise count a match and retire its row and column.
    Ties go to the first maximum in row-major order (rows as `match_boxes` sorts them). A
    NaN (two boxes without area) ranks above every number and is not below the threshold,
    as in the official ``torch.topk`` loop: a match.
    """
    rows = [[math.inf if math.isnan(v) else v for v in r] for r in giou]
    free_rows = list(range(len(rows)))
    free_cols = list(range(len(rows[0]) if rows else 0))
    matches = 0
    while free_rows and free_cols:
        best, best_row, best_col = max(
            (rows[r][c], -r, -c) for r in free_rows for c in free_cols
        )
        if best < iou_thr:
            break
        matches += 1
        free_rows.remove(-best_row)
        free_cols.remove(-best_col)
    return matches


def match_boxes(pred_boxes, pred_scores, gt_boxes, *, score_thr: float,
                iou_thr: float) -> tuple[int, int]:
    """Keep predictions with score >= ``score_thr``, match them to the ground truth.

    Args:
        pred_boxes: K xyxy predicted boxes ((K, 4) array or sequence; K may be 0).
        pred_scores: their K scores.
        gt_boxes: G xyxy ground-truth boxes (G = 0 for no-target).

    Returns:
        (kept, true_positives).
    """
    boxes = as_boxes(pred_boxes)
    scores = [float(s) for s in (pred_scores.tolist() if hasattr(pred_scores, "tolist")
                                 else pred_scores)]
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    order = score_order(boxes, scores)  # as summarize sorts them; row order settles GIoU ties
    kept = [boxes[k] for k in order if scores[k] >= score_thr]
    gt = as_boxes(gt_boxes)
    if not kept or not gt:
        return len(kept), 0
    return len(kept), greedy_matches(generalized_box_iou(kept, gt), iou_thr)


class GRECAccumulator(Accumulator):
    """Generalized REC on gRefCOCO.

    Record per sentence: (gt_no_target, kept, true_positives, gt_count).

    Args:
        score_thr: predicted boxes with score >= this are kept (DeRIS uses >; we keep >=).
        iou_thr: generalized IoU a match needs.
    """

    def __init__(self, *, score_thr: float = 0.7, iou_thr: float = 0.5) -> None:
        super().__init__()
        self.score_thr = float(score_thr)
        self.iou_thr = float(iou_thr)

    def params(self) -> dict[str, Any]:
        return {"score_thr": self.score_thr, "iou_thr": self.iou_thr}

    def update(self, sent_id: int, pred_boxes, pred_scores, gt_boxes, *,
               gt_no_target: bool) -> None:
        """Score one sentence from K predicted boxes, K scores and G ground-truth boxes
        (arrays (K, 4), (K,), (G, 4) or sequences)."""
        gt = [] if gt_no_target else as_boxes(gt_boxes)
        kept, tp = match_boxes(pred_boxes, pred_scores, gt, score_thr=self.score_thr,
                               iou_thr=self.iou_thr)
        self.add(sent_id, kept=kept, true_positives=tp, gt_count=len(gt),
                 gt_no_target=gt_no_target)

    def add(self, sent_id: int, *, kept: int, true_positives: int, gt_count: int,
            gt_no_target: bool) -> None:
        """Score one sentence from its matching counts."""
        self._record(sent_id, (bool(gt_no_target), int(kept), int(true_positives),
                               int(gt_count)))

    def summary(self) -> dict[str, float | None]:
        correct = n_target = n_no_target = target_found = no_target_found = 0
        for gt_nt, kept, tp, gt_count in self.records():
            if gt_nt:
                n_no_target += 1
                no_target_found += kept == 0
                correct += kept == 0  # F1 = 1 iff no box is kept
            else:
                n_target += 1
                target_found += kept >= 1
                # F1 = 2TP / (2TP + FP + FN) = 1  <=>  FP = FN = 0.
                correct += tp == kept == gt_count
        return {
            "F1score": percent(correct, n_target + n_no_target),
            "N-acc": percent(no_target_found, n_no_target),
            "T-acc": percent(target_found, n_target),
        }

    def counts(self) -> dict[str, int]:
        n_no_target = sum(1 for r in self._records.values() if r[0])
        return {"sentences": len(self), "target": len(self) - n_no_target,
                "no_target": n_no_target}
