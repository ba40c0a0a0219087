"""Mask, focal, box and point-sampled losses against hand-computed values; gradients flow."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from refseg.modeling.losses import (
    box_cxcywh_to_xyxy,
    box_iou,
    box_l1_loss,
    box_xyxy_to_cxcywh,
    calculate_uncertainty,
    dice_loss,
    generalized_box_iou,
    get_uncertain_point_coords_with_randomness,
    giou_loss,
    num_masks_over_ranks,
    paired_generalized_box_iou,
    point_mask_losses,
    point_sample,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
)
from ranks import run_on_ranks

LN2 = math.log(2.0)


def test_sigmoid_ce_and_dice_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    # Mask 0: (ln 2 + ln 4) / 2; mask 1: ln 2; normalised by 4 masks.
    ce = sigmoid_ce_loss(logits, targets, num_masks=4)
    assert math.isclose(ce.item(), (1.5 * LN2 + LN2) / 4, rel_tol=1e-6)
    # Mask 0: p = (0.5, 0.75): 1 - (1 + 1) / (1.25 + 1 + 1); mask 1: 1 - 1 / (1 + 1).
    dice = dice_loss(logits, targets, num_masks=1)
    assert math.isclose(dice.item(), (1 - 2 / 3.25) + 0.5, rel_tol=1e-6)
    (ce + dice).backward()
    assert logits.grad.abs().sum() > 0
    # Any trailing shape is flattened per mask.
    maps = torch.zeros(2, 3, 4)
    assert math.isclose(sigmoid_ce_loss(maps, torch.ones(2, 3, 4), 2).item(), LN2, rel_tol=1e-6)


def test_focal_loss_hand_values():
    logits = torch.tensor([[0.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # p_t = 0.5 for both: BCE ln 2 * 0.25; alpha 0.25 for the positive, 0.75 for the negative.
    expected = (0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2) / 2
    assert math.isclose(sigmoid_focal_loss(logits, targets, 1).item(), expected, rel_tol=1e-6)
    # gamma 0 and no alpha is plain BCE.
    x = torch.randn(3, 10)
    t = (torch.rand(3, 10) > 0.5).float()
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 3, alpha=None, gamma=0.0),
                               sigmoid_ce_loss(x, t, 3))
    # A confident correct prediction costs far less than under BCE.
    sure = torch.tensor([[4.0]])
    assert sigmoid_focal_loss(sure, torch.ones(1, 1), 1, alpha=None) < \
        0.01 * sigmoid_ce_loss(sure, torch.ones(1, 1), 1)


def test_box_conversions_and_giou_hand_values():
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.0, 0.0]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    torch.testing.assert_close(xyxy, torch.tensor([[0.4, 0.3, 0.6, 0.7], [0.1, 0.9, 0.1, 0.9]]))
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), cxcywh)
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    giou = generalized_box_iou(a, b)
    assert giou.shape == (3, 3)
    assert math.isclose(giou[0, 0].item(), 1 / 7 - 2 / 9, rel_tol=1e-6)
    assert math.isclose(giou[1, 1].item(), -7 / 9, rel_tol=1e-6)  # disjoint unit boxes
    assert giou[2, 2].item() == 0.0  # two identical points: no NaN
    assert math.isclose(box_iou(a, b)[0, 0].item(), 1 / 7, rel_tol=1e-6)
    torch.testing.assert_close(paired_generalized_box_iou(a, b), giou.diagonal())
    assert math.isclose(generalized_box_iou(a[:1], a[:1]).item(), 1.0, rel_tol=1e-6)


def test_box_losses_and_gradients():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0]])
    loss = giou_loss(pred, target, num_boxes=2)
    assert math.isclose(loss.item(), ((1 - (1 / 7 - 2 / 9)) + (1 + 7 / 9)) / 2, rel_tol=1e-6)
    l1 = box_l1_loss(pred, target, num_boxes=2)
    assert math.isclose(l1.item(), (4 + 8) / 2, rel_tol=1e-6)
    (loss + l1).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    degenerate = torch.zeros(1, 4, requires_grad=True)
    giou_loss(degenerate, torch.zeros(1, 4), 1).backward()
    assert torch.isfinite(degenerate.grad).all()


def test_point_sample_reads_pixel_centres_and_interpolates():
    maps = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [0.0, 0.25]]])
    out = point_sample(maps, coords)
    assert out.shape == (1, 1, 5)
    # Pixel centres, the middle (mean of 4), the left edge (half zero padding).
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 2.0, 3.0, 2.5, 0.5]))
    grid = point_sample(maps, coords[:, :4].view(1, 2, 2, 2))
    assert grid.shape == (1, 1, 2, 2)
    torch.testing.assert_close(grid.flatten(), out[0, 0, :4])


def test_uncertain_points_prefer_the_decision_boundary():
    torch.manual_seed(0)
    # Logit 0 (most uncertain) in the left half, +-10 in the right half.
    logits = torch.full((2, 1, 8, 8), 10.0)
    logits[1, :, :, 4:] = -10.0
    logits[..., :4] = 0.0
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 16,
                                                        oversample_ratio=3,
                                                        importance_sample_ratio=1.0)
    assert coords.shape == (2, 16, 2)
    assert (coords[..., 0] < 0.5).all()
    mixed = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 16)
    assert mixed.shape == (2, 16, 2) and (mixed >= 0).all() and (mixed <= 1).all()
    assert (mixed[:, :12, 0] < 0.5).all()  # 0.75 * 16 importance points, then random
    with pytest.raises(ValueError, match="oversample_ratio"):
        get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 4, 0.5)


def smooth_masks(count, size, seed):
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(count, 1, 4, 4, generator=gen)
    return (F.interpolate(low, size=(size, size), mode="bilinear")[:, 0] > 0.5).float()


def test_point_losses_estimate_full_resolution_losses():
    torch.manual_seed(0)
    gt = smooth_masks(3, 64, seed=1)
    pred = (F.interpolate(torch.rand(3, 1, 8, 8), size=(32, 32), mode="bilinear")[:, 0] - 0.5) * 6
    pred.requires_grad_(True)
    full_pred = F.interpolate(pred[:, None].detach(), size=(64, 64), mode="bilinear")[:, 0]
    # Uniform points only (importance 0): an unbiased estimate of the dense losses.
    ce, dice = point_mask_losses(pred, gt, num_masks=3, num_points=12544,
                                 importance_sample_ratio=0.0)
    assert math.isclose(ce.item(), sigmoid_ce_loss(full_pred, gt, 3).item(), rel_tol=0.05)
    assert math.isclose(dice.item(), dice_loss(full_pred, gt, 3).item(), rel_tol=0.05)
    (ce + dice).backward()
    assert pred.grad.abs().sum() > 0
    # Mask2Former's default sampling runs and is finite.
    ce, dice = point_mask_losses(pred, gt, num_masks=3, num_points=100)
    assert torch.isfinite(ce) and torch.isfinite(dice)


def test_point_losses_with_no_matched_mask():
    pred = torch.randn(0, 8, 8, requires_grad=True)
    ce, dice = point_mask_losses(pred, torch.zeros(0, 16, 16), num_masks=1)
    assert ce.item() == 0.0 and dice.item() == 0.0
    (ce + dice).backward()
    assert pred.grad.shape == (0, 8, 8)
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        point_mask_losses(torch.zeros(2, 4, 4), torch.zeros(1, 4, 4), num_masks=1)


def test_half_precision_logits_are_sampled_at_float32_points():
    # Under bf16 autocast the mask logits are bf16; Mask2Former still draws and reads its
    # points in float32 (bf16 would round them to steps of 1/256 between 0.5 and 1).
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 30, 30).to(torch.bfloat16)
    coords = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 4000)
    assert coords.dtype == torch.float32
    assert torch.unique(coords[..., 0]).numel() > 0.99 * coords[..., 0].numel()
    values = point_sample(logits, coords)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, point_sample(logits.float(), coords))
    pred = logits[:, 0].clone().requires_grad_(True)
    ce, dice = point_mask_losses(pred, (torch.rand(2, 60, 60) > 0.5).float(), num_masks=2,
                                 num_points=500)
    assert ce.dtype == dice.dtype == torch.float32
    (ce + dice).backward()
    assert pred.grad.dtype == torch.bfloat16 and torch.isfinite(pred.grad.float()).all()


def _counts_on_rank(rank, batches):
    """batches: cases, each one list of per-sample target counts per rank."""
    return [num_masks_over_ranks([SimpleNamespace(masks=torch.zeros(n, 2, 2)) for n in case[rank]],
                                 torch.device("cpu")) for case in batches]


def test_num_masks_is_the_mean_over_ranks_at_least_one():
    # Mask2Former's normaliser: every process divides by the same mean count, so a mask
    # weighs the same on a process holding 1 target as on one holding 7.
    assert num_masks_over_ranks([SimpleNamespace(masks=torch.zeros(3, 2, 2))], "cpu") == 3.0
    assert num_masks_over_ranks([SimpleNamespace(masks=torch.zeros(0, 2, 2))], "cpu") == 1.0
    cases = [[[1], [3, 4]], [[0], [1]]]  # ranks holding 1 and 7 masks; 0 and 1
    assert run_on_ranks(_counts_on_rank, 2, cases) == [[4.0, 1.0], [4.0, 1.0]]
