"""MSDeformAttn: parity with transformers' pure-PyTorch Deformable DETR path, init, padding."""

import math

import pytest
import torch
from transformers.models.deformable_detr.configuration_deformable_detr import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from refseg.modeling.ops import MSDeformAttn, ms_deform_attn
from refseg.modeling.ops.ms_deform_attn import level_starts

# Non-square levels, a 1x1 level, one level only, batch 1 and 3.
SHAPES = [
    ([(6, 5), (3, 4), (2, 2)], 2),
    ([(7, 3), (4, 2), (2, 1), (1, 1)], 3),
    ([(5, 8)], 1),
]


def reference_core(value, shapes, locations, weights):
    """transformers' pure-PyTorch path (the class wraps an optional hub kernel)."""
    shapes_t = torch.tensor(shapes, dtype=torch.long)
    starts = torch.tensor(level_starts(shapes), dtype=torch.long)
    return MultiScaleDeformableAttention()(value, shapes_t, shapes, starts, locations, weights, 64)


def random_inputs(shapes, batch, dtype, queries=9, heads=4, head_dim=8, points=3, grad=False):
    gen = torch.Generator().manual_seed(len(shapes) * 10 + batch)
    tokens = sum(h * w for h, w in shapes)
    levels = len(shapes)
    value = torch.randn(batch, tokens, heads, head_dim, generator=gen, dtype=dtype)
    # Points partly outside the maps exercise the zero padding at every border.
    locations = torch.rand(batch, queries, heads, levels, points, 2, generator=gen, dtype=dtype)
    locations = locations * 1.6 - 0.3
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=dtype)
    if grad:
        for t in (value, locations, weights):
            t.requires_grad_(True)
    return value, locations, weights


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("shapes,batch", SHAPES)
def test_core_matches_reference_forward_and_backward(shapes, batch, dtype, tol):
    ours_in = random_inputs(shapes, batch, dtype, grad=True)
    ref_in = [t.detach().clone().requires_grad_(True) for t in ours_in]
    ours = ms_deform_attn(ours_in[0], shapes, ours_in[1], ours_in[2])
    ref = reference_core(ref_in[0], shapes, ref_in[1], ref_in[2])
    assert ours.shape == ref.shape == (batch, 9, 4 * 8)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol)
    upstream = torch.randn_like(ours)
    (ours * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, atol=tol * 10, rtol=tol * 10)


def test_core_accepts_tensor_shapes_and_rejects_mismatch():
    shapes = [(6, 5), (3, 4), (2, 2)]
    value, locations, weights = random_inputs(shapes, 2, torch.float64)
    out_list = ms_deform_attn(value, shapes, locations, weights)
    out_tensor = ms_deform_attn(value, torch.tensor(shapes), locations, weights)
    torch.testing.assert_close(out_list, out_tensor)
    with pytest.raises(ValueError, match="do not match"):
        ms_deform_attn(value, [(6, 5), (3, 4), (2, 3)], locations, weights)


def hf_module(d_model, levels, heads, points):
    config = DeformableDetrConfig(d_model=d_model, num_feature_levels=levels)
    return DeformableDetrMultiscaleDeformableAttention(config, num_heads=heads, n_points=points)


@pytest.mark.parametrize("coords", [2, 4])
@pytest.mark.parametrize("shapes,batch", SHAPES[:2])
def test_module_matches_transformers_module(shapes, batch, coords):
    torch.manual_seed(0)
    d_model, heads, points, queries = 32, 4, 3, 7
    ours = MSDeformAttn(d_model, len(shapes), heads, points).double()
    ref = hf_module(d_model, len(shapes), heads, points).double()
    # Random weights everywhere (the init zeroes offsets' and weights' matrices).
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ref.load_state_dict(ours.state_dict())  # identical parameter names

    tokens = sum(h * w for h, w in shapes)
    query = torch.randn(batch, queries, d_model, dtype=torch.float64)
    value = torch.randn(batch, tokens, d_model, dtype=torch.float64)
    reference = torch.rand(batch, queries, len(shapes), coords, dtype=torch.float64)
    pad = torch.rand(batch, tokens) < 0.2
    shapes_t = torch.tensor(shapes)
    starts = torch.tensor(level_starts(shapes))

    out = ours(query, reference, value, shapes_t, starts, value_pad_mask=pad)
    expected, _ = ref(
        query,
        attention_mask=~pad,  # transformers marks valid tokens
        encoder_hidden_states=value,
        reference_points=reference,
        spatial_shapes=shapes_t,
        spatial_shapes_list=shapes,
        level_start_index=starts,
    )
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_padding_mask_is_honoured():
    torch.manual_seed(1)
    shapes = [(4, 4), (2, 3)]
    attn = MSDeformAttn(16, 2, 2, 2)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
    tokens = sum(h * w for h, w in shapes)
    query, value = torch.randn(2, 5, 16), torch.randn(2, tokens, 16)
    pad = torch.zeros(2, tokens, dtype=torch.bool)
    pad[:, 3:9] = True
    ref = torch.rand(2, 5, 2, 2)
    out = attn(query, ref, value, shapes, value_pad_mask=pad)
    changed = value.clone()
    changed[pad] = 100.0
    torch.testing.assert_close(attn(query, ref, changed, shapes, value_pad_mask=pad), out)
    assert not torch.allclose(attn(query, ref, changed, shapes), out)


def test_init_places_points_on_rays_per_head():
    attn = MSDeformAttn(16, n_levels=2, n_heads=4, n_points=3)
    bias = attn.sampling_offsets.bias.view(4, 2, 3, 2)
    # head 0 at angle 0 -> (k, 0); head 1 at pi/2 -> (0, k); head 2 at pi -> (-k, 0).
    for k in range(3):
        torch.testing.assert_close(bias[0, 1, k], torch.tensor([k + 1.0, 0.0]))
        torch.testing.assert_close(bias[1, 0, k], torch.tensor([0.0, k + 1.0]), atol=1e-6, rtol=0)
        torch.testing.assert_close(bias[2, 0, k], torch.tensor([-(k + 1.0), 0.0]), atol=1e-6, rtol=0)
    assert attn.sampling_offsets.weight.abs().sum() == 0
    assert attn.attention_weights.weight.abs().sum() == 0
    assert attn.value_proj.bias.abs().sum() == 0
    bound = math.sqrt(6 / (16 + 16))  # xavier uniform
    assert attn.value_proj.weight.abs().max() <= bound


def test_every_parameter_gets_a_gradient_and_errors_are_clear():
    shapes = [(3, 3), (2, 2)]
    attn = MSDeformAttn(8, 2, 2, 2)
    query = torch.randn(1, 4, 8)
    value = torch.randn(1, 13, 8)
    ref = torch.rand(1, 4, 2, 2)
    attn(query, ref, value, shapes).square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="level_start_index"):
        attn(query, ref, value, shapes, level_start_index=[0, 8])
    with pytest.raises(ValueError, match="2 or 4"):
        attn(query, torch.rand(1, 4, 2, 3), value, shapes)
    with pytest.raises(ValueError, match="levels"):
        attn(query, ref, value, [(3, 3), (2, 2), (0, 0)])
