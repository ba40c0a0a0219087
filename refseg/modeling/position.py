"""2-D sine position embedding (DETR / Mask2Former `PositionEmbeddingSine`).

Legend: B batch, C channels, H/W spatial.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine of the (normalised) row and column index, at geometric frequencies.

    Channels [0, F) encode y and [F, 2F) encode x, F = `num_pos_feats`; within each half,
    even channels are sines and odd channels cosines. Padded pixels do not count, so
    positions run over the valid region only. No parameters.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ):
        super().__init__()
        if num_pos_feats % 2 != 0:
            raise ValueError(f"PositionEmbeddingSine: num_pos_feats {num_pos_feats} must be even")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed the positions of a feature map.

        Args:
            x: (B, C, H, W) feature map; only its shape, device and dtype are used.
            pad_mask: (B, H, W) bool, True at padded pixels; None means no padding.

        Returns:
            (B, 2 * num_pos_feats, H, W) position embedding in x's dtype.
        """
        batch, _, height, width = x.shape
        if pad_mask is None:
            valid = torch.ones(batch, height, width, dtype=torch.bool, device=x.device)
        else:
            valid = ~pad_mask
        # Computed in float32 whatever x's dtype: cumulative indices lose precision in half.
        y_embed = valid.cumsum(1, dtype=torch.float32)
        x_embed = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
        pos_y = y_embed[..., None] / dim_t
        # Interleave sin (even channels) and cos (odd channels).
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(x.dtype)
