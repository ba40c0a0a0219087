"""Masked-attention decoder: parity with transformers' Mask2Former port, hooks, masks, grads."""

import re

import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import Mask2FormerTransformerModule

from refseg.modeling.decoders import (
    MLP,
    CrossAttentionLayer,
    MaskedAttentionDecoder,
    masked_decoder_key_map,
)

# Coarsest first, non-square: strides 32, 16, 8 of a 64x96 input; mask features at 4.
SCALES = [(2, 3), (4, 6), (8, 12)]
MASK_SIZE = (16, 24)


def inputs(batch=2, channels=32, mask_dim=24, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scales = [torch.randn(batch, channels, h, w, generator=gen, dtype=dtype) for h, w in SCALES]
    mask_features = torch.randn(batch, mask_dim, *MASK_SIZE, generator=gen, dtype=dtype)
    return scales, mask_features


def tiny(**kw):
    args = dict(in_channels=32, hidden_dim=32, num_queries=5, num_layers=4, n_heads=4,
                ffn_dim=64, mask_dim=24)
    args.update(kw)
    return MaskedAttentionDecoder(**args)


def ours_to_transformers(state):
    """Our state dict in the layout of transformers' Mask2FormerTransformerModule."""
    rules = [
        (r"^query_feat\.", "queries_features."),
        (r"^query_embed\.", "queries_embedder."),
        (r"^input_proj\.", "input_projections."),
        (r"^transformer_cross_attention_layers\.(\d+)\.multihead_attn\.",
         r"decoder.layers.\1.cross_attn."),
        (r"^transformer_cross_attention_layers\.(\d+)\.norm\.",
         r"decoder.layers.\1.cross_attn_layer_norm."),
        (r"^transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.",
         r"decoder.layers.\1.self_attn.out_proj."),
        (r"^transformer_self_attention_layers\.(\d+)\.norm\.",
         r"decoder.layers.\1.self_attn_layer_norm."),
        (r"^transformer_ffn_layers\.(\d+)\.linear1\.", r"decoder.layers.\1.fc1."),
        (r"^transformer_ffn_layers\.(\d+)\.linear2\.", r"decoder.layers.\1.fc2."),
        (r"^transformer_ffn_layers\.(\d+)\.norm\.", r"decoder.layers.\1.final_layer_norm."),
        (r"^decoder_norm\.", "decoder.layernorm."),
        (r"^mask_embed\.layers\.(\d+)\.", r"decoder.mask_predictor.mask_embedder.\1.0."),
    ]
    out = {}
    for key, value in state.items():
        packed = re.match(r"^transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(\w+)$",
                          key)
        if packed:  # nn.MultiheadAttention packs q, k, v; transformers keeps them apart
            for name, part in zip("qkv", value.chunk(3)):
                out[f"decoder.layers.{packed[1]}.self_attn.{name}_proj.{packed[2]}"] = part
            continue
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@pytest.mark.parametrize("in_channels,pre_norm", [(32, False), (40, False), (32, True)])
def test_matches_transformers_mask2former_decoder(in_channels, pre_norm):
    torch.manual_seed(0)
    ours = tiny(in_channels=in_channels, pre_norm=pre_norm).double().eval()
    config = Mask2FormerConfig(hidden_dim=32, mask_feature_size=24, num_queries=5,
                               decoder_layers=5, num_attention_heads=4, dim_feedforward=64,
                               pre_norm=pre_norm)
    ref = Mask2FormerTransformerModule(in_channels, config).double().eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ref.load_state_dict(ours_to_transformers(ours.state_dict()))

    scales, mask_features = inputs(channels=in_channels, dtype=torch.float64)
    out = ours(scales, mask_features)
    expected = ref(scales, mask_features)
    assert out.num_stages == 5 == len(expected.masks_queries_logits)
    # Position embeddings: float32 here (as Mask2Former), input dtype there.
    for stage in range(5):
        torch.testing.assert_close(out.mask_logits[stage], expected.masks_queries_logits[stage],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.queries[stage],
                                   expected.intermediate_hidden_states[stage].transpose(0, 1),
                                   atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient_and_shapes():
    decoder = tiny(in_channels=40)
    scales, mask_features = inputs(channels=40)
    out = decoder(scales, mask_features)
    assert out.num_stages == 5
    assert all(m.shape == (2, 5, *MASK_SIZE) for m in out.mask_logits)
    assert all(q.shape == (2, 5, 32) for q in out.queries)
    assert out.hidden.shape == (2, 5, 32)
    loss = sum(m.sigmoid().mean() for m in out.mask_logits) + sum(q.mean() for q in out.queries)
    loss.backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_attention_mask_blocks_background_and_opens_empty_rows():
    decoder = tiny(n_heads=2, mask_dim=1)
    with torch.no_grad():  # mask_embed(q) = q[..., 0] - q[..., 1] for q >= 0
        for layer in decoder.mask_embed.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        for layer in decoder.mask_embed.layers[:2]:
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        decoder.mask_embed.layers[2].weight[0, :2] = torch.tensor([1.0, -1.0])
    embed = torch.tensor([[1.0, -1.0, 2.0], [-1.0, 1.0, 1.0]])  # (B, Q)
    queries = torch.zeros(2, 3, 32)
    queries[:, :, 0], queries[:, :, 1] = embed.clamp(min=0), (-embed).clamp(min=0)
    mask_features = torch.zeros(2, 1, 4, 4)
    mask_features[0, 0, :2] = 1.0  # top half positive, bottom half zero logit (sigmoid 0.5)
    mask_features[0, 0, 2:] = -1.0
    mask_features[1, 0] = -1.0
    logits, attn = decoder.predict_masks(queries, mask_features, (4, 4))
    torch.testing.assert_close(logits, embed[:, :, None, None] * mask_features)
    attn = attn.view(2, 2, 3, 16)  # (B, Hd, Q, h*w), batch-major as nn.MultiheadAttention
    assert torch.equal(attn[:, 0], attn[:, 1])
    top = torch.arange(16) < 8
    assert torch.equal(attn[0, 0, 0], ~top)  # positive query: sees the top half only
    assert torch.equal(attn[0, 0, 1], top)  # negated query: sees the bottom half only
    # Sample 1: query 0 (-1 * -1 = +1) sees everything; queries 1, 2 predict nothing, so
    # their rows are opened instead of blocking every pixel.
    assert not attn[1, 0].any()


class Recorder(MaskedAttentionDecoder):
    """A method-like subclass: text interaction with padding and a loopback."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.text_attn = CrossAttentionLayer(d_model=32, n_heads=4)
        self.loopback = MLP(32, 32, 32, 2)

    def interact(self, layer_index, queries, query_pos, context):
        context["calls"].append(("interact", layer_index))
        return self.text_attn(queries, context["words"], key_padding_mask=context["pad"])

    def after_prediction(self, stage, queries, mask_logits, context):
        context["calls"].append(("after", stage))
        context["masks"].append(mask_logits)
        return queries + self.loopback(queries)


def test_hooks_run_in_order_honour_padding_and_feed_next_layer():
    torch.manual_seed(0)
    decoder = Recorder(in_channels=32, hidden_dim=32, num_queries=5, num_layers=3, n_heads=4,
                       ffn_dim=64, mask_dim=24)
    scales, mask_features = inputs()
    words = torch.randn(2, 6, 32)
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    context = {"words": words, "pad": pad, "calls": [], "masks": []}
    out = decoder(scales, mask_features, context)
    assert context["calls"] == [("after", 0), ("interact", 0), ("after", 1), ("interact", 1),
                                ("after", 2), ("interact", 2), ("after", 3)]
    for stage in range(4):
        assert context["masks"][stage] is out.mask_logits[stage]
    # Padded words never matter.
    changed = words.clone()
    changed[0, 4:] = 50.0
    again = decoder(scales, mask_features, {**context, "words": changed, "calls": [], "masks": []})
    for a, b in zip(out.mask_logits, again.mask_logits):
        torch.testing.assert_close(a, b)
    # The loopback's output is what the next layer consumes.
    plain = MaskedAttentionDecoder(in_channels=32, hidden_dim=32, num_queries=5, num_layers=3,
                                   n_heads=4, ffn_dim=64, mask_dim=24)
    plain.load_state_dict(decoder.state_dict(), strict=False)
    base = plain(scales, mask_features)
    torch.testing.assert_close(base.mask_logits[0], out.mask_logits[0])
    assert not torch.allclose(base.mask_logits[1], out.mask_logits[1])
    # Gradients reach the hook modules.
    sum(m.mean() for m in out.mask_logits).backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None, name


def test_pre_norm_and_key_map():
    decoder = tiny(pre_norm=True)
    scales, mask_features = inputs()
    out = decoder(scales, mask_features)
    assert torch.isfinite(out.mask_logits[-1]).all()
    mapping = masked_decoder_key_map(decoder)
    assert sorted(mapping.values()) == sorted(decoder.state_dict())
    p = "sem_seg_head.predictor."
    assert mapping[p + "query_feat.weight"] == "query_feat.weight"
    assert mapping[p + "transformer_ffn_layers.3.linear2.bias"] == \
        "transformer_ffn_layers.3.linear2.bias"
    assert mapping[p + "transformer_cross_attention_layers.0.multihead_attn.in_proj_weight"] == \
        "transformer_cross_attention_layers.0.multihead_attn.in_proj_weight"
    assert mapping[p + "mask_embed.layers.2.weight"] == "mask_embed.layers.2.weight"
    assert not any("input_proj" in k for k in mapping)  # identity projections hold no keys
    old = masked_decoder_key_map(decoder, query_feat_name="static_query")
    assert old[p + "static_query.weight"] == "query_feat.weight"
    with pytest.raises(ValueError, match="scales"):
        decoder(scales[:2], mask_features)
