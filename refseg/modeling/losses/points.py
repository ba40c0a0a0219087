"""Point sampling of mask logits (PointRend, Kirillov et al. 2020; Mask2Former Sec. 4).

Mask losses and matching costs are computed on a few thousand sampled points instead of
every pixel: uniformly random points for matching, and for the loss mostly points where
the prediction is uncertain (|logit| small) plus some random ones.

Legend: N masks, C channels, P points, H/W spatial. Point coordinates are (x, y) in
[0, 1] of the map, 0 at the outer edge of the first pixel (align_corners=False).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from refseg.modeling.losses.masks import dice_loss, sigmoid_ce_loss


def point_sample(maps: torch.Tensor, coords: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinearly read maps at points.

    Args:
        maps: (N, C, H, W).
        coords: (N, P, 2) points, or (N, Hg, Wg, 2) grids, (x, y) in [0, 1].

    Returns:
        (N, C, P) values, or (N, C, Hg, Wg) for grids; zero outside the map. Computed in
        the wider of the two dtypes, as CUDA autocast runs ``grid_sample``: bf16 / fp16
        maps are read at their float32 coordinates, not at coordinates rounded to 8 bits.
    """
    flat = coords.dim() == 3
    dtype = torch.promote_types(maps.dtype, coords.dtype)
    grid = 2.0 * coords.to(dtype) - 1.0
    if flat:
        grid = grid.unsqueeze(2)
    out = F.grid_sample(maps.to(dtype), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=align_corners)
    return out.squeeze(3) if flat else out


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of a binary logit: -|logit| (highest at the decision boundary)."""
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(
    coarse_logits: torch.Tensor,
    uncertainty_fn: Callable[[torch.Tensor], torch.Tensor],
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> torch.Tensor:
    """PointRend's training point selection.

    Draws num_points * oversample_ratio uniform points, keeps the
    importance_sample_ratio * num_points most uncertain ones, and fills the rest with
    fresh uniform points.

    Args:
        coarse_logits: (N, 1, H, W) mask logits.
        uncertainty_fn: (N, 1, P) logits -> (N, 1, P) uncertainty (higher = more uncertain).
        num_points: P points per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].

    Returns:
        (N, P, 2) point coordinates in [0, 1], float32 (or float64) whatever the logits'
        dtype: in bf16 they would snap to a grid of 1/256 between 0.5 and 1.
    """
    if oversample_ratio < 1 or not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"point sampling: oversample_ratio {oversample_ratio} must be >= 1 and "
                         f"importance_sample_ratio {importance_sample_ratio} in [0, 1]")
    num_masks = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    device, dtype = coarse_logits.device, torch.promote_types(coarse_logits.dtype, torch.float32)
    candidates = torch.rand(num_masks, num_sampled, 2, device=device, dtype=dtype)
    uncertainty = uncertainty_fn(point_sample(coarse_logits, candidates))  # (N, 1, P')
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = uncertainty[:, 0].topk(num_uncertain, dim=1).indices  # (N, P_u)
    coords = candidates.gather(1, top[..., None].expand(-1, -1, 2))
    if num_random > 0:
        coords = torch.cat(
            [coords, torch.rand(num_masks, num_random, 2, device=device, dtype=dtype)], dim=1
        )
    return coords


def point_mask_losses(
    pred_logits: torch.Tensor,
    target_masks: torch.Tensor,
    num_masks: float,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask2Former's mask losses on uncertainty-sampled points (its `loss_masks`).

    Points are chosen on the prediction (no gradient through the choice); predictions and
    targets are read at the same points, so they may have different resolutions.

    Args:
        pred_logits: (N, H, W) logits of the matched queries.
        target_masks: (N, h, w) their matched ground-truth masks in {0, 1}.
        num_masks: normaliser (matched targets in the batch, at least 1).
        num_points: P points per mask (Mask2Former: 112 * 112 = 12544).

    Returns:
        (sigmoid BCE, dice) scalars; zero (still attached to the graph) when N = 0.
    """
    if pred_logits.shape[0] != target_masks.shape[0]:
        raise ValueError(f"point_mask_losses: {pred_logits.shape[0]} predictions for "
                         f"{target_masks.shape[0]} targets")
    if pred_logits.shape[0] == 0:
        zero = pred_logits.sum() * 0.0
        return zero, zero
    pred = pred_logits[:, None]
    with torch.no_grad():
        coords = get_uncertain_point_coords_with_randomness(
            pred, calculate_uncertainty, num_points, oversample_ratio, importance_sample_ratio
        )
        labels = point_sample(target_masks[:, None].to(coords.dtype), coords).squeeze(1)
    logits = point_sample(pred, coords).squeeze(1)  # (N, P), in the coordinates' dtype
    return sigmoid_ce_loss(logits, labels, num_masks), dice_loss(logits, labels, num_masks)
