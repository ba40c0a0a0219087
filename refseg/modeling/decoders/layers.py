"""Transformer decoder building blocks (Mask2Former's layers, batch-first).

Post-norm by default (`x = norm(x + f(x))`), pre-norm on request (`x = x + f(norm(x))`).
Position embeddings are added to queries and keys, never to values (DETR).

Legend: B batch, Q queries, S memory tokens (pixels or words), C channels, Hd heads.
Masks: `attn_mask` (B * Hd, Q, S) or (Q, S) bool, True where attention is blocked;
`key_padding_mask` (B, S) bool, True at padding (e.g. word padding) — always honoured.
A row with every key blocked would give NaN: callers guarantee one open key per row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def open_empty_rows(pad_mask: torch.Tensor) -> torch.Tensor:
    """Key padding mask with every-padded rows opened, so attention never sees a row with
    no key (NaN); such a sentence has no real word, its (zero) tokens are harmless.

    Args:
        pad_mask: (B, L) bool, True at padding.
    """
    return pad_mask & ~pad_mask.all(dim=-1, keepdim=True)


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


def _xavier_matrices(module: nn.Module) -> None:
    """Mask2Former's layer init: xavier-uniform for every matrix."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries with a residual and LayerNorm."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0,
                 pre_norm: bool = False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, x: torch.Tensor, *, query_pos: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, Q, C); query_pos: (B, Q, C); key_padding_mask: (B, Q). Returns (B, Q, C)."""
        h = self.norm(x) if self.pre_norm else x
        q = k = _with_pos(h, query_pos)
        out = self.self_attn(q, k, h, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                             need_weights=False)[0]
        x = x + self.dropout(out)
        return x if self.pre_norm else self.norm(x)


class CrossAttentionLayer(nn.Module):
    """Queries attend to a memory (pixels of one scale, or words) with residual + LayerNorm."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float = 0.0,
                 pre_norm: bool = False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout,
                                                    batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *,
                memory_pos: torch.Tensor | None = None, query_pos: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attend.

        Args:
            x: (B, Q, C) queries.
            memory: (B, S, C) keys/values.
            memory_pos: (B, S, C) added to keys only.
            query_pos: (B, Q, C) added to queries only.
            attn_mask: (B * Hd, Q, S) bool, True = blocked (masked attention).
            key_padding_mask: (B, S) bool, True at padded memory tokens.

        Returns:
            (B, Q, C) updated queries.
        """
        h = self.norm(x) if self.pre_norm else x
        out = self.multihead_attn(_with_pos(h, query_pos), _with_pos(memory, memory_pos), memory,
                                  attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                  need_weights=False)[0]
        x = x + self.dropout(out)
        return x if self.pre_norm else self.norm(x)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with residual + LayerNorm."""

    def __init__(self, *, d_model: int, ffn_dim: int, dropout: float = 0.0,
                 pre_norm: bool = False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        _xavier_matrices(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, C) -> (B, Q, C)."""
        h = self.norm(x) if self.pre_norm else x
        x = x + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(h)))))
        return x if self.pre_norm else self.norm(x)


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., input_dim) -> (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
