"""Losses shared by the methods: mask (BCE, dice, focal), point-sampled mask, box."""

from refseg.modeling.losses.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_iou,
    box_l1_loss,
    box_xyxy_to_cxcywh,
    generalized_box_iou,
    giou_loss,
    paired_generalized_box_iou,
)
from refseg.modeling.losses.masks import (
    dice_loss,
    num_masks_over_ranks,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
)
from refseg.modeling.losses.points import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_mask_losses,
    point_sample,
)

__all__ = [
    "box_area",
    "box_cxcywh_to_xyxy",
    "box_iou",
    "box_l1_loss",
    "box_xyxy_to_cxcywh",
    "calculate_uncertainty",
    "dice_loss",
    "generalized_box_iou",
    "get_uncertain_point_coords_with_randomness",
    "giou_loss",
    "num_masks_over_ranks",
    "paired_generalized_box_iou",
    "point_mask_losses",
    "point_sample",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
]
