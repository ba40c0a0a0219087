"""BEiT-3 image-text encoder (Wang et al., "Image as a Foreign Language", 2023).

One multiway transformer over the joint sequence ``[CLS + patches | text]``; the vision
expert handles the first ``1 + N`` tokens, the language expert the ``L`` text tokens, and
attention is shared. Image-only and text-only inputs use one expert throughout.

Positions follow the reference implementation (fairseq convention): rows 0 and 1 of both
position tables are never used, vision tokens take rows ``2 .. 2 + N`` (row 2 is the
CLS token) and text tokens rows ``2 .. 2 + L``. Inputs of another size than the
checkpoint's bicubic-interpolate the patch rows of the vision table.

Legend: B batch, L text tokens, N patches, C channels, H/W spatial, h/w patch grid.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from refseg.modeling.beit3.multiway import Multiway, MultiwayBlock
from refseg.modeling.contracts import TextFeatures

POSITION_OFFSET = 2  # fairseq reserves rows 0 and 1 of every position table


@dataclass
class Beit3Config:
    """Sizes of a BEiT-3 encoder; defaults are BEiT-3 base at 224.

    ``img_size`` is the checkpoint's native input side (its position table); any other
    input size is interpolated at run time.
    """

    img_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 64010
    max_text_positions: int = 1024
    eps: float = 1e-5
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False


def beit3_base(**overrides) -> Beit3Config:
    """BEiT-3 base: 12 layers, 768 channels, 12 heads, FFN 3072."""
    return dataclasses.replace(Beit3Config(), **overrides)


def beit3_large(**overrides) -> Beit3Config:
    """BEiT-3 large: 24 layers, 1024 channels, 16 heads, FFN 4096."""
    cfg = Beit3Config(dim=1024, depth=24, heads=16, ffn_dim=4096)
    return dataclasses.replace(cfg, **overrides)


def beit3_tiny(**overrides) -> Beit3Config:
    """A few-thousand-parameter BEiT-3 for offline CPU tests (same code, small numbers)."""
    cfg = Beit3Config(
        img_size=32, patch_size=8, dim=32, depth=2, heads=4, ffn_dim=64, vocab_size=512,
        max_text_positions=64,
    )
    return dataclasses.replace(cfg, **overrides)


@dataclass
class Beit3Output:
    """Encoder output, split back into modalities.

    Attributes:
        image_tokens: (B, 1 + N, C) CLS then patches in row-major grid order, or None.
        text_tokens: (B, L, C), or None. Rows at padding are not meaningful: honour the
            padding mask.
        grid: (h, w) patch grid of the image tokens ((0, 0) without an image).
    """

    image_tokens: torch.Tensor | None
    text_tokens: torch.Tensor | None
    grid: tuple[int, int]

    @property
    def cls(self) -> torch.Tensor:
        """(B, C) vision CLS token."""
        return self.image_tokens[:, 0]

    def patch_map(self) -> torch.Tensor:
        """(B, C, h, w) patch tokens as a feature map."""
        return tokens_to_map(self.image_tokens[:, 1:], self.grid)

    def text_features(self, pad_mask: torch.Tensor) -> TextFeatures:
        """Text tokens in the shared contract; the sentence feature is the BOS token's
        output (the language CLS of BEiT-3 retrieval)."""
        return TextFeatures(self.text_tokens, pad_mask, self.text_tokens[:, 0])


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) row-major patch tokens -> (B, C, h, w)."""
    b, n, c = tokens.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


