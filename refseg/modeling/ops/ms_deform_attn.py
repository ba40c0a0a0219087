"""Multi-scale deformable attention (Deformable DETR, Zhu et al. 2021, Eq. 3), pure PyTorch.

Each query attends to a few points per head and per level, placed around its reference
point by learned offsets; values at the points are read by bilinear interpolation
(`grid_sample`, one call per level over every head at once) and summed with learned
weights that are normalised over all levels and points of a head. No compiled op.

Legend: B batch, Q queries, S flattened value tokens of all levels, Hd heads, Cd channels
per head, Lv levels, P points per head and level, C = Hd * Cd model channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SpatialShapes = torch.Tensor | Sequence[tuple[int, int]]


def level_shapes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """(H_l, W_l) of every level as Python ints (one host sync for a tensor input)."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def level_starts(shapes: Sequence[tuple[int, int]]) -> list[int]:
    """Offset of each level's first token in the flattened value sequence."""
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    return starts


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    The output is read as (B, Q, Hd*Cd), a transpose of the (B*Hd, Cd, Q) sums, so its
    gradient arrives strided; one copy here at (B*Hd, Cd, Q) spares grid_sample's backward
    a copy of the P-times larger per-point gradient at every level.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention core: weighted sum of bilinearly sampled values.

    Out-of-map points read zeros (`padding_mode="zeros"`), as the CUDA kernel does.

    Args:
        value: (B, S, Hd, Cd) per-head values, levels flattened row-major one after another.
        spatial_shapes: (Lv, 2) (H_l, W_l) per level, a tensor or a list of pairs;
            sum of H_l * W_l must equal S.
        sampling_locations: (B, Q, Hd, Lv, P, 2) points as (x, y) in [0, 1] of each
            level's map, 0 at the outer edge of the first pixel (align_corners=False).
        attention_weights: (B, Q, Hd, Lv, P) weights (softmax over Lv * P in the module).

    Returns:
        (B, Q, Hd * Cd) attended values, heads concatenated.
    """
    shapes = level_shapes(spatial_shapes)
    batch, num_tokens, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    if sum(h * w for h, w in shapes) != num_tokens or len(shapes) != num_levels:
        raise ValueError(
            f"ms_deform_attn: levels {shapes} do not match value tokens {num_tokens} "
            f"and {num_levels} sampling levels"
        )
    # grid_sample reads [-1, 1]; heads fold into the batch so one call serves them all.
    # (B, Q, Hd, Lv, P, 2) -> (B*Hd, Lv, Q, P, 2) and (B, Q, Hd, Lv, P) -> (B*Hd, Lv, 1, Q, P),
    # made contiguous once: a strided weight would make every per-level product, and so
    # grid_sample's incoming gradient, strided too, which its backward then copies.
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 1, 4, 5).reshape(
        batch * heads, num_levels, num_queries, num_points, 2
    )
    weights = attention_weights.permute(0, 2, 3, 1, 4).reshape(
        batch * heads, num_levels, 1, num_queries, num_points
    )
    output = None
    # split (not slicing): its backward is one concatenation, not a zero-filled copy per level.
    level_values = value.split([h * w for h, w in shapes], dim=1)
    for level, (level_value, (h, w)) in enumerate(zip(level_values, shapes)):
        # (B, h*w, Hd, Cd) -> (B, Hd, Cd, h*w) -> (B*Hd, Cd, h, w)
        level_value = level_value.permute(0, 2, 3, 1).reshape(batch * heads, head_dim, h, w)
        sampled = F.grid_sample(
            level_value, grids[:, level], mode="bilinear", padding_mode="zeros",
            align_corners=False,
        )  # (B*Hd, Cd, Q, P)
        # Summing level by level avoids stacking the samples of all levels.
        level_out = (sampled * weights[:, level]).sum(-1)  # (B*Hd, Cd, Q)
        output = level_out if output is None else output + level_out
    # (B*Hd, Cd, Q) -> (B, Hd*Cd, Q) -> (B, Q, Hd*Cd)
    output = _ContiguousGrad.apply(output)
    return output.view(batch, heads * head_dim, num_queries).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR Eq. 3).

    Parameter names and initialisation follow Deformable DETR / Mask2Former
    (`sampling_offsets`, `attention_weights`, `value_proj`, `output_proj`), so their
    checkpoints load with an identity key map.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model {d_model} not divisible by n_heads {n_heads}")
        self.d_model, self.n_levels = d_model, n_levels
        self.n_heads, self.n_points = n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR init: head h starts with points on a ray at angle 2*pi*h/Hd."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # onto the unit square's border
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor | Sequence[int] | None = None,
        value_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from every query to sampled points of every level.

        Args:
            query: (B, Q, C) queries (position embedding already added).
            reference_points: (B, Q, Lv, 2) points (x, y) in [0, 1] per level, offsets
                measured in pixels of that level; or (B, Q, Lv, 4) boxes (cx, cy, w, h),
                offsets measured in box sizes (as Deformable DETR's refinement).
            value: (B, S, C) flattened maps of all levels.
            spatial_shapes: (Lv, 2) (H_l, W_l) per level (a list of pairs avoids a sync).
            level_start_index: (Lv,) offsets of the levels in `value`; redundant with
                `spatial_shapes`, accepted for Deformable DETR call sites and checked.
            value_pad_mask: (B, S) bool, True at padded value tokens (they read as zero).

        Returns:
            (B, Q, C) attended features.
        """
        shapes = level_shapes(spatial_shapes)
        batch, num_queries, _ = query.shape
        num_tokens = value.shape[1]
        if len(shapes) != self.n_levels:
            raise ValueError(f"MSDeformAttn: got {len(shapes)} levels, built for {self.n_levels}")
        if level_start_index is not None:
            given = [int(i) for i in level_start_index]
            if given != level_starts(shapes):
                raise ValueError(f"MSDeformAttn: level_start_index {given} != starts of {shapes}")

        value = self.value_proj(value)
        if value_pad_mask is not None:
            value = value.masked_fill(value_pad_mask[..., None], 0.0)
        value = value.view(batch, num_tokens, self.n_heads, self.d_model // self.n_heads)

        offsets = self.sampling_offsets(query).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        # Softmax over all levels and points of a head (Eq. 3: sum_l sum_k A = 1).
        weights = self.attention_weights(query).view(batch, num_queries, self.n_heads, -1)
        weights = weights.softmax(-1).view(
            batch, num_queries, self.n_heads, self.n_levels, self.n_points
        )

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l).
            normaliser = torch.tensor(
                [[w, h] for h, w in shapes], dtype=offsets.dtype, device=offsets.device
            )
            locations = (
                reference_points[:, :, None, :, None, :]
                + offsets / normaliser[None, None, None, :, None, :]
            )
        elif reference_points.shape[-1] == 4:
            locations = (
                reference_points[:, :, None, :, None, :2]
                + offsets / self.n_points * reference_points[:, :, None, :, None, 2:] * 0.5
            )
        else:
            raise ValueError(
                "MSDeformAttn: reference_points last dim must be 2 or 4, "
                f"got {reference_points.shape[-1]}"
            )
        return self.output_proj(ms_deform_attn(value, shapes, locations, weights))
