"""Swin Transformer backbone (Liu et al. 2021) as Mask2Former uses it.

Four stages of (shifted-)window attention; each output is taken *before* the stage's patch
merging and passed through a per-stage LayerNorm (``norm0..norm3``), giving maps at strides
4/8/16/32 with C, 2C, 4C, 8C channels.

Written here rather than wrapping ``transformers.SwinModel`` because (1) that module's
parameter names differ between transformers 4.x and 5.x while its files keep the old names,
so key maps into it would depend on the installed version; (2) it applies stochastic depth
to the attention branch only, where the original Swin and Mask2Former train with it on both
branches; (3) unless told otherwise it permanently shrinks a block's window the first time an
input is smaller than the window. Module names here follow the original Swin release
(``patch_embed``, ``layers.{s}.blocks.{b}.attn.qkv`` ...), so the original and Mask2Former
files load with an identity key map; tests check numerical parity with
``transformers.SwinModel`` on the same weights.

Legend: B batch, C channels, H/W spatial, N tokens per window (window_size**2), h heads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from refseg.errors import ConfigError
from refseg.modeling.contracts import FeatureSpec

# (stage index, its blocks' output) -> (the map its norm then returns, an addend to the
# blocks' output before downsampling, or None).
BackboneFuse = Callable[[int, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]

# The value the original implementation adds to attention logits across shifted-window
# region borders (not -inf: kept for numerical parity with released weights).
_SHIFT_MASK_VALUE = -100.0


@dataclass(frozen=True)
class SwinConfig:
    """Architecture of a Swin backbone.

    Attributes:
        embed_dim: C, channels of stage 1 (stage s has C * 2**s).
        depths: blocks per stage (four stages).
        num_heads: attention heads per stage.
        window_size: side of the attention windows, in tokens.
        patch_size: side of the patches of the stem (stride of stage 1).
        mlp_ratio: hidden width of the block MLP relative to its input.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0.
        pretrain_image_size: the resolution the released weights were trained at
            (informational: inputs of any size work).
        grad_checkpoint: recompute blocks in the backward pass to save memory.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 4
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.3
    pretrain_image_size: int = 224
    grad_checkpoint: bool = False

    def __post_init__(self):
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ConfigError(
                f"swin: depths {self.depths} and num_heads {self.num_heads} must have 4 stages"
            )
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ConfigError(
                    f"swin: stage {stage} width {self.embed_dim * 2**stage} is not divisible "
                    f"by num_heads {heads}"
                )
        if self.window_size < 2:
            raise ConfigError(f"swin: window_size {self.window_size} must be >= 2")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"swin: drop_path_rate {self.drop_path_rate} must be in [0, 1)")

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**s for s in range(4))

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.patch_size * 2**s for s in range(4))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch of a random share ``p`` of the samples.

    Args:
        x: (B, ...) the branch output.
    """
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of ``window`` -> (B * nW, N, C), windows row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, C)


def window_reverse(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, N, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shifted_window_mask(H: int, W: int, window: int, shift: int, device) -> torch.Tensor:
    """Attention bias that keeps shifted windows from mixing regions that the cyclic shift
    brought together (Swin, Sec. 3.2 "efficient batch computation for shifted configuration").

    Args:
        H, W: padded map size (multiples of ``window``).

    Returns:
        (nW, N, N) 0 within a region, ``-100`` across regions.
    """
    rows = torch.arange(H, device=device)
    cols = torch.arange(W, device=device)
    # Region index along each axis: 0 before the last window, 1 within it but before the
    # shifted strip, 2 in the strip that wrapped around.
    row_region = (rows >= H - window).long() + (rows >= H - shift).long()
    col_region = (cols >= W - window).long() + (cols >= W - shift).long()
    region = (row_region[:, None] * 3 + col_region[None, :]).float()  # (H, W)
    region = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, N)
    differs = region[:, None, :] != region[:, :, None]
    return torch.zeros(differs.shape, device=device).masked_fill(differs, _SHIFT_MASK_VALUE)


class WindowAttention(nn.Module):
    """Multi-head self-attention within windows, with a learned relative position bias."""

    def __init__(self, *, dim: int, num_heads: int, window_size: int):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        side = 2 * window_size - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(side * side, num_heads))
        # Rebuilt from the window size, hence not saved (files that carry it have it skipped).
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def position_bias(self) -> torch.Tensor:
        """(h, N, N) bias of every query/key pair of a window."""
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(N, N, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: (B * nW, N, C) windows, image-major (all windows of image 0 first).
            shift_mask: (nW, N, N) from `shifted_window_mask`, or None (regular windows).

        Returns:
            (B * nW, N, C).
        """
        BW, N, C = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).view(BW, N, 3, h, C // h).permute(2, 0, 3, 1, 4)  # (BW, h, N, d)
        bias = self.position_bias().unsqueeze(0)  # (1, h, N, N)
        if shift_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            # Fold windows into the head axis so the per-window mask broadcasts over images
            # instead of being copied B times: (B, nW * h, N, d) against (1, nW * h, N, N).
            nW = shift_mask.shape[0]
            mask = (bias + shift_mask.unsqueeze(1)).reshape(1, nW * h, N, N).to(q.dtype)
            q, k, v = (t.reshape(BW // nW, nW * h, N, -1) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.view(BW, h, N, -1)
        return self.proj(out.transpose(1, 2).reshape(BW, N, C))


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) row of the bias table for each (query, key) pair of a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ).flatten(1)  # (2, N)
    delta = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)  # (N, N, 2)
    return delta[..., 0] * (2 * window - 1) + delta[..., 1]