def resize_patch_positions(
    table: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]
) -> torch.Tensor:
    """Bicubic interpolation of patch position embeddings (docs/beit3.md, Positions).

    Args:
        table: (src_h * src_w, C) patch rows of the vision position table.
        src_grid: (src_h, src_w) grid the table was trained at.
        dst_grid: (h, w) grid of the input.

    Returns:
        (h * w, C), computed in float32 and cast back to ``table``'s dtype.
    """
    c = table.shape[1]
    grid = table.float().reshape(1, *src_grid, c).permute(0, 3, 1, 2)  # (1, C, sh, sw)
    grid = F.interpolate(grid, size=dst_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(-1, c).to(table.dtype)


class Beit3Encoder(nn.Module):
    """BEiT-3 multiway transformer as an image-text encoder.

    Args:
        img_size: native input side (the position table covers its patch grid).
        patch_size: patch side; the input is cropped to a multiple of it.
        dim: channels C.
        depth: number of multiway blocks.
        heads: attention heads.
        ffn_dim: FFN hidden width.
        vocab_size: rows of the token embedding.
        max_text_positions: rows of the text position table (text length <= rows - 2).
        eps: layer-norm epsilon (1e-5).
        drop_path_rate: stochastic depth, linear from 0 at the first block to this.
        grad_checkpointing: recompute blocks in the backward pass to save memory.
    """

    def __init__(
        self,
        *,
        img_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        ffn_dim: int,
        vocab_size: int,
        max_text_positions: int = 1024,
        eps: float = 1e-5,
        drop_path_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ):
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        self.native_grid = (img_size // patch_size, img_size // patch_size)
        num_patches = self.native_grid[0] * self.native_grid[1]
        self.grad_checkpointing = grad_checkpointing

        self.text_embed = nn.Embedding(vocab_size, dim)
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.vision_pos = nn.Embedding(num_patches + 1 + POSITION_OFFSET, dim)
        self.text_pos = nn.Embedding(max_text_positions, dim)
        rates = np.linspace(0.0, drop_path_rate, depth)
        self.layers = nn.ModuleList(
            MultiwayBlock(dim=dim, heads=heads, ffn_dim=ffn_dim, eps=eps, drop_path=float(r))
            for r in rates
        )
        self.final_norm = Multiway(nn.LayerNorm(dim, eps=eps))
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @classmethod
    def from_config(cls, cfg: Beit3Config) -> "Beit3Encoder":
        return cls(**dataclasses.asdict(cfg))

    @property
    def max_text_length(self) -> int:
        return self.text_pos.num_embeddings - POSITION_OFFSET

    def embed_image(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> (B, 1 + N, C) CLS + patches with positions, and the grid (h, w)."""
        x = self.patch_embed(images)  # (B, C, h, w)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        table = self.vision_pos.weight
        cls_pos = table[POSITION_OFFSET : POSITION_OFFSET + 1]
        patch_pos = table[POSITION_OFFSET + 1 :]
        if grid != self.native_grid:
            patch_pos = resize_patch_positions(patch_pos, self.native_grid, grid)
        return x + torch.cat([cls_pos, patch_pos], dim=0), grid

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, C) token + position embeddings."""
        n = input_ids.shape[1]
        if n > self.max_text_length:
            raise ValueError(f"text of {n} tokens exceeds the {self.max_text_length} positions")
        pos = self.text_pos.weight[POSITION_OFFSET : POSITION_OFFSET + n]
        return self.text_embed(input_ids) + pos

    def forward(
        self,
        images: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_pad_mask: torch.Tensor | None = None,
    ) -> Beit3Output:
        """Encode an image, a text, or both jointly.

        Args:
            images: (B, 3, H, W) normalised images, or None.
            input_ids: (B, L) token ids, or None.
            text_pad_mask: (B, L) bool, True at padding (never attended to), or None.

        Returns:
            `Beit3Output` with the tokens of each given modality.
        """
        if images is None and input_ids is None:
            raise ValueError("BEiT-3 needs an image, a text, or both")
        parts, grid, split = [], (0, 0), 0
        if images is not None:
            vision, grid = self.embed_image(images)
            parts.append(vision)
            split = vision.shape[1]
        pad_mask = None
        if input_ids is not None:
            parts.append(self.embed_text(input_ids))
            if text_pad_mask is not None:
                pad_mask = text_pad_mask.bool()
                if split:
                    vision_keep = pad_mask.new_zeros(pad_mask.shape[0], split)
                    pad_mask = torch.cat([vision_keep, pad_mask], dim=1)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[..., None], 0.0)  # padded inputs start at zero
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, split, pad_mask, use_reentrant=False)
            else:
                x = layer(x, split, pad_mask)
        x = self.final_norm(x, split)
        image_tokens = x[:, :split] if images is not None else None
        text_tokens = x[:, split:] if input_ids is not None else None
        return Beit3Output(image_tokens, text_tokens, grid)


def _init_weights(m: nn.Module) -> None:
    # BEiT-3's initialisation (truncated normal 0.02); only matters without a checkpoint.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
