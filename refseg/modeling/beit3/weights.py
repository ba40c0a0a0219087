"""Strict loading of the official BEiT-3 checkpoints (``beit3_{base,large}_patch16_*.pth``).

Layout (microsoft/unilm beit3, torchscale BEiT3): weights under ``ckpt["model"]``, keys
prefixed ``beit3.``; the expert letter ``A`` is the vision expert, ``B`` the language
expert. Every key is accounted for: mapped, skipped on purpose (``mask_token``, used only
by masked pre-training) or outside ``beit3.`` (e.g. a fine-tuned checkpoint's heads).
Anything else, a missing key or a shape mismatch raises `CheckpointError` with the report.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from refseg.modeling.beit3.model import POSITION_OFFSET, Beit3Encoder, resize_patch_positions
from refseg.modeling.weights import KeyReport, load_mapped, read_torch, state_dict_under

PREFIX = "beit3."
SKIP = {r"vision_embed\.mask_token": "mask token of masked image modelling, unused by the encoder"}
_EXPERTS = {"A": "vision", "B": "language"}


def beit3_key_map(depth: int) -> dict[str, str]:
    """Official key (``beit3.`` removed) -> refseg parameter name, for ``depth`` layers."""
    keys = {
        "text_embed.weight": "text_embed.weight",
        "vision_embed.proj.weight": "patch_embed.weight",
        "vision_embed.proj.bias": "patch_embed.bias",
        "vision_embed.cls_token": "cls_token",
        "encoder.embed_positions.A.weight": "vision_pos.weight",
        "encoder.embed_positions.B.weight": "text_pos.weight",
    }

    def experts(theirs: str, ours: str, leaves: tuple[str, ...]) -> None:
        for letter, expert in _EXPERTS.items():
            for leaf in leaves:
                keys[f"{theirs}.{letter}.{leaf}"] = f"{ours}.{expert}.{leaf}"

    wb = ("weight", "bias")
    for i in range(depth):
        theirs, ours = f"encoder.layers.{i}", f"layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            experts(f"{theirs}.self_attn.{proj}", f"{ours}.attn.{proj}", wb)
        experts(f"{theirs}.self_attn.inner_attn_ln", f"{ours}.attn.inner_norm", wb)
        experts(f"{theirs}.self_attn_layer_norm", f"{ours}.attn_norm", wb)
        experts(f"{theirs}.final_layer_norm", f"{ours}.ffn_norm", wb)
        # The FFN puts the expert letter before its sub-modules (ffn.A.fc1) and calls its
        # sub-LN ffn_layernorm.
        fcs = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")
        experts(f"{theirs}.ffn", f"{ours}.ffn", fcs)
        for letter, expert in _EXPERTS.items():
            for leaf in wb:
                keys[f"{theirs}.ffn.{letter}.ffn_layernorm.{leaf}"] = (
                    f"{ours}.ffn.{expert}.inner_norm.{leaf}"
                )
    experts("encoder.layer_norm", "final_norm", wb)
    return keys


def _resize_vision_positions(key: str, value: torch.Tensor, wanted: torch.Size):
    """Adapter: a vision position table of another square grid, resized bicubically."""
    if key != "vision_pos.weight" or value.shape[1:] != wanted[1:]:
        return None
    extra = POSITION_OFFSET + 1  # two unused fairseq rows and the CLS row
    src, dst = math.isqrt(value.shape[0] - extra), math.isqrt(wanted[0] - extra)
    if src * src != value.shape[0] - extra or dst * dst != wanted[0] - extra:
        return None
    patches = resize_patch_positions(value[extra:], (src, src), (dst, dst))
    return torch.cat([value[:extra], patches])


def load_beit3(model: Beit3Encoder, path: str | Path) -> KeyReport:
    """Load an official BEiT-3 checkpoint into a `Beit3Encoder`, strictly.

    A checkpoint trained at another image size loads into a model of any ``img_size``:
    its patch position rows are bicubically resized (listed in ``report.adapted``).

    Args:
        model: a `Beit3Encoder` of the file's size (base or large).
        path: ``beit3_base_patch16_224.pth`` or another file of the official layout.

    Returns:
        The key report (mask token under ``skipped``, non-``beit3.`` keys under
        ``outside``).

    Raises:
        CheckpointError: unreadable file, no ``model`` entry, or any missing, unexpected
            or mis-shaped key.
    """
    state = state_dict_under(read_torch(path), "model", path)
    key_map = beit3_key_map(len(model.layers))
    return load_mapped(
        model, state, key_map.get, source=path, prefix=PREFIX, skip=SKIP,
        adapt=_resize_vision_positions,
    )
