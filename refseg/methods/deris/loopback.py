"""Loopback synergy (DeRIS Sec. 3.2, Fig. 5): the perception layers of Mask2Former's masked
decoder and a cognition layer after every one of their mask predictions, exchanging
object queries.

The shared `MaskedAttentionDecoder` runs the perception layers (masked cross-attention to
one scale, self-attention, FFN, mask prediction); its ``after_prediction`` hook runs the
cognition layer on the stage's queries and masks and returns the queries of the next
perception layer. As released, the stage's recorded masks and the next layer's attention
mask come from the perception queries, before the hook.

Synergy forms (the paper's Table 7), ``synergy``:
    ``loopback``: next query = C1([Q' ; Q_c]) (Eq. 2);
    ``p2c``: perception -> cognition only; the perception queries go on unchanged;
    ``c2p``: cognition -> perception; the next query is the cognition query Q_c.

Legend: B batch, Q queries, L words, C channels, H/W mask-feature size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from refseg.errors import ConfigError
from refseg.methods.deris.cognition import CognitionLayer, QueryFusion, ReferClassifier
from refseg.methods.deris.config import SYNERGIES
from refseg.modeling.decoders import MaskedAttentionDecoder


@dataclass
class LoopbackContext:
    """What the cognition layers read, and what they leave for the loss.

    Attributes:
        text: (B, L, C) projected BEiT-3 text tokens.
        pad_mask: (B, L) bool, True at padding.
        mask_features: (B, C, H, W) fused mask features (Eq. 3), for the position pooling.
        refer_logits: (B, Q, 2) per round (stage 0 included), appended by the hook.
        cognition_queries: (B, Q, C) Q_c per round.
    """

    text: torch.Tensor
    pad_mask: torch.Tensor
    mask_features: torch.Tensor
    refer_logits: list[torch.Tensor] = field(default_factory=list)
    cognition_queries: list[torch.Tensor] = field(default_factory=list)


class LoopbackDecoder(MaskedAttentionDecoder):
    """Masked-attention decoder (the perception layers) with a cognition layer per round.

    Args:
        synergy: ``loopback`` | ``p2c`` | ``c2p`` (see the module doc).
        share_cognition: one cognition layer (and fusion) for every round instead of one
            per round (Supp. Table 10).
        fuse_last: whether the last round fuses its two query streams too. Only the
            paper's query-based existence head reads the result; with another existence
            source the last fusion is not built and the last round returns its perception
            queries, so that no parameter is left without a gradient.
        cognition_heads, cognition_ffn_dim: sizes of the cognition layers.
        pool_stride, pool_norm, position_role: of the mask-pooled position embedding
            (see `CognitionLayer`).
        **kwargs: `MaskedAttentionDecoder`'s (``num_layers`` = rounds).
    """

    def __init__(self, *, synergy: str = "loopback", share_cognition: bool = False,
                 fuse_last: bool = True, cognition_heads: int = 8,
                 cognition_ffn_dim: int = 2048, pool_stride: int = 4,
                 pool_norm: str = "image", position_role: str = "key",
                 hidden_dim: int = 256, num_layers: int = 3, **kwargs):
        super().__init__(hidden_dim=hidden_dim, num_layers=num_layers, **kwargs)
        if synergy not in SYNERGIES:
            raise ConfigError(f"model.synergy={synergy!r}: expected one of {', '.join(SYNERGIES)}")
        self.synergy = synergy
        self.share_cognition = share_cognition
        # Stage 0 (the initial queries' prediction) has a round too: num_layers + 1.
        count = 1 if share_cognition else num_layers + 1
        self.cognition_layers = nn.ModuleList(
            CognitionLayer(d_model=hidden_dim, n_heads=cognition_heads,
                           ffn_dim=cognition_ffn_dim, pool_stride=pool_stride,
                           pool_norm=pool_norm, position_role=position_role)
            for _ in range(count)
        )
        # C1 only exists where both query streams are fused (no parameters left unused).
        fusions = count if synergy == "loopback" else 0
        if fusions and not (share_cognition or fuse_last):
            fusions = num_layers  # every round but the last
        self.query_fusion = nn.ModuleList(QueryFusion(d_model=hidden_dim) for _ in range(fusions))
        self.refer_classifier = ReferClassifier(d_model=hidden_dim)

    def _round(self, stage: int) -> int:
        return 0 if self.share_cognition else stage

    def after_prediction(self, stage: int, queries: torch.Tensor, mask_logits: torch.Tensor,
                         context: LoopbackContext) -> torch.Tensor:
        """One cognition layer on stage ``stage``'s queries (B, Q, C) and masks
        (B, Q, H, W); records its refer logits and returns the next round's queries."""
        r = self._round(stage)
        related, cognition = self.cognition_layers[r](
            queries, mask_logits, context.mask_features, context.text, context.pad_mask
        )
        context.refer_logits.append(self.refer_classifier(cognition))
        context.cognition_queries.append(cognition)
        if self.synergy == "loopback" and r < len(self.query_fusion):
            return self.query_fusion[r](related, cognition)
        if self.synergy == "c2p":
            return cognition
        return queries
