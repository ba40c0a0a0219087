"""Ref-ZOM: oIoU and mIoU over one/many sentences, Acc over zero sentences.

As in ``toggle1995/RIS-DMMI : test.py``: a zero sentence is correct iff the predicted mask
has no foreground pixel; one/many sentences are scored like RES.
"""

from __future__ import annotations

from refseg.metrics.accumulator import Accumulator, percent
from refseg.metrics.res import mask_iou_summary
from refseg.metrics.rle import overlap


class RefZomAccumulator(Accumulator):
    """Record per sentence: (gt_no_target, I, U, |pred|)."""

    def update(self, sent_id: int, pred_mask, gt_mask, *, gt_no_target: bool) -> None:
        """Score one sentence from masks; ``gt_no_target`` marks a 'zero' sentence."""
        scored = overlap(pred_mask, gt_mask)
        self.add(sent_id, intersection=scored.intersection, union=scored.union,
                 pred_area=scored.pred_area, gt_no_target=gt_no_target)

    def add(self, sent_id: int, *, intersection: int, union: int, pred_area: int,
            gt_no_target: bool) -> None:
        self._record(sent_id, (bool(gt_no_target), int(intersection), int(union),
                               int(pred_area)))

    def summary(self) -> dict[str, float | None]:
        records = self.records()
        ious = mask_iou_summary([(i, u) for zero, i, u, _ in records if not zero], ())
        zero_areas = [area for zero, _, _, area in records if zero]
        return {
            "oIoU": ious["oIoU"],
            "mIoU": ious["mIoU"],
            "Acc": percent(sum(area == 0 for area in zero_areas), len(zero_areas)),
        }

    def counts(self) -> dict[str, int]:
        n_zero = sum(1 for r in self._records.values() if r[0])
        return {"sentences": len(self), "target": len(self) - n_zero, "no_target": n_zero}
