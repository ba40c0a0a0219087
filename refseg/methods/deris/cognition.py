"""The cognition layer of the loopback synergy and the refer classifier (DeRIS Sec. 3.2.3,
Fig. 5 left; released code: ``forward_loopback_interaction_v2``).

One round, given the perception queries Q_p and their mask logits M:

    P   = AvgPool(sigmoid(M) * F)                  mask-pooled position embedding (Eq. 4)
    Q'  = SelfAttn(Q_p + P, Q_p + P, Q_p)          instance-instance relation     (Eq. 5)
    Q_c = FFN(CrossAttn(SelfAttn(Q'), T))          instance-text relation (T: text tokens)
    s   = softmax(Linear(Q_c))[..., referent]      refer classifier (2-way)
    Q   = Linear([Q' ; Q_c])                       C1, the fused query of the next round (Eq. 2)

F is the fused mask feature map (perception pixel decoder + BEiT-3 patches, Eq. 3).

Legend: B batch, Q queries, L words, C channels, H/W mask-feature size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refseg.methods.deris.config import POOL_NORMS, POSITION_ROLES
from refseg.modeling.decoders import (
    CrossAttentionLayer,
    FFNLayer,
    SelfAttentionLayer,
    open_empty_rows,
)

REFERENT = 0  # class index of "referred to" in the 2-way classifier; 1 is "not referred"


def mask_pooled_position(mask_logits: torch.Tensor, features: torch.Tensor,
                         stride: int, norm: str = "image") -> torch.Tensor:
    """P = AvgPool(sigmoid(M) * F) per query (DeRIS Eq. 4).

    As in the released code both maps are first reduced by ``stride`` (masks bilinearly,
    features by average pooling). ``norm="image"`` (released) averages the product over
    all pixels; ``"mask"`` divides by the mask's soft area instead (the mean feature under
    the mask, whatever the object's size).

    Args:
        mask_logits: (B, Q, H, W) mask logits of the round.
        features: (B, C, H, W) fused mask features.
        stride: extra reduction (the released code: 4).
        norm: ``image`` | ``mask``.

    Returns:
        (B, Q, C).
    """
    if stride > 1:
        h, w = features.shape[-2] // stride, features.shape[-1] // stride
        features = F.avg_pool2d(features, stride)[..., :h, :w]
        mask_logits = F.interpolate(mask_logits, size=(h, w), mode="bilinear",
                                    align_corners=False)
    weights = mask_logits.sigmoid()
    pooled = torch.einsum("bqhw,bchw->bqc", weights, features.to(weights.dtype))
    if norm == "mask":
        return pooled / weights.sum(dim=(2, 3))[..., None].clamp(min=1.0)
    return pooled / (weights.shape[-2] * weights.shape[-1])


class InstanceTextRelation(nn.Module):
    """Self-attention among queries, cross-attention queries -> text tokens (padding never
    attended to, but an all-padding row is opened rather than NaN), FFN; post-norm (the
    released ``GlobalDecoderLayer``)."""

    def __init__(self, *, d_model: int, n_heads: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = SelfAttentionLayer(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.cross_attn = CrossAttentionLayer(d_model=d_model, n_heads=n_heads, dropout=dropout)
        self.ffn = FFNLayer(d_model=d_model, ffn_dim=ffn_dim, dropout=dropout)

    def forward(self, queries: torch.Tensor, text: torch.Tensor,
                pad_mask: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) queries, (B, L, C) text, (B, L) padding -> (B, Q, C) Q_c."""
        queries = self.self_attn(queries)
        queries = self.cross_attn(queries, text, key_padding_mask=open_empty_rows(pad_mask))
        return self.ffn(queries)


class CognitionLayer(nn.Module):
    """One round's cognition layer: instance-instance then instance-text relation.

    Args:
        d_model: C.
        n_heads: attention heads.
        ffn_dim: FFN width of the instance-text relation.
        pool_stride: extra stride of the mask-pooled position embedding.
        pool_norm: ``image`` (released) or ``mask``, see `mask_pooled_position`.
        position_role: ``key`` (released): P is added to the queries and keys of the
            instance-instance attention only; ``content``: P is added to the queries
            themselves before it, so the pooled features reach the refer classifier.
    """

    def __init__(self, *, d_model: int, n_heads: int, ffn_dim: int, pool_stride: int = 4,
                 pool_norm: str = "image", position_role: str = "key", dropout: float = 0.0):
        super().__init__()
        if pool_norm not in POOL_NORMS or position_role not in POSITION_ROLES:
            raise ValueError(f"CognitionLayer: pool_norm {pool_norm!r} / position_role "
                             f"{position_role!r} not in {POOL_NORMS} / {POSITION_ROLES}")
        self.pool_stride = pool_stride
        self.pool_norm = pool_norm
        self.position_role = position_role
        self.instance_relation = SelfAttentionLayer(d_model=d_model, n_heads=n_heads,
                                                    dropout=dropout)
        self.text_relation = InstanceTextRelation(d_model=d_model, n_heads=n_heads,
                                                  ffn_dim=ffn_dim, dropout=dropout)

    def forward(self, queries: torch.Tensor, mask_logits: torch.Tensor, features: torch.Tensor,
                text: torch.Tensor, pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Relate the perception queries to each other and to the sentence.

        Args:
            queries: (B, Q, C) perception queries Q_p (before the decoder norm).
            mask_logits: (B, Q, H, W) their masks.
            features: (B, C, H, W) fused mask features.
            text: (B, L, C) projected BEiT-3 text tokens.
            pad_mask: (B, L) bool, True at padding.

        Returns:
            Q' (B, Q, C) after the instance-instance relation, and Q_c (B, Q, C) after the
            instance-text relation.
        """
        position = mask_pooled_position(mask_logits, features, self.pool_stride, self.pool_norm)
        if self.position_role == "content":
            related = self.instance_relation(queries + position)
        else:
            related = self.instance_relation(queries, query_pos=position)
        return related, self.text_relation(related, text, pad_mask)


class QueryFusion(nn.Module):
    """C1 (DeRIS Eq. 2): the next round's query from [Q' ; Q_c] by a linear layer."""

    def __init__(self, *, d_model: int):
        super().__init__()
        self.proj = nn.Linear(2 * d_model, d_model)

    def forward(self, related: torch.Tensor, cognition: torch.Tensor) -> torch.Tensor:
        """(B, Q, C), (B, Q, C) -> (B, Q, C)."""
        return self.proj(torch.cat([related, cognition], dim=-1))


class ReferClassifier(nn.Module):
    """2-way refer classification of every cognition query (one linear layer shared by all
    rounds, as released); class `REFERENT` is "referred to by the sentence"."""

    def __init__(self, *, d_model: int):
        super().__init__()
        self.linear = nn.Linear(d_model, 2)

    def forward(self, cognition: torch.Tensor) -> torch.Tensor:
        """(B, Q, C) -> (B, Q, 2) logits."""
        return self.linear(cognition)


def refer_probability(refer_logits: torch.Tensor) -> torch.Tensor:
    """(B, Q, 2) logits -> (B, Q) probability of being a referent (softmax)."""
    return refer_logits.float().softmax(-1)[..., REFERENT]
