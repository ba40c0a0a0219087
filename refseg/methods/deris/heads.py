"""Existence head (DeRIS Eq. 1; released code: the understanding branch's ``nt_embed``):
the logit that the sentence refers to something in the image, supervised with BCE (Sec.
3.4) and not used by the decision (Sec. 4.3.3: NSC makes it unnecessary at test time).

Its input is one small module per row of the paper's Supp. Table 9, chosen by
``DerisConfig.existence_source``:

- ``query`` (the paper's): the final loopback queries pass through text-aware layers
  (`InstanceTextRelation`, as in the cognition layer: self-attention, cross-attention to
  the text tokens, FFN; post-norm) and a final LayerNorm, are scored by a linear layer,
  and the scores are averaged over queries (= pooling the queries before the linear
  layer);
- ``image``: the mean of the projected BEiT-3 patch features;
- ``cls``: BEiT-3's vision CLS token.

Legend: B batch, Q queries, L words, C channels, D BEiT-3 channels, h/w BEiT-3 patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refseg.errors import ConfigError
from refseg.methods.deris.cognition import InstanceTextRelation


@dataclass
class ExistenceInputs:
    """Everything an existence source may read.

    Attributes:
        queries: (B, Q, C) queries after the last loopback round.
        text: (B, L, C) projected BEiT-3 text tokens.
        pad_mask: (B, L) bool, True at padding.
        image_map: (B, C, h, w) projected BEiT-3 patch features.
        cls: (B, D) BEiT-3 vision CLS token.
    """

    queries: torch.Tensor
    text: torch.Tensor
    pad_mask: torch.Tensor
    image_map: torch.Tensor
    cls: torch.Tensor


class QueryExistence(nn.Module):
    """The paper's source: text-aware layers over the final queries, linear, mean over Q."""

    def __init__(self, *, dim: int, cls_dim: int, num_layers: int, n_heads: int,
                 ffn_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            InstanceTextRelation(d_model=dim, n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: ExistenceInputs) -> torch.Tensor:
        """(B, Q, C) queries, attending to the (B, L, C) words -> (B,) logits."""
        queries = x.queries
        for layer in self.layers:
            queries = layer(queries, x.text, x.pad_mask)
        return self.linear(self.norm(queries)).squeeze(-1).mean(dim=1)


class ImageExistence(nn.Module):
    """Supp. Table 9 "image feat": linear on the mean of the BEiT-3 patch features."""

    def __init__(self, *, dim: int, cls_dim: int, **_):
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: ExistenceInputs) -> torch.Tensor:
        """(B, C, h, w) patch features -> (B,) logits."""
        return self.linear(x.image_map.mean(dim=(2, 3))).squeeze(-1)


class ClsExistence(nn.Module):
    """Supp. Table 9 "cls feat": linear on BEiT-3's vision CLS token."""

    def __init__(self, *, dim: int, cls_dim: int, **_):
        super().__init__()
        self.linear = nn.Linear(cls_dim, 1)

    def forward(self, x: ExistenceInputs) -> torch.Tensor:
        """(B, D) vision CLS token -> (B,) logits."""
        return self.linear(x.cls).squeeze(-1)


EXISTENCE_SOURCES = {"query": QueryExistence, "image": ImageExistence, "cls": ClsExistence}


def build_existence_head(source: str, *, dim: int, cls_dim: int, num_layers: int,
                         n_heads: int, ffn_dim: int, dropout: float) -> nn.Module:
    """The head of ``source``; its forward maps `ExistenceInputs` to (B,) existence logits."""
    if source not in EXISTENCE_SOURCES:
        raise ConfigError(f"model.existence_source={source!r}: expected one of "
                          f"{', '.join(EXISTENCE_SOURCES)}")
    return EXISTENCE_SOURCES[source](dim=dim, cls_dim=cls_dim, num_layers=num_layers,
                                     n_heads=n_heads, ffn_dim=ffn_dim, dropout=dropout)
