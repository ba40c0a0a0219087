"""Mask2Former pixel decoder: a deformable-attention encoder over the coarse scales and an
FPN step down to the mask-feature stride (Cheng et al. 2022, Sec. 3.2 / Deformable DETR).

Legend: B batch, C channels, S flattened tokens of all encoder levels, Lv levels, H/W
spatial. Feature lists passed in are ordered by ascending stride (e.g. 4, 8, 16, 32).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from refseg.errors import ConfigError
from refseg.modeling.ops.ms_deform_attn import MSDeformAttn
from refseg.modeling.position import PositionEmbeddingSine


class ConvNorm(nn.Conv2d):
    """Conv2d followed by a norm and an optional ReLU; the norm is the child `norm`
    (so keys read `weight`, `norm.weight` as in detectron2 checkpoints)."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int,
                 norm_groups: int, relu: bool):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         bias=False)
        self.norm = nn.GroupNorm(norm_groups, out_channels)
        self.relu = relu
        # detectron2's c2_xavier_fill.
        nn.init.kaiming_uniform_(self.weight, a=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then an FFN."""

    def __init__(self, *, d_model: int, ffn_dim: int, n_levels: int, n_heads: int,
                 n_points: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                shapes: list[tuple[int, int]]) -> torch.Tensor:
        """src, pos: (B, S, C); reference_points: (B, S, Lv, 2). Returns (B, S, C)."""
        attended = self.self_attn(src + pos, reference_points, src, shapes)
        src = self.norm1(src + self.dropout1(attended))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


def encoder_reference_points(shapes: list[tuple[int, int]], batch: int,
                             device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Pixel centres of every level as (x, y) in [0, 1], the same point on every level.

    Returns:
        (B, S, Lv, 2) reference points (no padding, so valid ratios are 1).
    """
    points = []
    for h, w in shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        points.append(torch.stack((ref_x.flatten(), ref_y.flatten()), -1))
    points = torch.cat(points, 0)  # (S, 2)
    return points[None, :, None, :].expand(batch, -1, len(shapes), -1)


class DeformableEncoder(nn.Module):
    """Stack of deformable encoder layers over flattened levels, plus the level embedding."""

    def __init__(self, *, d_model: int, num_layers: int, ffn_dim: int, n_levels: int,
                 n_heads: int, n_points: int, dropout: float):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(d_model=d_model, ffn_dim=ffn_dim, n_levels=n_levels,
                                   n_heads=n_heads, n_points=n_points, dropout=dropout)
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Mask2Former's init: xavier for matrices, then deformable attention's own."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[torch.Tensor],
                pos: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Encode all levels jointly.

        Args:
            srcs: Lv maps (B, C, h_l, w_l), in level order (level l gets level_embed[l]).
            pos: Lv position embeddings of the same shapes.

        Returns:
            Lv encoded maps (B, C, h_l, w_l), same order.
        """
        shapes = [(x.shape[2], x.shape[3]) for x in srcs]
        batch = srcs[0].shape[0]
        src = torch.cat([x.flatten(2).transpose(1, 2) for x in srcs], 1)  # (B, S, C)
        pos_flat = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[lvl] for lvl, p in enumerate(pos)], 1
        )
        reference = encoder_reference_points(shapes, batch, src.device, src.dtype)
        for layer in self.layers:
            src = layer(src, pos_flat, reference, shapes)
        maps = src.split([h * w for h, w in shapes], dim=1)
        return [m.transpose(1, 2).reshape(batch, -1, h, w) for m, (h, w) in zip(maps, shapes)]


class PixelDecoderOutput(NamedTuple):
    """What the pixel decoder returns.

    Attributes:
        mask_features: (B, mask_dim, H/common_stride, W/common_stride) per-pixel embeddings.
        multi_scale: `num_output_scales` maps (B, conv_dim, h, w), lowest resolution first
            (strides 32, 16, 8 by default), as the masked-attention decoder consumes them.
    """

    mask_features: torch.Tensor
    multi_scale: list[torch.Tensor]


class MSDeformAttnPixelDecoder(nn.Module):
    """Mask2Former's MSDeformAttn pixel decoder.

    The last `num_transformer_levels` backbone maps are projected (1x1 conv + GroupNorm),
    encoded jointly by deformable self-attention, then finer maps down to
    `common_stride` are added top-down FPN style (lateral 1x1 conv + GN, bilinear upsample,
    3x3 conv + GN + ReLU); a 1x1 conv of the finest map gives the mask features.

    Module names match Mask2Former's up to the renames in `pixel_decoder_key_map`.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        strides: Sequence[int],
        conv_dim: int = 256,
        mask_dim: int = 256,
        num_encoder_layers: int = 6,
        n_heads: int = 8,
        n_points: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.0,
        num_transformer_levels: int = 3,
        common_stride: int = 4,
        num_output_scales: int = 3,
        norm_groups: int = 32,
    ):
        super().__init__()
        in_channels, strides = tuple(in_channels), tuple(strides)
        if len(in_channels) != len(strides) or list(strides) != sorted(strides):
            raise ConfigError(f"pixel decoder: strides {strides} must ascend, one per channel "
                              f"count {in_channels}")
        if not 1 <= num_transformer_levels <= len(strides):
            raise ConfigError(f"pixel decoder: num_transformer_levels {num_transformer_levels} "
                              f"out of 1..{len(strides)}")
        if conv_dim % norm_groups != 0:
            raise ConfigError(f"pixel decoder: conv_dim {conv_dim} not divisible by "
                              f"norm_groups {norm_groups}")
        first_encoded = len(strides) - num_transformer_levels
        # FPN levels: the maps finer than the encoded ones, down to common_stride.
        self.fpn_levels = [i for i in range(first_encoded) if strides[i] >= common_stride]
        if not self.fpn_levels and strides[first_encoded] != common_stride:
            raise ConfigError(f"pixel decoder: no input map at common_stride {common_stride} "
                              f"(strides {strides})")
        if num_output_scales > num_transformer_levels + len(self.fpn_levels):
            raise ConfigError(f"pixel decoder: {num_output_scales} output scales asked, "
                              f"only {num_transformer_levels + len(self.fpn_levels)} built")
        self.in_channels, self.strides = in_channels, strides
        self.num_transformer_levels = num_transformer_levels
        self.num_output_scales = num_output_scales
        self.conv_dim, self.mask_dim = conv_dim, mask_dim

        # input_proj[0] is the coarsest map (Mask2Former's order: res5 first).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1),
                          nn.GroupNorm(norm_groups, conv_dim))
            for c in reversed(in_channels[first_encoded:])
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.encoder = DeformableEncoder(
            d_model=conv_dim, num_layers=num_encoder_layers, ffn_dim=ffn_dim,
            n_levels=num_transformer_levels, n_heads=n_heads, n_points=n_points, dropout=dropout,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        # lateral_convs[i] / output_convs[i] serve input map self.fpn_levels[i].
        self.lateral_convs = nn.ModuleList(
            ConvNorm(in_channels[i], conv_dim, kernel_size=1, norm_groups=norm_groups, relu=False)
            for i in self.fpn_levels
        )
        self.output_convs = nn.ModuleList(
            ConvNorm(conv_dim, conv_dim, kernel_size=3, norm_groups=norm_groups, relu=True)
            for _ in self.fpn_levels
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.constant_(self.mask_features.bias, 0)

    def forward(self, features: Sequence[torch.Tensor]) -> PixelDecoderOutput:
        """Decode backbone maps into mask features and multi-scale decoder inputs.

        Args:
            features: one (B, C_i, H_i, W_i) map per stride, ascending, channels as built.

        Returns:
            PixelDecoderOutput (mask features at common_stride, coarse-first scales).
        """
        got = tuple(f.shape[1] for f in features)
        if got != self.in_channels:
            raise ValueError(f"pixel decoder: input channels {got}, built for {self.in_channels}")
        # The weights' precision under autocast, as Mask2Former's forward_features: deformable
        # sampling and GroupNorm statistics in bf16/fp16 lose small offsets and variances.
        dtype = self.mask_features.weight.dtype
        with torch.autocast(device_type=features[0].device.type, enabled=False):
            return self._decode([f.to(dtype) for f in features])

    def _decode(self, features: list[torch.Tensor]) -> PixelDecoderOutput:
        """`forward` in the weights' dtype: the encoder over the coarse maps, then the FPN."""
        encoded_inputs = list(features[-self.num_transformer_levels:])[::-1]  # coarsest first
        srcs = [proj(x) for proj, x in zip(self.input_proj, encoded_inputs)]
        pos = [self.pe_layer(x) for x in srcs]
        outs = self.encoder(srcs, pos)
        for k in reversed(range(len(self.fpn_levels))):
            x = features[self.fpn_levels[k]]
            lateral = self.lateral_convs[k](x)
            # Top-down: upsample the previous (coarser) output onto this map and add.
            top_down = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear",
                                     align_corners=False)
            outs.append(self.output_convs[k](lateral + top_down))
        return PixelDecoderOutput(self.mask_features(outs[-1]), outs[: self.num_output_scales])


def pixel_decoder_key_map(decoder: MSDeformAttnPixelDecoder,
                          prefix: str = "sem_seg_head.pixel_decoder.") -> dict[str, str]:
    """Mask2Former checkpoint key -> our state-dict key, for every tensor of `decoder`.

    Renames (all else is identical: `input_proj.{i}.{0,1}.*`, `mask_features.*`):
        transformer.level_embed         -> encoder.level_embed
        transformer.encoder.layers.{i}. -> encoder.layers.{i}.
        adapter_{k+1}.                  -> lateral_convs.{k}.   (k-th finest FPN map)
        layer_{k+1}.                    -> output_convs.{k}.

    Args:
        decoder: the module whose keys are to be filled.
        prefix: the checkpoint's prefix before pixel-decoder keys.

    Returns:
        {source key: target key}, one entry per target key.
    """
    mapping = {}
    for key in decoder.state_dict():
        head, _, rest = key.partition(".")
        if key == "encoder.level_embed":
            source = "transformer.level_embed"
        elif head == "encoder":
            source = "transformer.encoder." + rest
        elif head in ("lateral_convs", "output_convs"):
            index, _, tail = rest.partition(".")
            name = "adapter" if head == "lateral_convs" else "layer"
            source = f"{name}_{int(index) + 1}.{tail}"
        else:
            source = key
        mapping[prefix + source] = key
    return mapping

