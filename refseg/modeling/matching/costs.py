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
        pred_logits: (..., Q, P) logits (leading dims: a batch of images).
        targets: (..., G, P) values in [0, 1].

    Returns:
        (..., Q, G) cost, cost[q, g] = mean_p BCE(pred_logits[q, p], targets[g, p]).
    """
    num_points = pred_logits.shape[-1]
    targets = targets.to(pred_logits.dtype).transpose(-1, -2)
    # BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x): two matrix products.
    pos = F.softplus(-pred_logits)
    neg = F.softplus(pred_logits)
    return (pos @ targets + neg @ (1 - targets)) / num_points


def batch_dice_cost(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (+1 smoothing) of every prediction against every target.

    Args:
        pred_logits: (..., Q, P) logits (leading dims: a batch of images).
        targets: (..., G, P) values in [0, 1].

    Returns:
        (..., Q, G) cost, 1 - (2 |p t| + 1) / (|p| + |t| + 1) with p = sigmoid(logits).
    """
    probs = pred_logits.sigmoid()
    targets = targets.to(probs.dtype)
    numerator = 2 * probs @ targets.transpose(-1, -2)
    denominator = probs.sum(-1)[..., :, None] + targets.sum(-1)[..., None, :]
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
    return batch_mask_costs(pred_mask_logits[None], [gt_masks], num_points)[0]


def batch_mask_costs(pred_mask_logits: torch.Tensor, gt_masks: list[torch.Tensor],
                     num_points: int = 12544) -> list[dict[str, torch.Tensor]]:
    """`mask_costs` of every image of a batch at once (one point read and
    batched products); each image draws its own P random points.

    Args:
        pred_mask_logits: (B, Q, H, W) mask logits.
        gt_masks: B tensors (G_b, h, w) in {0, 1}; G_b may be 0 and differ per image.
        num_points: P random points per image.

    Returns:
        B dicts {"mask": (Q, G_b), "dice": (Q, G_b)}.
    """
    with torch.no_grad():
        pred = pred_mask_logits.detach().float()
        B, Q = pred.shape[:2]
        coords = torch.rand(B, num_points, 2, device=pred.device)
        pred_points = point_sample(pred, coords)  # (B, Q, P)
        gt_points = _padded_gt_points(gt_masks, coords)  # (B, G_max, P)
        ce = batch_sigmoid_ce_cost(pred_points, gt_points)  # (B, Q, G_max)
        dice = batch_dice_cost(pred_points, gt_points)
        return [{"mask": ce[b, :, :g.shape[0]], "dice": dice[b, :, :g.shape[0]]}
                for b, g in enumerate(gt_masks)]


def _padded_gt_points(gt_masks: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Read each image's targets at its points: B x (G_b, h, w), (B, P, 2) -> (B, G_max, P),
    zero rows past G_b."""
    B, P = coords.shape[:2]
    num_gt = max((g.shape[0] for g in gt_masks), default=0)
    sizes = {tuple(g.shape[-2:]) for g in gt_masks if g.shape[0]}
    if len(sizes) == 1:  # one read for the whole batch
        stacked = coords.new_zeros((B, num_gt, *sizes.pop()))
        for b, g in enumerate(gt_masks):
            stacked[b, :g.shape[0]] = g
        return point_sample(stacked, coords)
    out = coords.new_zeros((B, num_gt, P))
    for b, g in enumerate(gt_masks):
        if g.shape[0]:
            out[b, :g.shape[0]] = point_sample(g.to(coords)[None], coords[b:b + 1])[0]
    return out


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
