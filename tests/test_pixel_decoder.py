"""MSDeformAttn pixel decoder: parity with transformers' Mask2Former port, key map, grads."""

import re

import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerPixelDecoder

from refseg.errors import ConfigError
from refseg.modeling.contracts import FeatureSpec
from refseg.modeling.pixel_decoders import MSDeformAttnPixelDecoder, pixel_decoder_key_map
from refseg.modeling.position import PositionEmbeddingSine

SPEC = FeatureSpec(channels=(16, 24, 32, 40), strides=(4, 8, 16, 32))


def features(batch=2, size=(64, 96), spec=SPEC, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, size[0] // s, size[1] // s, generator=gen, dtype=dtype)
        for c, s in zip(spec.channels, spec.strides)
    ]


def tiny(**kw):
    args = dict(in_channels=SPEC.channels, strides=SPEC.strides, conv_dim=32, mask_dim=24,
                num_encoder_layers=2, n_heads=4, ffn_dim=64)
    args.update(kw)
    return MSDeformAttnPixelDecoder(**args)


def ours_to_transformers(key: str) -> str:
    """Our key -> the name in transformers' Mask2FormerPixelDecoder (independent of ours)."""
    rules = [
        (r"^input_proj\.", "input_projections."),
        (r"^encoder\.level_embed$", "level_embed"),
        (r"\.norm1\.", ".self_attn_layer_norm."),
        (r"\.linear1\.", ".fc1."),
        (r"\.linear2\.", ".fc2."),
        (r"\.norm2\.", ".final_layer_norm."),
        (r"^mask_features\.", "mask_projection."),
        (r"^lateral_convs\.(\d+)\.weight$", lambda m: f"adapter_{int(m[1]) + 1}.0.weight"),
        (r"^lateral_convs\.(\d+)\.norm\.", lambda m: f"adapter_{int(m[1]) + 1}.1."),
        (r"^output_convs\.(\d+)\.weight$", lambda m: f"layer_{int(m[1]) + 1}.0.weight"),
        (r"^output_convs\.(\d+)\.norm\.", lambda m: f"layer_{int(m[1]) + 1}.1."),
    ]
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def test_matches_transformers_mask2former_pixel_decoder():
    torch.manual_seed(0)
    ours = tiny().double().eval()
    with torch.no_grad():  # random values everywhere, norms included
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    config = Mask2FormerConfig(feature_size=32, mask_feature_size=24, encoder_layers=2,
                               num_attention_heads=4, encoder_feedforward_dim=64)
    ref = Mask2FormerPixelDecoder(config, feature_channels=list(SPEC.channels)).double().eval()
    ref.load_state_dict({ours_to_transformers(k): v for k, v in ours.state_dict().items()})

    feats = features(dtype=torch.float64)
    out = ours(feats)
    expected = ref(feats)
    # Ours computes position embeddings in float32 as Mask2Former does, transformers in
    # the input's dtype: differences of float32 rounding, nothing more.
    torch.testing.assert_close(out.mask_features, expected.mask_features, atol=1e-6, rtol=1e-6)
    assert len(out.multi_scale) == 3
    for a, b in zip(out.multi_scale, expected.multi_scale_features):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_shapes_order_and_every_parameter_gets_a_gradient():
    decoder = tiny()
    # Deformable DETR's init zeroes the query -> offsets/weights matrices, so positions and
    # level embeddings only matter after a first update; emulate one.
    with torch.no_grad():
        for layer in decoder.encoder.layers:
            layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
            layer.self_attn.attention_weights.weight.normal_(0, 0.01)
    out = decoder(features())
    assert out.mask_features.shape == (2, 24, 16, 24)
    # Coarsest first: strides 32, 16, 8.
    assert [tuple(x.shape) for x in out.multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6),
                                                         (2, 32, 8, 12)]
    loss = out.mask_features.square().mean() + sum(x.square().mean() for x in out.multi_scale)
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_runs_in_full_precision_under_autocast():
    """As Mask2Former's forward_features: half-precision inputs from an autocast backbone are
    decoded in float32, with the same result as float32 inputs without autocast."""
    torch.manual_seed(0)
    decoder = tiny().eval()
    inputs = features()
    with torch.no_grad():
        expected = decoder(inputs)
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            got = decoder([x.bfloat16() for x in inputs])
    assert got.mask_features.dtype == torch.float32
    assert all(x.dtype == torch.float32 for x in got.multi_scale)
    rounded = decoder([x.bfloat16().float() for x in inputs])  # the inputs' rounding only
    torch.testing.assert_close(got.mask_features, rounded.mask_features.detach())
    assert (got.mask_features - expected.mask_features).abs().max() < 0.1


