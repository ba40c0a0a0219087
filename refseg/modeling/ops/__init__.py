"""Attention operators written in plain PyTorch (no compiled extensions)."""

from refseg.modeling.ops.ms_deform_attn import MSDeformAttn, ms_deform_attn

__all__ = ["MSDeformAttn", "ms_deform_attn"]
