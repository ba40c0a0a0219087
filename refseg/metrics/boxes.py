"""Pairwise box overlaps in numpy. Boxes are (x1, y1, x2, y2) in pixels, continuous
coordinates (area = (x2 - x1) * (y2 - y1), no +1), as in DETR/MDETR's box_ops."""

from __future__ import annotations

import numpy as np


def _as_boxes(boxes) -> np.ndarray:
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)


def _iou_and_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clip(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return iou, union


def box_iou(a, b) -> np.ndarray:
    """IoU of every pair: (N, 4) x (M, 4) -> (N, M); 0 where both boxes have no area."""
    return _iou_and_union(_as_boxes(a), _as_boxes(b))[0]


def generalized_box_iou(a, b) -> np.ndarray:
    """Generalized IoU (Rezatofighi et al. 2019) of every pair: (N, 4) x (M, 4) -> (N, M).

    GIoU = IoU - (|C| - |A u B|) / |C| with C the smallest box enclosing both; in [-1, 1].
    Where C has no area (both boxes degenerate to one point or line) GIoU = IoU.
    """
    a, b = _as_boxes(a), _as_boxes(b)
    iou, union = _iou_and_union(a, b)
    top_left = np.minimum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clip(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    penalty = np.divide(enclosing - union, enclosing, out=np.zeros_like(iou), where=enclosing > 0)
    return iou - penalty
