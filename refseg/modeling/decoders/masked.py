"""Mask2Former's masked-attention transformer decoder with hooks for the methods' own steps.

Per layer i (scale i mod Lv, coarsest first): masked cross-attention to that scale, where
each query only sees pixels its previous mask prediction marks foreground (sigmoid >= 0.5;
a query whose mask is empty sees everything) -> `interact` hook -> self-attention -> FFN ->
mask prediction from the normalised queries -> `after_prediction` hook. The prediction on
the initial queries counts as stage 0, so there are num_layers + 1 stages (deep
supervision, Cheng et al. 2022 Sec. 3.2).

Legend: B batch, Q queries, C hidden channels, D mask channels, Hd heads, Lv scales,
H/W mask-feature size, h/w a scale's size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from refseg.modeling.decoders.layers import MLP, CrossAttentionLayer, FFNLayer, SelfAttentionLayer
from refseg.modeling.position import PositionEmbeddingSine


@dataclass
class DecoderOutput:
    """Per-stage predictions of the masked-attention decoder (stage 0: initial queries).

    Attributes:
        queries: num_layers + 1 tensors (B, Q, C): `decoder_norm` of the queries that
            produced each stage's masks — the input of any per-query head (class,
            relevance, box) a method applies.
        mask_logits: num_layers + 1 tensors (B, Q, H, W) at the mask features' size.
        hidden: (B, Q, C) queries after the last layer and its `after_prediction` hook.
    """

    queries: list[torch.Tensor]
    mask_logits: list[torch.Tensor]
    hidden: torch.Tensor

    @property
    def num_stages(self) -> int:
        return len(self.mask_logits)


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder (`MultiScaleMaskedTransformerDecoder`).

    Parameter names equal Mask2Former's predictor (`query_feat`, `query_embed`, `level_embed`,
    `input_proj`, `transformer_{cross,self}_attention_layers`, `transformer_ffn_layers`,
    `decoder_norm`, `mask_embed.layers`); the class head is the method's, not here.

    Methods extend it by subclassing and overriding the hooks `initial_queries`,
    `interact`, `after_prediction` (identity by default) or `predict_masks`; `context` is
    any object the method passes to `forward` (text features, a place to collect its own
    per-stage outputs) and is handed unchanged to every hook.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        hidden_dim: int = 256,
        num_queries: int = 100,
        num_layers: int = 9,
        n_heads: int = 8,
        ffn_dim: int = 2048,
        mask_dim: int = 256,
        num_levels: int = 3,
        pre_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.hidden_dim, self.num_queries = hidden_dim, num_queries
        self.num_layers, self.n_heads, self.num_levels = num_layers, n_heads, num_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d_model=hidden_dim, n_heads=n_heads, dropout=dropout,
                               pre_norm=pre_norm)
            for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d_model=hidden_dim, n_heads=n_heads, dropout=dropout,
                                pre_norm=pre_norm)
            for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d_model=hidden_dim, ffn_dim=ffn_dim, dropout=dropout, pre_norm=pre_norm)
            for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positions
        self.level_embed = nn.Embedding(num_levels, hidden_dim)
        # Mask2Former projects only when channels differ (its checkpoints then hold no keys).
        self.input_proj = nn.ModuleList()
        for _ in range(num_levels):
            if in_channels == hidden_dim:
                self.input_proj.append(nn.Identity())
            else:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.constant_(proj.bias, 0)
                self.input_proj.append(proj)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    # ---- hooks a method overrides -------------------------------------------------------

    def initial_queries(self, batch_size: int, context: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries before the first layer.

        Returns:
            queries (B, Q, C) content features and query_pos (B, Q, C) their positions.
        """
        queries = self.query_feat.weight.unsqueeze(0).expand(batch_size, -1, -1)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch_size, -1, -1)
        return queries, query_pos

    def interact(self, layer_index: int, queries: torch.Tensor, query_pos: torch.Tensor,
                 context: Any) -> torch.Tensor:
        """Step between masked cross-attention and self-attention of layer `layer_index`
        (e.g. InstAlign's object-text cross-attention). queries: (B, Q, C) -> (B, Q, C)."""
        return queries

    def after_prediction(self, stage: int, queries: torch.Tensor, mask_logits: torch.Tensor,
                         context: Any) -> torch.Tensor:
        """Step after stage `stage`'s mask prediction, feeding the next layer (e.g. DeRIS's
        loopback). queries: (B, Q, C) un-normalised; mask_logits: (B, Q, H, W)."""
        return queries

    # ---- the decoder ----------------------------------------------------------------------

    def predict_masks(self, queries: torch.Tensor, mask_features: torch.Tensor,
                      attn_target_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits of every query and the next layer's attention mask.

        Args:
            queries: (B, Q, C) normalised queries (`decoder_norm` applied).
            mask_features: (B, D, H, W) per-pixel embeddings.
            attn_target_size: (h, w) of the scale the next layer attends to.

        Returns:
            mask_logits (B, Q, H, W) = mask_embed(q) . F, and attn_mask (B * Hd, Q, h * w)
            bool, True where the prediction is background (sigmoid < 0.5), with rows that
            would block every pixel opened instead.
        """
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), mask_features)
        resized = F.interpolate(mask_logits.detach(), size=tuple(attn_target_size),
                                mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5  # (B, Q, h*w)
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        attn_mask = blocked.repeat_interleave(self.n_heads, dim=0)  # (B*Hd, Q, h*w), b-major
        return mask_logits, attn_mask

    def forward(self, multi_scale: Sequence[torch.Tensor], mask_features: torch.Tensor,
                context: Any = None) -> DecoderOutput:
        """Run all layers.

        Args:
            multi_scale: Lv maps (B, C_in, h_l, w_l), coarsest first (pixel decoder order).
            mask_features: (B, D, H, W) per-pixel embeddings (stride 4).
            context: the method's object, passed to every hook.

        Returns:
            DecoderOutput with num_layers + 1 stages.
        """
        if len(multi_scale) != self.num_levels:
            raise ValueError(f"masked decoder: {len(multi_scale)} scales, built for "
                             f"{self.num_levels}")
        sizes, memories, memory_pos = [], [], []
        for level, x in enumerate(multi_scale):
            sizes.append(tuple(x.shape[-2:]))
            memory_pos.append(self.pe_layer(x).flatten(2).transpose(1, 2))  # (B, h*w, C)
            memory = self.input_proj[level](x).flatten(2).transpose(1, 2)
            memories.append(memory + self.level_embed.weight[level])

        queries, query_pos = self.initial_queries(mask_features.shape[0], context)
        normed = self.decoder_norm(queries)
        mask_logits, attn_mask = self.predict_masks(normed, mask_features, sizes[0])
        stage_queries, stage_masks = [normed], [mask_logits]
        queries = self.after_prediction(0, queries, mask_logits, context)

        for i in range(self.num_layers):
            level = i % self.num_levels
            queries = self.transformer_cross_attention_layers[i](
                queries, memories[level], memory_pos=memory_pos[level], query_pos=query_pos,
                attn_mask=attn_mask,
            )
            queries = self.interact(i, queries, query_pos, context)
            queries = self.transformer_self_attention_layers[i](queries, query_pos=query_pos)
            queries = self.transformer_ffn_layers[i](queries)
            normed = self.decoder_norm(queries)
            mask_logits, attn_mask = self.predict_masks(
                normed, mask_features, sizes[(i + 1) % self.num_levels]
            )
            stage_queries.append(normed)
            stage_masks.append(mask_logits)
            queries = self.after_prediction(i + 1, queries, mask_logits, context)
        return DecoderOutput(stage_queries, stage_masks, queries)


def masked_decoder_key_map(decoder: MaskedAttentionDecoder,
                           prefix: str = "sem_seg_head.predictor.",
                           query_feat_name: str = "query_feat") -> dict[str, str]:
    """Mask2Former checkpoint key -> our state-dict key, for every tensor of `decoder`.

    Names are identical; only the prefix is added. Releases before Mask2Former's
    renaming call `query_feat` `static_query`: pass `query_feat_name="static_query"` for
    those (the caller names the checkpoint's origin; keys are never sniffed). The
    checkpoint's `class_embed` belongs to the method's head and is not in this map.
    """
    mapping = {}
    for key in decoder.state_dict():
        source = key
        if key.startswith("query_feat."):
            source = query_feat_name + key[len("query_feat"):]
        mapping[prefix + source] = key
    return mapping
