"""InstAlign's own parts on hand-computed cases: POA (Eqs. 2-4), aggregation (Eq. 5),
no-target inputs (Eq. 7)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

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
    assert q.grad.abs().sum() > 0 and words.grad.abs().sum() > 0
    # the gradients are those of Eqs. 2-4, through R and through P = R T alike
    gen = torch.Generator().manual_seed(0)
    q64 = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    pad5 = torch.tensor([[False] * 5, [False, False, False, True, True]])
    assert torch.autograd.gradcheck(lambda a, b: poa_distance(a, b, pad5), (q64, w64))


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


# ---- object-text cross-attention, heads, early fusion -------------------------------------

from refseg.methods.instalign.config import AGGREGATIONS, NO_TARGET_INPUTS  # noqa: E402
from refseg.methods.instalign.fusion import LanguageAwareBackbone  # noqa: E402
from refseg.methods.instalign.heads import (  # noqa: E402
    NO_TARGET_INPUTS as NO_TARGET_MODULES,
    build_no_target_predictor,
)
from refseg.methods.instalign.object_text import (  # noqa: E402
    InstAlignDecoder,
    ObjectTextCrossAttention,
    TextContext,
)


def test_choice_names_agree_with_modules():
    assert tuple(NO_TARGET_MODULES) == NO_TARGET_INPUTS
    for name in AGGREGATIONS:
        build_aggregation(name, selection_threshold=0.5)


def test_object_text_attention_masks_word_padding():
    torch.manual_seed(0)
    layer = ObjectTextCrossAttention(d_model=8, n_heads=2).eval()
    q, pos = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    words = torch.randn(2, 4, 8)
    pad = torch.tensor([[False, False, True, True], [False, True, True, True]])
    q1, w1 = layer(q, pos, words, pad)
    words2 = words.clone()
    words2[pad] = torch.randn(int(pad.sum()), 8) * 50  # padded words change nothing
    q2, w2 = layer(q, pos, words2, pad)
    assert torch.allclose(q1, q2, atol=1e-6)
    assert torch.allclose(w1[~pad], w2[~pad], atol=1e-6)
    assert (w1[pad] == 0).all()
    # both directions update: words depend on the queries
    _, w3 = layer(q + 1.0, pos, words, pad)
    assert not torch.allclose(w1[~pad], w3[~pad])


def test_object_text_attention_all_padding_is_finite():
    layer = ObjectTextCrossAttention(d_model=8, n_heads=2)
    q1, w1 = layer(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.zeros(1, 2, 8),
                   torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(q1).all() and torch.isfinite(w1).all()


def test_decoder_collects_words_of_every_block():
    torch.manual_seed(0)
    dec = InstAlignDecoder(in_channels=16, hidden_dim=16, num_queries=5, num_layers=4,
                           n_heads=2, ffn_dim=32, mask_dim=16)
    scales = [torch.randn(2, 16, s, s) for s in (2, 4, 8)]
    ctx = TextContext(words=torch.randn(2, 3, 16), pad_mask=torch.zeros(2, 3, dtype=torch.bool))
    out = dec(scales, torch.randn(2, 16, 16, 16), ctx)
    assert out.num_stages == 5 and len(ctx.per_block) == 4
    assert ctx.per_block[-1] is ctx.words


@pytest.mark.parametrize("name", list(NO_TARGET_INPUTS))
def test_no_target_inputs(name):
    torch.manual_seed(0)
    pred = build_no_target_predictor(name, dim=4, text_dim=6)
    q = torch.randn(2, 3, 4, requires_grad=True)
    r = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 6, requires_grad=True)
    z = pred(q, r, s)
    assert z.shape == (2,)
    z.sum().backward()
    uses_queries = name != "sentence"
    uses_relevance = name in ("concat", "global")
    uses_sentence = name in ("concat", "sentence")
    assert (q.grad is not None and q.grad.abs().sum() > 0) == uses_queries
    assert (r.grad is not None and r.grad.abs().sum() > 0) == uses_relevance
    assert (s.grad is not None and s.grad.abs().sum() > 0) == uses_sentence


def test_relevance_pooling_is_eq7():
    pred = build_no_target_predictor("global", dim=2, text_dim=3)
    q = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    r = torch.tensor([[0.0, 100.0]])  # p = 0.5, 1
    g = pred.pooling(q, r, torch.zeros(1, 3))
    assert torch.allclose(g, torch.tensor([[0.5 + 3.0, 1.0 - 1.0]]))
    cat = build_no_target_predictor("concat", dim=2, text_dim=3).pooling
    s = torch.tensor([[7.0, 8.0, 9.0]])
    assert torch.allclose(cat(q, r, s), torch.tensor([[3.5, 0.0, 7.0, 8.0, 9.0]]))
    mean = build_no_target_predictor("mean", dim=2, text_dim=3).pooling
    assert torch.allclose(mean(q, r, s), torch.tensor([[2.0, 0.5]]))


def test_unknown_no_target_input_is_a_config_error():
    with pytest.raises(ConfigError, match="no_target_input"):
        build_no_target_predictor("max", dim=2, text_dim=2)


def test_language_aware_backbone_depends_on_real_words_only():
    from refseg.modeling.backbones.swin import swin_nano

    torch.manual_seed(0)
    fused = LanguageAwareBackbone(backbone=swin_nano(), text_dim=8).eval()
    images = torch.randn(1, 3, 64, 64)
    words = torch.randn(1, 3, 8)
    pad = torch.tensor([[False, False, True]])
    maps = fused(images, words, pad)
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 16, 16), (64, 8, 8), (128, 4, 4),
                                                    (256, 2, 2)]
    words2 = words.clone()
    words2[0, 2] = 99.0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, fused(images, words2, pad)))
    words3 = words.clone()
    words3[0, 0] += 1.0
    assert not torch.allclose(maps[0], fused(images, words3, pad)[0])


def test_language_aware_stage_is_pwam_then_the_stage_norm_as_in_lavt_and_rela():
    # LAVT / ReLA: PWAM reads the blocks' raw output, the stage's norm then normalises the
    # fused map for the pixel decoder, and the gate's addend joins the raw output.
    from refseg.modeling.backbones.swin import swin_nano

    torch.manual_seed(0)
    fused = LanguageAwareBackbone(backbone=swin_nano(), text_dim=8, gate=True).eval()
    swin = fused.backbone
    images, words = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 8)
    pad = torch.tensor([[False, False, True], [False, False, False]])
    with torch.no_grad():
        nn.init.normal_(fused.gates[0].gate[2].weight)  # open the first gate
        maps = fused(images, words, pad)
        raw = swin.layers[0].run_blocks(swin.patch_embed(images))  # (B, H, W, C)
        B, H, W, C = raw.shape
        pwam = fused.fusions[0](raw.reshape(B, H * W, C), words, pad).view(B, H, W, C)
        torch.testing.assert_close(maps[0], swin.norm0(pwam).permute(0, 3, 1, 2))
        after = swin.layers[1].run_blocks(swin.layers[0].next_input(raw + fused.gates[0](pwam)))
        pwam1 = fused.fusions[1](after.reshape(B, -1, after.shape[-1]), words, pad)
        torch.testing.assert_close(maps[1], swin.norm1(pwam1.view(after.shape)).permute(0, 3, 1, 2))


def test_no_target_loss_weighs_no_target_samples():
    from refseg.methods.instalign.criterion import no_target_loss
    from refseg.modeling.contracts import Targets

    empty = Targets(torch.zeros(0, 4, 4), torch.zeros(0, 4), True)
    one = Targets(torch.ones(1, 4, 4), torch.zeros(1, 4), False)
    z = torch.tensor([0.0, 0.0])
    # BCE at p = 0.5 is log 2 for both; the no-target one counts pos_weight times
    assert no_target_loss(z, [empty, one]).item() == pytest.approx(math.log(2))
    assert no_target_loss(z, [empty, one], pos_weight=3.0).item() == pytest.approx(2 * math.log(2))
    # Unequal logits tell the labels apart: label 1 (no target) costs softplus(-z) and is
    # the one weighted, label 0 costs softplus(z).
    z = torch.tensor([2.0, -1.0])
    expected = (3.0 * F.softplus(torch.tensor(-2.0)) + F.softplus(torch.tensor(-1.0))) / 2
    assert no_target_loss(z, [empty, one], pos_weight=3.0).item() == pytest.approx(expected.item())
