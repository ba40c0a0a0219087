"""gRefCOCO GRES metrics: cIoU, gIoU, N-acc, T-acc, Pr@0.7/0.8/0.9.

Semantics of ReLA's ``gres_model/evaluation/refer_evaluation.py``, per sentence with
``pred_nt`` the predicted no-target flag:

- GT no-target, pred_nt: gIoU += 1; nothing added to cIoU.
- GT no-target, not pred_nt: gIoU += 0; U_total += |pred|.
- GT target, pred_nt: I := 0; gIoU += 0; U_total += U (the mask as given).
- GT target, not pred_nt: gIoU += I / U (0 when U == 0); I_total += I; U_total += U.
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
from refseg.metrics.rle import overlap


class GRESAccumulator(Accumulator):
    """Generalized RES on gRefCOCO.

    Record per sentence: (I, U, gt_no_target, pred_no_target).

    Args:
        pr_thresholds: IoU thresholds of Pr@X over target sentences (IoU >= X).
    """

    def __init__(self, *, pr_thresholds: tuple[float, ...] = (0.7, 0.8, 0.9)) -> None:
        super().__init__()
        self.pr_thresholds = tuple(float(t) for t in pr_thresholds)

    def params(self) -> dict[str, Any]:
        return {"pr_thresholds": self.pr_thresholds}

    def update(self, sent_id: int, pred_mask, gt_mask, *, pred_no_target: bool,
               gt_no_target: bool) -> None:
        """Score one sentence from masks (RLE dicts or (H, W) arrays of one size)."""
        scored = overlap(pred_mask, gt_mask)
        self.add(sent_id, intersection=scored.intersection, union=scored.union,
                 pred_no_target=pred_no_target, gt_no_target=gt_no_target)

    def add(self, sent_id: int, *, intersection: int, union: int, pred_no_target: bool,
            gt_no_target: bool) -> None:
        """Score one sentence from pixel counts I = |pred AND gt|, U = |pred OR gt|."""
        self._record(sent_id, (int(intersection), int(union), bool(gt_no_target),
                               bool(pred_no_target)))

    def summary(self) -> dict[str, float | None]:
        total_i = total_u = 0
        n_target = n_no_target = target_kept = no_target_found = 0
        per_sample: list[float] = []
        hits = [0] * len(self.pr_thresholds)
        for inter, union, gt_nt, pred_nt in self.records():
            if gt_nt:
                n_no_target += 1
                if pred_nt:
                    no_target_found += 1
                    per_sample.append(1.0)
                else:
                    total_u += union  # = |pred|: the ground truth is empty
                    per_sample.append(0.0)
                continue
            n_target += 1
            if pred_nt:
                inter = 0
            else:
                target_kept += 1
            iou = sample_iou(inter, union)
            per_sample.append(iou)
            total_i += inter
            total_u += union
            for k, threshold in enumerate(self.pr_thresholds):
                hits[k] += iou >= threshold
        out = {
            "cIoU": percent(total_i, total_u),
            "gIoU": mean_percent(per_sample),
            "N-acc": percent(no_target_found, n_no_target),
            "T-acc": percent(target_kept, n_target),
        }
        for threshold, hit in zip(self.pr_thresholds, hits):
            out[threshold_key(threshold)] = percent(hit, n_target)
        return out

    def counts(self) -> dict[str, int]:
        n_no_target = sum(1 for r in self._records.values() if r[2])
        return {"sentences": len(self), "target": len(self) - n_no_target,
                "no_target": n_no_target}
