"""Load Swin weights from the files users download, in the layout they name.

Layouts:
    ``original``: the Swin release ``.pth`` (``ckpt["model"]``), ImageNet weights.
    ``mask2former``: a Mask2Former model-zoo ``.pkl`` (numpy arrays under ``"model"``),
        backbone under ``backbone.`` with its per-stage norms ``norm0..3``.
    ``hf``: a Hugging Face Swin directory (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``), keys as ``convert_swin_timm_to_pytorch.py`` writes them.

A window size different from the file's is handled by bicubic interpolation of the
relative position bias tables (as Swin's own fine-tuning at 384 does); the report lists
every table resized.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from refseg.errors import CheckpointError, ConfigError
from refseg.modeling.backbones.swin import SwinBackbone, SwinConfig
from refseg.modeling.weights import (
    KeyReport,
    load_mapped,
    read_hf_weights,
    read_pkl_weights,
    read_torch,
    state_dict_under,
)

LAYOUTS = ("original", "mask2former", "hf")

_BLOCK = r"layers\.\d+\.blocks\.\d+\."

# Keys of the original layout that the backbone does not use, and why.
_ORIGINAL_SKIP = {
    _BLOCK + r"attn\.relative_position_index": "buffer, rebuilt from the window size",
    _BLOCK + r"attn_mask": "shifted-window mask, rebuilt for each input size",
    r"head\..*": "ImageNet classifier, not part of the backbone",
    r"norm\.(weight|bias)": "final classification norm (the backbone has norm0..3 instead)",
}
_STAGE_NORMS_FRESH = {
    r"norm[0-3]\.(weight|bias)": "per-stage output norms (Mask2Former's) are not in an ImageNet "
    "checkpoint; they start as identity-affine LayerNorms",
}


def _same_key(key: str) -> str:
    return key


# The Hugging Face names (convert_swin_timm_to_pytorch.py, inverted), prefix removed; q/k/v
# are first concatenated into one qkv (see `_merge_qkv`).
_HF_RULES = [
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embeddings\.norm\.(weight|bias)", r"patch_embed.norm.\1"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.layernorm_before\.(weight|bias)", r"\1.norm1.\2"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.attention\.self\.qkv\.(weight|bias)", r"\1.attn.qkv.\2"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.attention\.self\.relative_position_bias_table",
     r"\1.attn.relative_position_bias_table"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.attention\.output\.dense\.(weight|bias)",
     r"\1.attn.proj.\2"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.layernorm_after\.(weight|bias)", r"\1.norm2.\2"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.intermediate\.dense\.(weight|bias)", r"\1.mlp.fc1.\2"),
    (r"encoder\.(layers\.\d+\.blocks\.\d+)\.output\.dense\.(weight|bias)", r"\1.mlp.fc2.\2"),
    (r"encoder\.(layers\.\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)",
     r"\1.downsample.\2"),
]
_HF_SKIP = {
    r"encoder\." + _BLOCK + r"attention\.self\.relative_position_index":
        "buffer, rebuilt from the window size",
    r"layernorm\.(weight|bias)": "final classification norm (the backbone has norm0..3 instead)",
}
_QKV = re.compile(r"(.*attention\.self\.)(query|key|value)\.(weight|bias)")


def load_swin(model: SwinBackbone, path: str | Path, *, layout: str, prefix: str | None = None,
              strict: bool = True) -> KeyReport:
    """Load ``path`` in the named ``layout`` (see the module doc) into ``model``.

    Args:
        prefix: the keys' prefix; defaults: "" (original), "backbone." (mask2former),
            "swin." (hf; "" for a bare ``SwinModel`` export).

    Raises:
        ConfigError: unknown layout.
        CheckpointError: unreadable file or keys that do not match (with the key report).
    """
    if layout == "original":
        return load_swin_original(model, path, prefix=prefix or "", strict=strict)
    if layout == "mask2former":
        return load_swin_mask2former(model, path, prefix="backbone." if prefix is None else prefix,
                                     strict=strict)
    if layout == "hf":
        return load_swin_hf(model, path, prefix="swin." if prefix is None else prefix, strict=strict)
    raise ConfigError(f"swin weights: unknown layout {layout!r} (choose from {', '.join(LAYOUTS)})")


def load_swin_original(model: SwinBackbone, path: str | Path, *, prefix: str = "",
                       strict: bool = True) -> KeyReport:
    """The Swin release ``.pth``: ``ckpt["model"]`` with the original names.

    ``head``, the final ``norm`` and the rebuilt buffers are skipped on purpose; ``norm0..3``
    start fresh (an ImageNet checkpoint has none).
    """
    state = state_dict_under(read_torch(path), "model", path)
    return load_mapped(model, state, _same_key, strict=strict, source=path, prefix=prefix,
                       skip=_ORIGINAL_SKIP, fresh=_STAGE_NORMS_FRESH, adapt=resize_bias_table)


def load_swin_mask2former(model: SwinBackbone, path: str | Path, *, prefix: str = "backbone.",
                          strict: bool = True) -> KeyReport:
    """A Mask2Former model-zoo ``.pkl``: the original names under ``prefix``, plus
    ``norm0..3``. Keys outside ``prefix`` (``sem_seg_head.*``) are returned in
    ``report.outside`` for the pixel decoder and decoder loaders."""
    state = read_pkl_weights(path)
    return load_mapped(model, state, _same_key, strict=strict, source=path, prefix=prefix,
                       skip=_ORIGINAL_SKIP, adapt=resize_bias_table)


def load_swin_hf(model: SwinBackbone, directory: str | Path, *, prefix: str = "swin.",
                 strict: bool = True) -> KeyReport:
    """A Hugging Face Swin directory; its ``config.json`` must describe ``model``'s
    architecture (the window size may differ: tables are interpolated)."""
    directory = Path(directory)
    declared = swin_config_from_hf(directory)
    for name in ("embed_dim", "depths", "num_heads", "patch_size", "mlp_ratio"):
        theirs, ours = getattr(declared, name), getattr(model.config, name)
        if theirs != ours:
            raise CheckpointError(
                f"{directory / 'config.json'}: {name} {theirs} does not match the model's {ours}"
            )
    state, path = read_hf_weights(directory)
    return load_mapped(model, _merge_qkv(state), _HF_RULES, strict=strict, source=path,
                       prefix=prefix, skip=_HF_SKIP, fresh=_STAGE_NORMS_FRESH,
                       adapt=resize_bias_table)


def swin_config_from_hf(directory: str | Path, **overrides) -> SwinConfig:
    """The architecture a Hugging Face Swin ``config.json`` declares.

    Raises:
        CheckpointError: no readable config, not a Swin, or options refseg's Swin lacks
            (absolute position embeddings, no qkv bias, another activation, a block
            layer-norm epsilon other than 1e-5).
    """
    path = Path(directory) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found (a Hugging Face Swin directory needs it)") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if cfg.get("model_type") != "swin":
        raise CheckpointError(f"{path}: model_type is {cfg.get('model_type')!r}, not 'swin'")
    # transformers' blocks take their layer-norm epsilon from the config; refseg's are
    # fixed at PyTorch's 1e-5, the value of every released Swin.
    unsupported = {"use_absolute_embeddings": False, "qkv_bias": True, "hidden_act": "gelu",
                   "num_channels": 3, "layer_norm_eps": 1e-5}
    for name, wanted in unsupported.items():
        if cfg.get(name, wanted) != wanted:
            raise CheckpointError(f"{path}: {name}={cfg[name]!r} is not supported (needs {wanted!r})")
    try:
        fields = dict(
            embed_dim=int(cfg["embed_dim"]),
            depths=tuple(int(d) for d in cfg["depths"]),
            num_heads=tuple(int(h) for h in cfg["num_heads"]),
            window_size=int(cfg["window_size"]),
            patch_size=int(cfg.get("patch_size", 4)),
            mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
            pretrain_image_size=int(cfg.get("image_size", 224)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: missing or malformed field {exc}") from None
    try:
        return SwinConfig(**{**fields, **overrides})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _merge_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate the Hugging Face query/key/value tensors into the original qkv.

    A triple with a member missing is left as it is, so the report names the loose keys and
    the missing qkv.
    """
    groups: dict[tuple[str, str], dict[str, str]] = {}
    for key in state:
        match = _QKV.fullmatch(key)
        if match:
            groups.setdefault((match[1], match[3]), {})[match[2]] = key
    out = dict(state)
    for (stem, param), parts in groups.items():
        if len(parts) == 3:
            out[f"{stem}qkv.{param}"] = torch.cat(
                [out.pop(parts[name]) for name in ("query", "key", "value")], dim=0
            )
    return out


def resize_bias_table(key: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Bicubic resize of a relative position bias table to another window size.

    A table of window w has (2w-1)^2 rows (one per relative offset) and one column per head;
    it is viewed as a (2w-1) x (2w-1) image per head and resized, as Swin's own fine-tuning
    from window 7 to window 12 does.

    Args:
        value: (S1 * S1, h) the file's table.
        shape: (S2 * S2, h) the model's.

    Returns:
        (S2 * S2, h), or None when ``key`` is not a bias table or the heads differ.
    """
    if not key.endswith("relative_position_bias_table") or value.dim() != 2:
        return None
    if len(shape) != 2 or value.shape[1] != shape[1]:
        return None
    src, dst = math.isqrt(value.shape[0]), math.isqrt(shape[0])
    if src * src != value.shape[0] or dst * dst != shape[0]:
        return None
    heads = value.shape[1]
    grid = value.float().t().reshape(1, heads, src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(heads, dst * dst).t().to(value.dtype)
