"""Binary mask losses on logits (Mask2Former / DETR conventions).

Each takes N predictions and N targets of any shape (flattened per mask to P values) and
returns the per-mask loss summed over masks and divided by `num_masks` — the number of
targets in the batch (`num_masks_over_ranks`: averaged over the processes of a
distributed run), so that batches with many referents do not dominate.

Legend: N masks, P pixels or points per mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from refseg.engine.distributed import mean_over_ranks


def num_masks_over_ranks(targets: Sequence, device: torch.device) -> float:
    """Mask2Former's normaliser of the mask losses: the batch's number of target masks,
    averaged over the processes of a distributed run (one all-reduce), at least 1.

    Every process then divides by the same number, so each target mask weighs the same
    whichever process holds it; with its own count, a mask on a process with few targets
    would outweigh one on a busy process. Call it on every rank, as the loss is.

    Args:
        targets: the batch's targets, each with ``masks`` (G, H, W) (`Targets`).
    """
    count = float(sum(t.masks.shape[0] for t in targets))
    if dist.is_available() and dist.is_initialized():
        count = float(mean_over_ranks(torch.tensor([count], device=device)))
    return max(count, 1.0)


def sigmoid_ce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy, averaged over the P values of a mask.

    Args:
        logits: (N, ...) logits.
        targets: (N, ...) targets in [0, 1].
        num_masks: normaliser.

    Returns:
        Scalar sum_n mean_p BCE(logits, targets) / num_masks.
    """
    loss = F.binary_cross_entropy_with_logits(logits.flatten(1), targets.flatten(1).to(logits.dtype),
                                              reduction="none")
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Dice loss with +1 smoothing: 1 - (2 |p t| + 1) / (|p| + |t| + 1), p = sigmoid(logits).

    Args, returns: as `sigmoid_ce_loss`.
    """
    probs = logits.flatten(1).sigmoid()
    targets = targets.flatten(1).to(probs.dtype)
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float,
                       alpha: float | None = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): BCE * (1 - p_t)^gamma, weighted alpha / (1 - alpha).

    Args:
        logits: (N, ...) logits.
        targets: (N, ...) targets in [0, 1].
        num_masks: normaliser.
        alpha: weight of positives (negatives get 1 - alpha); None for no weighting.
        gamma: focusing exponent (0 gives alpha-weighted BCE).

    Returns:
        Scalar sum_n mean_p focal / num_masks.
    """
    logits, targets = logits.flatten(1), targets.flatten(1).to(logits.dtype)
    probs = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma != 0 else ce
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks
