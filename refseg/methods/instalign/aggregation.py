"""Merging the instance predictions into the final mask (InstAlign Sec. 3.3, Eq. 5).

One small module per design of the paper's Table 3(b), chosen by
``InstAlignConfig.aggregation``:

- ``"ia"``: Instance Aggregation, ``M = sum_i p_i * PReLU(m_i)`` in logit space with a
  learnable PReLU (the paper's choice).
- ``"ia_no_prelu"``: the same relevance-weighted sum without the activation.
- ``"fixed"``: fixed selection, the union of the instances whose relevance exceeds a
  threshold (``max`` of their logits), no learned weighting.

Legend: B batch, Q queries, H/W mask side.
"""

from __future__ import annotations

import torch
from torch import nn

from refseg.errors import ConfigError
from refseg.methods.instalign.config import AGGREGATIONS

# Logit of the merged mask where fixed selection keeps no instance: probability ~2e-9,
# finite so that the merged-mask loss stays finite.
EMPTY_LOGIT = -20.0


class InstanceAggregation(nn.Module):
    """Relevance-weighted sum of (activated) instance logits (InstAlign Eq. 5)."""

    def __init__(self, *, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, mask_logits: torch.Tensor, relevance_logits: torch.Tensor) -> torch.Tensor:
        """Merge the instances.

        Args:
            mask_logits: (B, Q, H, W) instance mask logits m_i.
            relevance_logits: (B, Q) relevance logits (p_i = sigmoid).

        Returns:
            (B, H, W) merged logits M.
        """
        weights = relevance_logits.sigmoid()
        return torch.einsum("bq,bqhw->bhw", weights, self.activation(mask_logits))


class FixedSelection(nn.Module):
    """Union of the instances whose relevance exceeds ``threshold`` (Table 3(b), row 1).

    The union of probability masks is the max of their logits; the selection itself is
    hard, so the merged-mask loss trains only the selected instances' masks.
    """

    def __init__(self, *, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, mask_logits: torch.Tensor, relevance_logits: torch.Tensor) -> torch.Tensor:
        """Args and returns as `InstanceAggregation.forward`."""
        selected = relevance_logits.sigmoid() > self.threshold  # (B, Q)
        masked = mask_logits.masked_fill(~selected[:, :, None, None], float("-inf"))
        merged = masked.amax(dim=1) if mask_logits.shape[1] else mask_logits.sum(dim=1)
        any_selected = selected.any(dim=1)[:, None, None]
        return torch.where(any_selected, merged, merged.new_tensor(EMPTY_LOGIT))


def build_aggregation(name: str, *, selection_threshold: float) -> nn.Module:
    """The merging module named by ``InstAlignConfig.aggregation``."""
    if name == "ia":
        # PReLU's default slope 0.25 already damps negative (background) logits.
        return InstanceAggregation(activation=nn.PReLU(num_parameters=1, init=0.25))
    if name == "ia_no_prelu":
        return InstanceAggregation(activation=nn.Identity())
    if name == "fixed":
        return FixedSelection(threshold=selection_threshold)
    raise ConfigError(f"model.aggregation={name!r}: expected one of {', '.join(AGGREGATIONS)}")