def test_key_map_names_every_mask2former_key():
    decoder = tiny(num_encoder_layers=1)
    mapping = pixel_decoder_key_map(decoder)
    assert sorted(mapping.values()) == sorted(decoder.state_dict())
    p = "sem_seg_head.pixel_decoder."
    expected = {
        p + "input_proj.0.0.weight": "input_proj.0.0.weight",
        p + "input_proj.2.1.bias": "input_proj.2.1.bias",
        p + "transformer.level_embed": "encoder.level_embed",
        p + "transformer.encoder.layers.0.self_attn.sampling_offsets.bias":
            "encoder.layers.0.self_attn.sampling_offsets.bias",
        p + "transformer.encoder.layers.0.norm2.weight": "encoder.layers.0.norm2.weight",
        p + "adapter_1.weight": "lateral_convs.0.weight",
        p + "adapter_1.norm.bias": "lateral_convs.0.norm.bias",
        p + "layer_1.weight": "output_convs.0.weight",
        p + "layer_1.norm.weight": "output_convs.0.norm.weight",
        p + "mask_features.bias": "mask_features.bias",
    }
    for source, target in expected.items():
        assert mapping[source] == target
    # The FPN convs have no bias (GroupNorm follows), as in the checkpoint.
    assert p + "adapter_1.bias" not in mapping
    # 3 input projections x 4 + level_embed + 1 layer x 16 + 2 FPN convs x 3 + mask 2.
    assert len(mapping) == 12 + 1 + 16 + 6 + 2


def test_tiny_channels_and_config_errors():
    decoder = tiny(conv_dim=16, mask_dim=8, norm_groups=8, n_heads=2)
    out = decoder(features(batch=1, size=(32, 32)))
    assert out.mask_features.shape == (1, 8, 8, 8)
    with pytest.raises(ConfigError, match="norm_groups"):
        tiny(conv_dim=16)
    with pytest.raises(ConfigError, match="ascend"):
        tiny(strides=(8, 4, 16, 32))
    with pytest.raises(ValueError, match="channels"):
        decoder(features(spec=FeatureSpec((16, 24, 32, 48), SPEC.strides)))


def test_sine_position_embedding_hand_values_and_padding():
    pe = PositionEmbeddingSine(num_pos_feats=4, normalize=True)
    pos = pe(torch.zeros(1, 3, 2, 4))
    assert pos.shape == (1, 8, 2, 4)
    eps, scale = 1e-6, 2 * torch.pi
    # y half: channel 0 = sin(y_norm), channel 1 = cos(y_norm / 10000**(2/4)) (dim_t pairs).
    y_norm = torch.tensor([1.0, 2.0]) / (2 + eps) * scale
    torch.testing.assert_close(pos[0, 0, :, 0], y_norm.sin())
    torch.testing.assert_close(pos[0, 1, :, 0], y_norm.cos())
    torch.testing.assert_close(pos[0, 2, :, 0], (y_norm / 100.0).sin())
    x_norm = torch.arange(1.0, 5.0) / (4 + eps) * scale
    torch.testing.assert_close(pos[0, 4, 0], x_norm.sin())
    # Padding: the valid 2x2 corner of a padded map embeds like an unpadded 2x2 map.
    pad = torch.ones(1, 2, 4, dtype=torch.bool)
    pad[:, :, :2] = False
    padded = pe(torch.zeros(1, 3, 2, 4), pad_mask=pad)
    torch.testing.assert_close(padded[..., :2], pe(torch.zeros(1, 3, 2, 2)), atol=1e-5, rtol=0)
