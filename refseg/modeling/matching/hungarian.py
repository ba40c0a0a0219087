"""Optimal one-to-one assignment of predictions to targets (Hungarian / Kuhn-Munkres),
on a weighted sum of named cost terms each method chooses (DETR, Mask2Former, InstAlign
Eq. 10, InstanceVG's point-guided cost) — one matcher, no per-method copies.

Legend: Q predictions (queries), G targets, K = min(Q, G) matched pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from scipy.optimize import linear_sum_assignment


class Assignment(NamedTuple):
    """Matched pairs of one image: query_idx[k] is matched to target_idx[k].

    Attributes:
        query_idx: (K,) long, ascending.
        target_idx: (K,) long.
    """

    query_idx: torch.Tensor
    target_idx: torch.Tensor


def matched_indices(assignments: Sequence[Assignment]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every matched query of a batch as (batch index, query index) pairs, image by image
    (Mask2Former's ``_get_src_permutation_idx``).

    Args:
        assignments: one per image, on one device; at least one.

    Returns:
        batch_idx, query_idx: (N,) long each, N the matched pairs of the batch; with
        ``batch_idx`` first, they index a (B, Q, ...) prediction.
    """
    batch_idx = torch.cat([torch.full_like(a.query_idx, b) for b, a in enumerate(assignments)])
    return batch_idx, torch.cat([a.query_idx for a in assignments])


def matched_masks(mask_logits: torch.Tensor, gt_masks: Sequence[torch.Tensor],
                  assignments: Sequence[Assignment]) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched queries' masks beside their targets', pair by pair, for the mask losses.

    Args:
        mask_logits: (B, Q, H, W) predicted mask logits.
        gt_masks: B tensors (G_b, h, w) of {0, 1} target masks.
        assignments: B, one per image.

    Returns:
        pred (N, H, W) and gt (N, h, w) in pred's dtype, N the matched pairs.
    """
    batch_idx, query_idx = matched_indices(assignments)
    pred = mask_logits[batch_idx, query_idx]
    gt = [masks[a.target_idx] for masks, a in zip(gt_masks, assignments)]
    return pred, (torch.cat(gt) if gt else pred.new_zeros((0, 1, 1))).to(pred.dtype)


def linear_assignment(cost: torch.Tensor) -> Assignment:
    """Minimum-cost one-to-one matching of the rows and columns of `cost`.

    Args:
        cost: (Q, G) finite costs; Q < G, Q > G and G = 0 are all allowed.

    Returns:
        Assignment with K = min(Q, G) pairs (empty when G = 0 or Q = 0), on cost's device.
    """
    if cost.dim() != 2:
        raise ValueError(f"linear_assignment: cost must be (Q, G), got {tuple(cost.shape)}")
    if cost.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=cost.device)
        return Assignment(empty, empty.clone())
    rows, cols = linear_sum_assignment(cost.detach().to("cpu", torch.float64).numpy())
    return Assignment(torch.as_tensor(rows, dtype=torch.long, device=cost.device),
                      torch.as_tensor(cols, dtype=torch.long, device=cost.device))


class NonFiniteCost(ValueError):
    """A cost matrix holds NaN or inf: the predictions have diverged (the trainer reports
    it as a non-finite loss, with the iteration and the batch)."""


class HungarianMatcher:
    """Matches per image on C = sum_name weight[name] * cost[name].

    Args:
        weights: {term name: weight}, e.g. Mask2Former {"class": 2, "mask": 5, "dice": 5};
            InstAlign adds "poa", InstanceVG uses {"class", "bbox", "giou", "point"}.
            A term with weight 0 may be left out of the costs.
    """

    def __init__(self, weights: Mapping[str, float]):
        if not weights:
            raise ValueError("HungarianMatcher: no cost terms given")
        self.weights = dict(weights)

    def total_cost(self, costs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the named (Q, G) cost matrices of one image -> (Q, G)."""
        unknown = set(costs) - set(self.weights)
        missing = {n for n, w in self.weights.items() if w != 0} - set(costs)
        if unknown or missing:
            raise ValueError(f"HungarianMatcher: cost terms {sorted(costs)} do not fit weights "
                             f"{self.weights} (unknown {sorted(unknown)}, missing {sorted(missing)})")
        total = None
        for name, matrix in costs.items():
            if self.weights[name] == 0:
                continue
            if total is not None and matrix.shape != total.shape:
                raise ValueError(f"HungarianMatcher: cost {name!r} has shape "
                                 f"{tuple(matrix.shape)}, others {tuple(total.shape)}")
            term = self.weights[name] * matrix.detach().float()
            total = term if total is None else total + term
        if total is None:
            raise ValueError("HungarianMatcher: every given cost term has weight 0")
        if not torch.isfinite(total).all():
            bad = [n for n, m in costs.items() if not torch.isfinite(m).all()]
            raise NonFiniteCost(f"HungarianMatcher: non-finite values in cost terms {bad}")
        return total

    def match(self, costs: Mapping[str, torch.Tensor]) -> Assignment:
        """Optimal assignment of one image from its named (Q, G) costs."""
        return linear_assignment(self.total_cost(costs))

    def match_batch(self, costs: Sequence[Mapping[str, torch.Tensor]]) -> list[Assignment]:
        """One assignment per image (images may have different G)."""
        return [self.match(c) for c in costs]
