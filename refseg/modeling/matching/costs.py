"""Pairwise matching costs between Q predictions and G targets, each (Q, G).

Every function handles G = 0 (no target) by returning a (Q, 0) matrix. Costs carry no
gradient (matching is a discrete choice); callers run them under `torch.no_grad()` or
the matcher detaches.

Legend: Q predictions (queries), G ground-truth targets, P sampled points, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from refseg.modeling.losses.boxes import generalized_box_iou
from refseg.modeling.losses.points import point_sample


def batch_sigmoid_ce_cost(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of every prediction against every target.

    Args:
        pred_logits: (Q, P) logits.
        targets: (G, P) values in [0, 1].

    Returns:
        (Q, G) cost, cost[q, g] = mean_p BCE(pred_logits[q, p], targets[g, p]).
    """
    num_points = pred_logits.shape[1]
    targets = targets.to(pred_logits.dtype)
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): two matrix products.
    pos = F.softplus(-pred_logits)
    neg = F.softplus(pred_logits)
    return (pos @ targets.T + neg @ (1 - targets).T) / num_points


def batch_dice_cost(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction against every target.

    Args:
        pred_logits: (Q, P) logits.
        targets: (G, P) values in [0, 1].

    Returns:
        (Q, G) cost, 1 - (2 |p t| + 1) / (|p| + |t| + 1) with p = sigmoid(logits).
    """
    probs = pred_logits.sigmoid()
    targets = targets.to(probs.dtype)
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def mask_costs(pred_mask_logits: torch.Tensor, gt_masks: torch.Tensor,
               num_points: int = 12544) -> dict[str, torch.Tensor]:
    """Mask2Former's mask matching costs on points shared by all predictions and targets.

    The same uniformly random points are read from every prediction and every target, so
    the two may have different resolutions.

    Args:
        pred_mask_logits: (Q, H, W) mask logits of one image.
        gt_masks: (G, h, w) its ground-truth masks in {0, 1}.
        num_points: P random points.

    Returns:
        {"mask": (Q, G) sigmoid BCE cost, "dice": (Q, G) dice cost}.
    """
    with torch.no_grad():
        pred = pred_mask_logits.detach().float()
        coords = torch.rand(1, num_points, 2, device=pred.device)
        pred_points = point_sample(pred[:, None], coords.expand(pred.shape[0], -1, -1))[:, 0]
        gt = gt_masks.to(pred.device, torch.float32)
        gt_points = point_sample(gt[:, None], coords.expand(gt.shape[0], -1, -1))[:, 0]
        return {"mask": batch_sigmoid_ce_cost(pred_points, gt_points),
                "dice": batch_dice_cost(pred_points, gt_points)}


def pairwise_l1_cost(pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """L1 distance of every pair: (Q, D) x (G, D) -> (Q, G) (boxes, or points vs centres)."""
    return (pred[:, None, :] - targets[None, :, :].to(pred.dtype)).abs().sum(-1)


def giou_cost(pred_xyxy: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
    """Negative generalized IoU of every pair: (Q, 4) x (G, 4) xyxy -> (Q, G)."""
    return -generalized_box_iou(pred_xyxy, target_xyxy.to(pred_xyxy.dtype))


def class_prob_cost(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mask2Former's class cost: minus the softmax probability of each target's class.

    Args:
        class_logits: (Q, K) logits (K includes the no-object class).
        labels: (G,) target class indices.

    Returns:
        (Q, G) cost.
    """
    return -class_logits.softmax(-1)[:, labels]


def positive_bce_cost(logits: torch.Tensor, num_targets: int) -> torch.Tensor:
    """Cost of calling each query a referent: BCE(sigmoid(logit), 1) = softplus(-logit).

    Args:
        logits: (Q,) referent (relevance) logits.
        num_targets: G.

    Returns:
        (Q, G) cost, equal across targets.
    """
    return F.softplus(-logits)[:, None].expand(-1, num_targets)
