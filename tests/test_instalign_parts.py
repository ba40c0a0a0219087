"""InstAlign's own parts on hand-computed cases: POA (Eqs. 2-4), aggregation (Eq. 5),
no-target inputs (Eq. 7)."""

import math

import pytest
import torch

from refseg.errors import ConfigError
from refseg.methods.instalign.aggregation import (
    EMPTY_LOGIT,
    FixedSelection,
    InstanceAggregation,
    build_aggregation,
)
from refseg.methods.instalign.poa import phrase_object_relevance, poa_distance


def test_poa_hand_computed_excludes_padding():
    # One query, two real words and one padded word that would dominate if attended to.
    q = torch.tensor([[[1.0, 0.0]]])  # (B=1, Q=1, C=2)
    words = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [100.0, 100.0]]])  # (1, L=3, 2)
    pad = torch.tensor([[False, False, True]])
    # logits: q.w / sqrt(2) = [2/sqrt2, 0] over the real words
    a = math.exp(2 / math.sqrt(2))
    r0, r1 = a / (a + 1), 1 / (a + 1)
    relevance = phrase_object_relevance(q, words, pad)
    assert torch.allclose(relevance[0, 0], torch.tensor([r0, r1, 0.0]), atol=1e-6)
    phrase = torch.tensor([2 * r0, 2 * r1])
    cos = float(phrase[0] / phrase.norm())
    dist = poa_distance(q, words, pad)
    assert dist.shape == (1, 1)
    assert dist.item() == pytest.approx(1 - cos, abs=1e-6)
    # the padded word's value changes nothing
    words2 = words.clone()
    words2[0, 2] = torch.tensor([-7.0, 3.0])
    assert torch.allclose(poa_distance(q, words2, pad), dist)


def test_poa_aligned_query_has_zero_distance_and_grad_flows():
    words = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]], requires_grad=True)
    q = torch.tensor([[[3.0, 3.0, 0.0], [0.0, 0.0, 1.0]]], requires_grad=True)
    pad = torch.zeros(1, 2, dtype=torch.bool)
    dist = poa_distance(q, words, pad)
    assert dist[0, 0].item() == pytest.approx(0.0, abs=1e-6)
    assert dist[0, 1].item() == pytest.approx(1.0, abs=1e-6)  # orthogonal
    dist.sum().backward()
    assert q.grad is not None and words.grad is not None


def test_poa_all_padding_gives_finite_values():
    q = torch.randn(1, 2, 4)
    words = torch.randn(1, 3, 4)
    pad = torch.ones(1, 3, dtype=torch.bool)
    assert torch.isfinite(poa_distance(q, words, pad)).all()


def test_instance_aggregation_matches_eq5():
    m = torch.randn(2, 3, 4, 5)
    r = torch.randn(2, 3)
    ia = build_aggregation("ia", selection_threshold=0.5)
    slope = ia.activation.weight.item()
    act = torch.where(m > 0, m, slope * m)
    expected = (r.sigmoid()[:, :, None, None] * act).sum(dim=1)
    assert torch.allclose(ia(m, r), expected, atol=1e-6)
    plain = build_aggregation("ia_no_prelu", selection_threshold=0.5)
    assert isinstance(plain, InstanceAggregation)
    expected_plain = (r.sigmoid()[:, :, None, None] * m).sum(dim=1)
    assert torch.allclose(plain(m, r), expected_plain, atol=1e-6)
    # the PReLU slope is learned through the merged mask
    ia(m, r).sum().backward()
    assert ia.activation.weight.grad is not None


def test_fixed_selection_is_union_of_selected_and_empty_when_none():
    m = torch.tensor([[[[1.0, -2.0]], [[-3.0, 4.0]], [[9.0, 9.0]]]])  # (1, 3, 1, 2)
    r = torch.tensor([[2.0, 2.0, -2.0]])  # keep queries 0 and 1
    fixed = FixedSelection(threshold=0.5)
    assert torch.equal(fixed(m, r), torch.tensor([[[1.0, 4.0]]]))
    none = fixed(m, torch.full((1, 3), -5.0))
    assert torch.equal(none, torch.full((1, 1, 2), EMPTY_LOGIT))
    m.requires_grad_(True)
    fixed(m, r).sum().backward()
    assert torch.isfinite(m.grad).all()
    assert m.grad[0, 2].abs().sum() == 0


def test_unknown_aggregation_is_a_config_error():
    with pytest.raises(ConfigError, match="model.aggregation"):
        build_aggregation("mean", selection_threshold=0.5)
