"""Bidirectional object-text cross-attention and the decoder that uses it (InstAlign
Sec. 3.1 and Supp. 11.2).

Each decoder block: masked cross-attention to one visual scale -> object-text
cross-attention (queries attend to the words AND the words attend to the queries; both are
updated, word padding is masked) -> self-attention -> FFN. The shared
`MaskedAttentionDecoder` runs the block; InstAlign supplies its ``interact`` step and keeps
the words of every block for Phrase-Object Alignment.

Legend: B batch, Q queries, L words, C hidden channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from refseg.modeling.decoders import (
    CrossAttentionLayer,
    MaskedAttentionDecoder,
    open_empty_rows,
)


class ObjectTextCrossAttention(nn.Module):
    """Queries attend to words and words attend to queries, from the same inputs.

    Both directions are post-norm residual cross-attention layers (Mask2Former's
    `CrossAttentionLayer`); the query positions are added to the queries on both sides.
    ``update_words=False`` builds the first direction only and passes the words through:
    the last block's words feed POA alone, so without POA nothing would train that half
    (and under DistributedDataParallel an output without a gradient stalls the reduction).
    """

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0,
                 update_words: bool = True):
        super().__init__()
        self.query_from_text = CrossAttentionLayer(d_model=d_model, n_heads=n_heads,
                                                   dropout=dropout)
        self.text_from_query = CrossAttentionLayer(
            d_model=d_model, n_heads=n_heads, dropout=dropout) if update_words else None

    def forward(self, queries: torch.Tensor, query_pos: torch.Tensor, words: torch.Tensor,
                pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update both sides.

        Args:
            queries: (B, Q, C) object queries.
            query_pos: (B, Q, C) their learned positions.
            words: (B, L, C) word features.
            pad_mask: (B, L) bool, True at padding: never attended to, and kept at zero.

        Returns:
            queries (B, Q, C) and words (B, L, C), both refined (words as they came
            without ``update_words``).
        """
        new_queries = self.query_from_text(queries, words, query_pos=query_pos,
                                           key_padding_mask=open_empty_rows(pad_mask))
        if self.text_from_query is None:
            return new_queries, words
        new_words = self.text_from_query(words, queries, memory_pos=query_pos)
        return new_queries, new_words.masked_fill(pad_mask[..., None], 0.0)


@dataclass
class TextContext:
    """The text side carried through the decoder.

    Attributes:
        words: (B, L, C) current word features (updated by every block).
        pad_mask: (B, L) bool, True at padding.
        per_block: words after each block, for POA (one (B, L, C) per block).
    """

    words: torch.Tensor
    pad_mask: torch.Tensor
    per_block: list[torch.Tensor] = field(default_factory=list)


class InstAlignDecoder(MaskedAttentionDecoder):
    """Mask2Former's masked-attention decoder with an object-text cross-attention step in
    every block (the shared decoder's ``interact`` hook). ``last_words`` False: the last
    block leaves the words as they are (nothing reads them without POA)."""

    def __init__(self, *, n_heads: int = 8, num_layers: int = 9, hidden_dim: int = 256,
                 dropout: float = 0.0, last_words: bool = True, **kwargs):
        super().__init__(n_heads=n_heads, num_layers=num_layers, hidden_dim=hidden_dim,
                         dropout=dropout, **kwargs)
        self.object_text_layers = nn.ModuleList(
            ObjectTextCrossAttention(d_model=hidden_dim, n_heads=n_heads, dropout=dropout,
                                     update_words=last_words or i < num_layers - 1)
            for i in range(num_layers)
        )

    def interact(self, layer_index: int, queries: torch.Tensor, query_pos: torch.Tensor,
                 context: TextContext) -> torch.Tensor:
        """Block ``layer_index``'s object-text step: queries (B, Q, C) -> (B, Q, C); the
        updated words (B, L, C) replace ``context.words`` and are kept for POA."""
        queries, words = self.object_text_layers[layer_index](
            queries, query_pos, context.words, context.pad_mask
        )
        context.words = words
        context.per_block.append(words)
        return queries
