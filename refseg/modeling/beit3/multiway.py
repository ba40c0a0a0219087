"""Multiway transformer blocks of BEiT-3 (Wang et al., "Image as a Foreign Language").

Every block shares its self-attention across modalities but keeps two experts of each
projection, layer norm and feed-forward network: the vision expert (the official "A")
for the image tokens and the language expert ("B") for the text tokens. The joint
sequence is ``[CLS + patches | text]``; ``split`` is the number of leading vision tokens
(``0``: text only, ``L``: image only). Sub-LN (Magneto) puts an extra layer norm inside
the attention (before the output projection) and inside the FFN (before fc2).

Legend: B batch, L tokens, C channels.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class Multiway(nn.Module):
    """Two experts of one module: ``vision`` for the first ``split`` tokens, ``language``
    for the rest.

    Args:
        module: the vision expert; the language expert is an independent copy.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.vision = module
        self.language = copy.deepcopy(module)
        for m in self.language.modules():  # independent initialisation of the copy
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, x: torch.Tensor, split: int) -> torch.Tensor:
        """(B, L, *) -> (B, L, *'), expert chosen per token by its position."""
        if split >= x.shape[1]:
            return self.vision(x)
        if split <= 0:
            return self.language(x)
        return torch.cat([self.vision(x[:, :split]), self.language(x[:, split:])], dim=1)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class MultiwayAttention(nn.Module):
    """Self-attention shared by both modalities with expert projections and sub-LN.

    Args:
        dim: channels C.
        heads: attention heads (C divisible by heads).
        eps: layer-norm epsilon.
    """

    def __init__(self, *, dim: int, heads: int, eps: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = Multiway(nn.Linear(dim, dim))
        self.k_proj = Multiway(nn.Linear(dim, dim))
        self.v_proj = Multiway(nn.Linear(dim, dim))
        self.inner_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.out_proj = Multiway(nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, split: int, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """Attention over the joint sequence; padded keys get no weight.

        Args:
            x: (B, L, C) normalised tokens.
            split: number of leading vision tokens.
            pad_mask: (B, L) bool, True at padding, or None.

        Returns:
            (B, L, C).
        """
        b, n, c = x.shape
        heads = self.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, h, L, C/h)
            return t.view(b, n, heads, c // heads).transpose(1, 2)

        q = split_heads(self.q_proj(x, split))
        k = split_heads(self.k_proj(x, split))
        v = split_heads(self.v_proj(x, split))
        keep = None if pad_mask is None else ~pad_mask[:, None, None, :]  # (B, 1, 1, L)
        # Scale head_dim ** -0.5 as in the reference implementation.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.out_proj(self.inner_norm(out, split), split)


class FeedForward(nn.Module):
    """fc1 -> GELU (exact) -> sub-LN -> fc2: one expert's FFN."""

    def __init__(self, *, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.inner_norm = nn.LayerNorm(hidden, eps=eps)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)."""
        # GELU in float32 as the reference does, so half-precision runs match it.
        h = F.gelu(self.fc1(x).float()).type_as(x)
        return self.fc2(self.inner_norm(h))


class MultiwayBlock(nn.Module):
    """Pre-LN encoder layer: x + Attn(LN(x)), then x + FFN(LN(x)), every LN and FFN an
    expert pair.

    Args:
        dim: channels C.
        heads: attention heads.
        ffn_dim: hidden width of the FFN.
        eps: layer-norm epsilon.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, *, dim: int, heads: int, ffn_dim: int, eps: float, drop_path: float):
        super().__init__()
        self.attn_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.attn = MultiwayAttention(dim=dim, heads=heads, eps=eps)
        self.ffn_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.ffn = Multiway(FeedForward(dim=dim, hidden=ffn_dim, eps=eps))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, split: int, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, C) -> (B, L, C); see `MultiwayAttention.forward` for the arguments."""
        x = x + self.drop_path(self.attn(self.attn_norm(x, split), split, pad_mask))
        return x + self.drop_path(self.ffn(self.ffn_norm(x, split), split))