class Mlp(nn.Module):
    def __init__(self, *, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """W-MSA (``shift == 0``) or SW-MSA block, then the MLP; pre-norm residuals (Swin Eq. 3)."""

    def __init__(self, *, dim: int, num_heads: int, window_size: int, shift: int,
                 mlp_ratio: float, drop_path: float):
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim=dim, num_heads=num_heads, window_size=window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim=dim, hidden=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """
        Args:
            x: (B, H, W, C).
            shift_mask: (nW, N, N) for the padded map; used only when this block shifts.
        """
        B, H, W, C = x.shape
        w = self.window_size
        y = self.norm1(x)
        # Pad (after the norm, with zeros, as the original) to whole windows.
        pad_h, pad_w = (-H) % w, (-W) % w
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, w), shift_mask if self.shift else None)
        y = window_reverse(y, w, Hp, Wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        y = y[:, :H, :W, :]
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (4C), normalised and reduced to 2C."""

    def __init__(self, *, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C)."""
        H, W = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        # The order of the released weights: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, *, dim: int, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float, drop_paths: list[float], downsample: bool,
                 grad_checkpoint: bool):
        super().__init__()
        self.window_size = window_size
        self.shift = window_size // 2
        self.grad_checkpoint = grad_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim=dim, num_heads=num_heads, window_size=window_size,
                      shift=0 if i % 2 == 0 else self.shift, mlp_ratio=mlp_ratio,
                      drop_path=drop_paths[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim=dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, H, W, C) -> (stage output (B, H, W, C), input of the next stage)."""
        out = self.run_blocks(x)
        return out, self.next_input(out)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """The stage's blocks: (B, H, W, C) -> (B, H, W, C)."""
        H, W = x.shape[1:3]
        w = self.window_size
        mask = shifted_window_mask(H + (-H) % w, W + (-W) % w, w, self.shift, x.device)
        for block in self.blocks:
            if self.grad_checkpoint and self.training:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x

    def next_input(self, out: torch.Tensor) -> torch.Tensor:
        """Stage output -> input of the next stage (patch merging; none after the last)."""
        return self.downsample(out) if self.downsample is not None else out


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches, projected to C and normalised."""

    def __init__(self, *, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, ceil(H/p), ceil(W/p), C)."""
        H, W = images.shape[-2:]
        p = self.patch_size
        images = F.pad(images, (0, (-W) % p, 0, (-H) % p))
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Swin image backbone returning four maps at strides 4/8/16/32.

    Attributes:
        config: the `SwinConfig`.
        spec: channels (C, 2C, 4C, 8C) and strides (4, 8, 16, 32) of the outputs.
    """

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        self.spec = FeatureSpec(channels=config.channels, strides=config.strides)
        self.patch_embed = PatchEmbed(patch_size=config.patch_size, embed_dim=config.embed_dim)
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        self.layers = nn.ModuleList()
        for s, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            first = sum(config.depths[:s])
            self.layers.append(SwinStage(
                dim=config.channels[s], depth=depth, num_heads=heads,
                window_size=config.window_size, mlp_ratio=config.mlp_ratio,
                drop_paths=rates[first:first + depth], downsample=s < 3,
                grad_checkpoint=config.grad_checkpoint,
            ))
        # Mask2Former's per-output-stage norms (named as in its files).
        for s, channels in enumerate(config.channels):
            self.add_module(f"norm{s}", nn.LayerNorm(channels))
        if not self.patch_embed.proj.weight.is_meta:  # a meta model is only a shape to load into
            self.apply(_init_weights)

    def forward(self, images: torch.Tensor,
                fuse: BackboneFuse | None = None) -> list[torch.Tensor]:
        """
        Args:
            images: (B, 3, H, W) normalised images; H, W multiples of 32 give maps of exactly
                H/s x W/s (other sizes are padded bottom/right, giving ceil(H/s)).
            fuse: optional ``fuse(s, out)`` for every stage s: from the output of its blocks
                (B, H_s, W_s, C_s) to (the map the stage's norm then returns, an addend to
                the blocks' output before it is downsampled, or None); e.g. LAVT's PWAM and
                language gate, in LAVT's and ReLA's order (fuse, then the stage's norm).

        Returns:
            Four maps (B, C_i, H/s_i, W/s_i), ascending stride.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"SwinBackbone expects (B, 3, H, W) images, got {tuple(images.shape)}")
        x = self.patch_embed(images)
        features = []
        for s, stage in enumerate(self.layers):
            out = stage.run_blocks(x)
            feature = out
            if fuse is not None:
                feature, addend = fuse(s, out)
                if addend is not None:
                    out = out + addend
            x = stage.next_input(out)
            feature = getattr(self, f"norm{s}")(feature)
            features.append(feature.permute(0, 3, 1, 2).contiguous())
        return features


def _init_weights(module: nn.Module) -> None:
    """The original's initialisation: truncated normal (std 0.02) linears and bias tables."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, WindowAttention):
        nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)


# ---------------------------------------------------------------------------------------
# Named variants (Mask2Former's settings: stochastic depth 0.3).


def swin_nano(**overrides) -> SwinBackbone:
    """A tiny Swin for offline tests and CPU runs (64-128 px inputs): 1.4 M parameters."""
    config = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=4,
                  drop_path_rate=0.1, pretrain_image_size=128)
    return SwinBackbone(SwinConfig(**{**config, **overrides}))


def swin_tiny(**overrides) -> SwinBackbone:
    """Swin-T, window 7, ImageNet 224 weights."""
    return SwinBackbone(SwinConfig(**{**dict(embed_dim=96, depths=(2, 2, 6, 2),
                                             num_heads=(3, 6, 12, 24)), **overrides}))


def swin_small(**overrides) -> SwinBackbone:
    """Swin-S, window 7, ImageNet 224 weights."""
    return SwinBackbone(SwinConfig(**{**dict(embed_dim=96, depths=(2, 2, 18, 2),
                                             num_heads=(3, 6, 12, 24)), **overrides}))


def swin_base(pretrain_image_size: int = 384, **overrides) -> SwinBackbone:
    """Swin-B: window 12 for the 384 weights (Mask2Former's Swin-B), window 7 for 224."""
    windows = {224: 7, 384: 12}
    if pretrain_image_size not in windows:
        raise ConfigError(f"swin_base: pretrain_image_size {pretrain_image_size} not in (224, 384)")
    config = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32),
                  window_size=windows[pretrain_image_size], pretrain_image_size=pretrain_image_size)
    return SwinBackbone(SwinConfig(**{**config, **overrides}))


SWIN_VARIANTS = {
    "swin_nano": swin_nano,
    "swin_tiny": swin_tiny,
    "swin_small": swin_small,
    "swin_base": swin_base,
}
