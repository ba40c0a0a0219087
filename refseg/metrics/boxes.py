"""Pairwise box overlaps. Boxes are (x1, y1, x2, y2) in pixels, continuous coordinates
(area = (x2 - x1) * (y2 - y1), no +1), as in DETR/MDETR's ``box_ops``.

Plain Python floats: a sentence has a handful of boxes, where numpy's per-call overhead
costs five times the arithmetic (`refseg score` scores 10k sentences in seconds).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Box = tuple[float, float, float, float]


def score_order(boxes: Sequence[Box], scores: Sequence[float]) -> list[int]:
    """Indices of ``boxes`` as the official evaluators rank predictions, MDETR's
    ``sorted(zip(scores, boxes), reverse=True)``: descending score, equal scores by the
    box greater in (x1, y1, x2, y2) order, whatever the input order."""
    return sorted(range(len(boxes)), key=lambda k: (scores[k], boxes[k]), reverse=True)


def as_boxes(boxes: Iterable) -> list[Box]:
    """A list of float 4-tuples from an (N, 4) array or a sequence of 4-sequences."""
    if hasattr(boxes, "tolist"):
        boxes = boxes.tolist()  # exact Python floats, not slow numpy scalars
    out = []
    for box in boxes:
        if not hasattr(box, "__len__"):  # one flat (x1, y1, x2, y2), not a list of boxes
            raise ValueError(f"expected a list of boxes, each (x1, y1, x2, y2), got {boxes!r} "
                             "(one box is [[x1, y1, x2, y2]])")
        if len(box) != 4:
            raise ValueError(f"a box has 4 numbers (x1, y1, x2, y2), got {box!r}")
        out.append(tuple(float(v) for v in box))
    return out


def _area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _overlap(a: Box, b: Box) -> tuple[float, float]:
    """(intersection, union) areas."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    inter = width * height if width > 0 and height > 0 else 0.0
    return inter, _area(a) + _area(b) - inter


def box_iou(a: Sequence, b: Sequence) -> list[list[float]]:
    """IoU of every pair: N boxes x M boxes -> N rows of M; 0 where the union is empty."""
    rows = []
    for box_a in as_boxes(a):
        row = []
        for box_b in as_boxes(b):
            inter, union = _overlap(box_a, box_b)
            row.append(inter / union if union > 0 else 0.0)
        rows.append(row)
    return rows


def generalized_box_iou(a: Sequence, b: Sequence) -> list[list[float]]:
    """Generalized IoU (Rezatofighi et al. 2019) of every pair: N x M, values in [-1, 1].

    GIoU = IoU - (|C| - |A u B|) / |C| with C the smallest box enclosing both. Two boxes
    without area have no union: NaN, as the official evaluators' torch code computes it
    (0 / 0), and as `greedy_matches` reads it (a match).
    """
    boxes_b = as_boxes(b)
    rows = []
    for box_a in as_boxes(a):
        row = []
        for box_b in boxes_b:
            inter, union = _overlap(box_a, box_b)
            enclosing = (max(box_a[2], box_b[2]) - min(box_a[0], box_b[0])) * (
                max(box_a[3], box_b[3]) - min(box_a[1], box_b[1])
            )
            if union <= 0:
                row.append(math.nan)
                continue
            row.append(inter / union - (enclosing - union) / enclosing)
        rows.append(row)
    return rows
