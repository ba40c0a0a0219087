"""Hungarian matching and pairwise costs: optimum on hand-made matrices, G = 0 / 1 / many."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from refseg.modeling.matching import (
    Assignment,
    HungarianMatcher,
    batch_dice_cost,
    batch_mask_costs,
    batch_sigmoid_ce_cost,
    class_prob_cost,
    giou_cost,
    linear_assignment,
    mask_costs,
    matched_indices,
    matched_masks,
    pairwise_l1_cost,
    positive_bce_cost,
)
from refseg.modeling.losses.points import point_sample


def brute_force_min(cost):
    q, g = cost.shape
    if q >= g:
        return min(sum(cost[r, c] for c, r in enumerate(rows))
                   for rows in itertools.permutations(range(q), g))
    return min(sum(cost[r, c] for r, c in enumerate(cols))
               for cols in itertools.permutations(range(g), q))


def test_assignment_beats_greedy_on_a_hand_made_matrix():
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    # Greedy takes (1, 1) = 0 first and ends at 6; the optimum is 1 + 2 + 2 = 5.
    q, g = linear_assignment(cost)
    assert q.tolist() == [0, 1, 2] and g.tolist() == [1, 0, 2]
    assert cost[q, g].sum() == 5


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (6, 1)])
def test_assignment_is_optimal_on_random_rectangular_matrices(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    cost = torch.rand(*shape, generator=gen, dtype=torch.float64)
    q, g = linear_assignment(cost)
    assert len(q) == min(shape) and len(set(q.tolist())) == len(q) == len(set(g.tolist()))
    assert math.isclose(cost[q, g].sum().item(), brute_force_min(cost), rel_tol=1e-12)


@pytest.mark.parametrize("shape", [(5, 0), (0, 3), (0, 0)])
def test_no_target_gives_an_empty_assignment(shape):
    q, g = linear_assignment(torch.zeros(shape))
    assert q.dtype == g.dtype == torch.long and q.numel() == g.numel() == 0


def test_matcher_weighs_named_terms():
    # Term "a" alone prefers the identity, term "b" the swap; the weights decide.
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert HungarianMatcher({"a": 2.0, "b": 1.0}).match({"a": a, "b": b}).target_idx.tolist() == [0, 1]
    assert HungarianMatcher({"a": 1.0, "b": 3.0}).match({"a": a, "b": b}).target_idx.tolist() == [1, 0]
    # A zero-weight term may be omitted.
    assert HungarianMatcher({"a": 1.0, "poa": 0.0}).match({"a": a}).target_idx.tolist() == [0, 1]
    total = HungarianMatcher({"a": 2.0, "b": 1.0}).total_cost({"a": a, "b": b})
    torch.testing.assert_close(total, 2 * a + b)


def test_matcher_batch_with_zero_one_and_many_targets():
    matcher = HungarianMatcher({"l1": 1.0})
    preds = torch.tensor([[0.0], [10.0], [5.0]])
    batch = [
        {"l1": pairwise_l1_cost(preds, torch.zeros(0, 1))},
        {"l1": pairwise_l1_cost(preds, torch.tensor([[4.0]]))},
        {"l1": pairwise_l1_cost(preds, torch.tensor([[9.0], [1.0], [6.0]]))},
    ]
    out = matcher.match_batch(batch)
    assert out[0].query_idx.numel() == 0
    assert out[1].query_idx.tolist() == [2] and out[1].target_idx.tolist() == [0]
    assert out[2].query_idx.tolist() == [0, 1, 2] and out[2].target_idx.tolist() == [1, 0, 2]


def test_matched_pairs_gather_queries_and_targets_image_by_image():
    """Image 0: queries 1, 3 <- targets 1, 0; image 1: no target; image 2: query 0 <- 0."""
    long = lambda *v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    assignments = [Assignment(long(1, 3), long(1, 0)), Assignment(long(), long()),
                   Assignment(long(0), long(0))]
    batch_idx, query_idx = matched_indices(assignments)
    assert batch_idx.tolist() == [0, 0, 2] and query_idx.tolist() == [1, 3, 0]

    logits = torch.arange(3 * 4 * 2 * 2, dtype=torch.float32).view(3, 4, 2, 2)
    gt = [torch.stack([torch.full((3, 3), 1), torch.full((3, 3), 0)]).bool(),
          torch.zeros(0, 3, 3, dtype=torch.bool), torch.ones(1, 3, 3, dtype=torch.bool)]
    pred, target = matched_masks(logits, gt, assignments)
    assert torch.equal(pred, torch.stack([logits[0, 1], logits[0, 3], logits[2, 0]]))
    assert target.dtype == torch.float32 and target.shape == (3, 3, 3)
    assert [t.max().item() for t in target] == [0.0, 1.0, 1.0]  # image 0 in target order 1, 0

    nothing = [Assignment(long(), long())]
    pred, target = matched_masks(logits[:1], gt[1:2], nothing)
    assert pred.shape == (0, 2, 2) and target.shape == (0, 3, 3)


def test_matcher_errors_name_the_term():
    matcher = HungarianMatcher({"mask": 5.0, "dice": 5.0})
    ok = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="missing \\['dice'\\]"):
        matcher.match({"mask": ok})
    with pytest.raises(ValueError, match="unknown \\['poa'\\]"):
        matcher.match({"mask": ok, "dice": ok, "poa": ok})
    with pytest.raises(ValueError, match="'dice' has shape"):
        matcher.match({"mask": ok, "dice": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="non-finite values in cost terms \\['dice'\\]"):
        matcher.match({"mask": ok, "dice": torch.full((3, 2), float("nan"))})
    with pytest.raises(ValueError, match="no cost terms"):
        HungarianMatcher({})


def test_sigmoid_ce_and_dice_costs_against_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    ce = batch_sigmoid_ce_cost(logits, targets)
    assert ce.shape == (2, 3)
    # BCE(0, 1) = ln 2, BCE(ln 3, 0) = ln 4.
    assert math.isclose(ce[0, 0].item(), (math.log(2) + math.log(4)) / 2, rel_tol=1e-6)
    for q in range(2):
        for g in range(3):
            expected = F.binary_cross_entropy_with_logits(logits[q], targets[g])
            assert math.isclose(ce[q, g].item(), expected.item(), rel_tol=1e-6)
    dice = batch_dice_cost(logits, targets)
    # p = (0.5, 0.75), t = (1, 0): 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1).
    assert math.isclose(dice[0, 0].item(), 1 - 2.0 / 3.25, rel_tol=1e-6)
    # t = 0: 1 - 1 / (|p| + 1).
    assert math.isclose(dice[0, 1].item(), 1 - 1 / 2.25, rel_tol=1e-6)
    assert batch_dice_cost(logits, torch.zeros(0, 2)).shape == (2, 0)
    assert batch_sigmoid_ce_cost(logits, torch.zeros(0, 2)).shape == (2, 0)


def blob_masks(count, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, size, size)
    for i in range(count):
        y, x = torch.randint(0, size - 12, (2,), generator=gen).tolist()
        h, w = torch.randint(6, 12, (2,), generator=gen).tolist()
        masks[i, y:y + h, x:x + w] = 1
    return masks


@pytest.mark.parametrize("num_targets", [0, 1, 4])
def test_mask_costs_recover_a_permutation(num_targets):
    torch.manual_seed(0)
    gt = blob_masks(num_targets, seed=num_targets)
    order = torch.randperm(6)[:num_targets]  # query order[g] predicts target g
    distractors = blob_masks(6, seed=99)
    pred_masks = distractors.clone()
    pred_masks[order] = gt
    # Predictions at half the resolution of the targets: points are shared in [0, 1].
    pred_logits = F.interpolate((pred_masks * 2 - 1)[None] * 8, size=(16, 16), mode="bilinear")[0]
    costs = mask_costs(pred_logits, gt, num_points=2000)
    assert set(costs) == {"mask", "dice"}
    assert costs["mask"].shape == costs["dice"].shape == (6, num_targets)
    q, g = HungarianMatcher({"mask": 5.0, "dice": 5.0}).match(costs)
    assert dict(zip(g.tolist(), q.tolist())) == {i: order[i].item() for i in range(num_targets)}


def test_box_class_and_relevance_costs():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    gt = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    torch.testing.assert_close(giou_cost(pred, gt),
                               torch.tensor([[-(1 / 7 - 2 / 9)], [-(0.0 - 4 / 9)]]))
    torch.testing.assert_close(pairwise_l1_cost(pred, gt), torch.tensor([[4.0], [6.0]]))
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    torch.testing.assert_close(class_prob_cost(logits, torch.tensor([1, 0, 1])),
                               -torch.tensor([[0.75, 0.25, 0.75], [0.5, 0.5, 0.5]]))
    cost = positive_bce_cost(torch.tensor([0.0, math.log(3.0)]), 2)
    torch.testing.assert_close(cost, torch.tensor([[math.log(2.0)] * 2, [math.log(4 / 3)] * 2]))
    assert positive_bce_cost(torch.zeros(3), 0).shape == (3, 0)


@pytest.mark.parametrize("same_size", [True, False])
def test_batch_mask_costs_equal_per_image_costs_on_the_same_points(same_size):
    """The batched path (one point read for the batch) against each image on its own points,
    with images of zero, one and several targets, of one or of different resolutions."""
    torch.manual_seed(3)
    pred = torch.randn(3, 5, 8, 8) * 3
    sides = (32, 32, 32) if same_size else (32, 16, 24)
    gt = [blob_masks(n, size=s, seed=n) for n, s in zip((2, 0, 4), sides)]
    torch.manual_seed(7)
    batched = batch_mask_costs(pred, gt, num_points=500)
    torch.manual_seed(7)
    coords = torch.rand(3, 500, 2)
    for b, g in enumerate(gt):
        pred_points = point_sample(pred[b][:, None], coords[b:b + 1].expand(5, -1, -1))[:, 0]
        gt_points = point_sample(g[:, None].float(), coords[b:b + 1].expand(len(g), -1, -1))[:, 0]
        assert batched[b]["mask"].shape == batched[b]["dice"].shape == (5, len(g))
        torch.testing.assert_close(batched[b]["mask"], batch_sigmoid_ce_cost(pred_points, gt_points))
        torch.testing.assert_close(batched[b]["dice"], batch_dice_cost(pred_points, gt_points))
