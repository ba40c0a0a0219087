"""Language-aware visual features: pixel-word attention on every Swin stage output.

The paper builds on ReLA (Sec. 3.1, Supp. 11.2) and reports 230M parameters against
ReLA's 226M; ReLA's visual encoder is LAVT's language-aware Swin, where every stage output
is replaced by a pixel-word attention module (PWAM) product ``vis(x) * lang(x)``: PWAM
reads the output of the stage's blocks, the stage's norm then normalises the fused map. LAVT and
ReLA also add the product back into the stage through a language gate (LAVT Sec. 3.3,
``x + gate(f) * f`` with ``gate = tanh(W2 relu(W1 f))``) whose two weights the released
code initialises to zero; with both at zero neither ever receives a gradient, so the
released models run with the gate shut and only the stage *outputs* are language-aware.
``fusion_gate="shut"`` is that behaviour (no dead gate is built); ``"open"`` is the gate as
LAVT describes it, with only W2 zero-initialised so that it starts shut but learns, making
the deeper stages language-aware too. See docs/instalign.md.

Legend: B batch, L words, N pixels of one map, C visual channels, Ct text channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from refseg.modeling.decoders import open_empty_rows


def _normalise_positions(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Instance norm over positions (LAVT's InstanceNorm1d): (B, N, C) -> (B, N, C)."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


class PixelWordAttention(nn.Module):
    """PWAM (Yang et al. 2022, LAVT Sec. 3.2): every pixel gathers the words it attends to;
    the result gates the projected pixel feature element-wise."""

    def __init__(self, *, dim: int, text_dim: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.vis_project = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(text_dim, dim)
        self.value = nn.Linear(text_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.project_mm = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, words: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """Fuse.

        Args:
            x: (B, N, C) pixels of one map.
            words: (B, L, Ct) text encoder tokens.
            pad_mask: (B, L) bool, True at padding (never attended to).

        Returns:
            (B, N, C) language-aware pixels.
        """
        B, N, C = x.shape
        h = self.num_heads
        vis = F.gelu(self.vis_project(x))
        q = _normalise_positions(self.query(x)).view(B, N, h, C // h).transpose(1, 2)
        k = self.key(words).view(B, -1, h, C // h).transpose(1, 2)  # (B, h, L, C/h)
        v = self.value(words).view(B, -1, h, C // h).transpose(1, 2)
        open_words = ~open_empty_rows(pad_mask)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=open_words[:, None, None, :])
        lang = _normalise_positions(self.out(att.transpose(1, 2).reshape(B, N, C)))
        return F.gelu(self.project_mm(vis * lang))


class LanguageGate(nn.Module):
    """LAVT's language gate: (B, H, W, C) fused map f -> tanh(W2 relu(W1 f)) * f, the
    addend to the stage's output. W2 starts at zero: the gate opens as it learns."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(),
                                  nn.Linear(dim, dim, bias=False), nn.Tanh())
        nn.init.zeros_(self.gate[2].weight)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        return self.gate(fused) * fused


class LanguageAwareBackbone(nn.Module):
    """A visual backbone whose every output map is made language-aware by a PWAM.

    Args:
        backbone: the wrapped backbone (its weights load unchanged), taking a per-stage
            ``fuse`` hook as `SwinBackbone` does.
        text_dim: Ct, the width of the text encoder's tokens.
        num_heads: PWAM's attention heads.
        gate: feed each fused map back into its stage through a `LanguageGate` (not after
            the last stage, which has no next stage).

    Attributes:
        spec: the backbone's FeatureSpec (fusion keeps channels and strides).
    """

    def __init__(self, *, backbone: nn.Module, text_dim: int, num_heads: int = 1,
                 gate: bool = False):
        super().__init__()
        self.backbone = backbone
        self.spec = backbone.spec
        channels = backbone.spec.channels
        self.fusions = nn.ModuleList(
            PixelWordAttention(dim=c, text_dim=text_dim, num_heads=num_heads) for c in channels
        )
        self.gates = nn.ModuleList(LanguageGate(c) for c in channels[:-1]) if gate else None

    def forward(self, images: torch.Tensor, words: torch.Tensor,
                pad_mask: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) images, (B, L, Ct) words, (B, L) padding -> the backbone's maps
        (B, C_i, H_i, W_i), each language-aware."""
        return self.backbone(images, fuse=lambda s, x: self._fuse_stage(s, x, words, pad_mask))

    def _fuse_stage(self, s: int, x: torch.Tensor, words: torch.Tensor,
                    pad_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage s's blocks' output (B, H, W, C) -> (its fused map, which the stage's norm
        then returns; the gated addend, None with the gate shut and after the last stage)."""
        B, H, W, C = x.shape
        fused = self.fusions[s](x.reshape(B, H * W, C), words, pad_mask).view(B, H, W, C)
        if self.gates is None or s >= len(self.gates):
            return fused, None
        return fused, self.gates[s](fused)


class TextAgnosticBackbone(nn.Module):
    """The plain backbone behind the same call signature (``early_fusion="none"``)."""

    def __init__(self, *, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.spec = backbone.spec

    def forward(self, images: torch.Tensor, words: torch.Tensor,
                pad_mask: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) images -> the backbone's maps (B, C_i, H_i, W_i); the words are
        not read."""
        return self.backbone(images)
