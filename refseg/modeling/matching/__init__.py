"""Hungarian matching of predictions to targets and the pairwise costs it weighs."""

from refseg.modeling.matching.costs import (
    batch_dice_cost,
    batch_mask_costs,
    batch_sigmoid_ce_cost,
    class_prob_cost,
    giou_cost,
    mask_costs,
    pairwise_l1_cost,
    positive_bce_cost,
)
from refseg.modeling.matching.hungarian import (
    Assignment,
    HungarianMatcher,
    NonFiniteCost,
    linear_assignment,
    matched_indices,
    matched_masks,
)

__all__ = [
    "Assignment",
    "HungarianMatcher",
    "NonFiniteCost",
    "batch_dice_cost",
    "batch_mask_costs",
    "batch_sigmoid_ce_cost",
    "class_prob_cost",
    "giou_cost",
    "linear_assignment",
    "mask_costs",
    "matched_indices",
    "matched_masks",
    "pairwise_l1_cost",
    "positive_bce_cost",
]
