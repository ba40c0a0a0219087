"""R-RefCOCO / R-RefCOCO+ / R-RefCOCOg: mIoU, mRR, rIoU, averaged per ref.

As in ``jianzongwu/robust-ref-seg : utils/validation.py``, a ref is all sentences of one
(image, object) pair; positive sentences describe the object, negative ones (``exist``
False) describe nothing in the image.

- ref IoU = mean IoU of its positive sentences; mIoU = mean over refs with positives.
- A negative sentence whose prediction has any foreground pixel is a false positive (FP),
  otherwise a true negative (TN); r = TN / (TN + FP); mRR = mean r over refs with negatives.
- rIoU = mean over refs with positives of I / U, with I and U summed over the ref's
  positive sentences and every false positive's area added to U.

Per-sentence IoU with U == 0 is 0 (the original divides by zero). The original's Pr@X adds
a running sum by mistake; it is not reported.
"""

from __future__ import annotations

import math
from collections import defaultdict

from refseg.metrics.accumulator import Accumulator, mean_percent, sample_iou
from refseg.metrics.rle import overlap


class RRefCOCOAccumulator(Accumulator):
    """Record per sentence: (ref_id, gt_no_target, I, U, |pred|)."""

    def update(self, sent_id: int, ref_id: int, pred_mask, gt_mask, *,
               gt_no_target: bool) -> None:
        """Score one sentence; ``gt_no_target`` marks a negative (``exist`` False) one."""
        scored = overlap(pred_mask, gt_mask)
        self.add(sent_id, ref_id=ref_id, intersection=scored.intersection, union=scored.union,
                 pred_area=scored.pred_area, gt_no_target=gt_no_target)

    def add(self, sent_id: int, *, ref_id: int, intersection: int, union: int, pred_area: int,
            gt_no_target: bool) -> None:
        self._record(sent_id, (int(ref_id), bool(gt_no_target), int(intersection), int(union),
                               int(pred_area)))

    def _per_ref(self) -> dict[int, dict]:
        refs: dict[int, dict] = defaultdict(lambda: {"ious": [], "I": 0, "U": 0, "TN": 0, "FP": 0})
        for ref_id, negative, inter, union, pred_area in self.records():
            ref = refs[ref_id]
            if not negative:
                ref["ious"].append(sample_iou(inter, union))
                ref["I"] += inter
                ref["U"] += union
            elif pred_area > 0:
                ref["FP"] += 1
                ref["U"] += pred_area
            else:
                ref["TN"] += 1
        return refs

    def summary(self) -> dict[str, float | None]:
        refs = self._per_ref()
        ref_ious, ref_r, ref_riou = [], [], []
        for ref_id in sorted(refs):
            ref = refs[ref_id]
            if ref["ious"]:
                ref_ious.append(math.fsum(ref["ious"]) / len(ref["ious"]))
                ref_riou.append(sample_iou(ref["I"], ref["U"]))
            if ref["TN"] + ref["FP"]:
                ref_r.append(ref["TN"] / (ref["TN"] + ref["FP"]))
        return {"mIoU": mean_percent(ref_ious), "mRR": mean_percent(ref_r),
                "rIoU": mean_percent(ref_riou)}

    def counts(self) -> dict[str, int]:
        refs = self._per_ref()
        n_negative = sum(1 for r in self._records.values() if r[1])
        return {
            "sentences": len(self),
            "target": len(self) - n_negative,
            "no_target": n_negative,
            "refs": len(refs),
            "refs_with_negatives": sum(1 for r in refs.values() if r["TN"] + r["FP"]),
        }
