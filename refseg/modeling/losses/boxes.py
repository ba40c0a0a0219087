"""Differentiable box utilities and box losses (DETR's box_ops, in torch for training).

Boxes are (x1, y1, x2, y2) or (cx, cy, w, h), any consistent unit (refseg: normalised
to [0, 1]); area = (x2 - x1) * (y2 - y1). Degenerate boxes never give NaN: IoU is 0 where
the union is empty and the GIoU penalty is 0 where the enclosing box is empty (the same
conventions as the numpy metrics in `refseg.metrics.boxes`).

Legend: N, M boxes.
"""

from __future__ import annotations

import torch

_TINY = 1e-12  # guards divisions whose numerator is then 0 too


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre-size -> (..., 4) corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), -1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) corners -> (..., 4) centre-size."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), -1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...) area (0 for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _iou_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and union of broadcast pairs of xyxy boxes (..., 4) x (..., 4) -> (...)."""
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    return inter / union.clamp(min=_TINY), union


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    iou, union = _iou_union(a, b)
    wh = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing.clamp(min=_TINY)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: (N, 4) x (M, 4) xyxy -> (N, M)."""
    return _iou_union(a[:, None], b[None])[0]


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalized IoU (Rezatofighi et al. 2019) of every pair: (N, 4) x (M, 4) -> (N, M).

    GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest box enclosing both; in [-1, 1].
    """
    return _giou(a[:, None], b[None])


def paired_generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GIoU of matched pairs: (N, 4) x (N, 4) xyxy -> (N,)."""
    return _giou(a, b)


def box_l1_loss(pred: torch.Tensor, target: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """DETR's box L1 loss: sum over matched pairs and coordinates / num_boxes.

    Args:
        pred, target: (N, 4) matched boxes in the same format (cxcywh in DETR).
        num_boxes: normaliser (number of targets in the batch, at least 1).
    """
    return (pred - target).abs().sum() / num_boxes


def giou_loss(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor, num_boxes: float) -> torch.Tensor:
    """DETR's GIoU loss: sum of (1 - GIoU) over matched pairs / num_boxes. (N, 4) xyxy each."""
    return (1 - paired_generalized_box_iou(pred_xyxy, target_xyxy)).sum() / num_boxes
