"""The interface every refseg model implements, so training, evaluation and prediction
are written once for all methods.

Legend: B batch, Q queries, S network input side, S' mask side (any stride).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refseg.modeling.contracts import Batch, Inference


@dataclass
class Thresholds:
    """Decision thresholds, saved with a trained model and overridable per call.

    Attributes:
        no_target: no-target when the no-target probability exceeds this.
        instance: an instance is kept when its score exceeds this.
        mask: a pixel is foreground when its probability exceeds this (InstAlign, as
            SPEC's sigmoid(M) > 0.5) or is at least this (DeRIS's sigmoid >= 0.5): each
            model's `Decision.strict_mask` says which.
    """

    no_target: float = 0.5
    instance: float = 0.5
    mask: float = 0.5

    def check(self, where: str = "thresholds") -> "Thresholds":
        """A copy with plain floats, when every field is a real number in [0, 1] (numpy
        floats and ints included, bools and nan not); else a ConfigError naming ``where``
        and the field."""
        from numbers import Real

        from refseg.errors import ConfigError

        for name in ("no_target", "instance", "mask"):
            value = getattr(self, name)
            # A comparison, not float(): nan fails it, and a huge int does not overflow.
            if not isinstance(value, Real) or isinstance(value, bool) or not 0 <= value <= 1:
                raise ConfigError(f"{where}.{name}={value!r}: expected a number in [0, 1]")
        return Thresholds(float(self.no_target), float(self.instance), float(self.mask))


@dataclass
class Decision:
    """One sample's decision at network resolution (resized to the image by the caller).

    Attributes:
        no_target: the explicit no-target decision.
        no_target_score: probability that nothing is referred to.
        mask_logits: (S', S') merged foreground logits; ignored when no_target.
        instance_logits: (K, S', S') mask logits of the kept instances.
        instance_scores: (K,) their scores.
        instance_boxes: (K, 4) normalised xyxy boxes, or None (derived from masks).
        mask_is_union: the mask is the union of the instances' masks (DeRIS): at the
            image's size it is then their union there, not a resize of ``mask_logits``.
        strict_mask: a pixel is foreground when its probability exceeds
            ``thresholds.mask``, not when it equals it (InstAlign: an all-zero logit map,
            as fp16 gives when every relevance underflows to 0, is then empty, not the
            whole image).
    """

    no_target: bool
    no_target_score: float
    mask_logits: torch.Tensor
    instance_logits: torch.Tensor
    instance_scores: torch.Tensor
    instance_boxes: torch.Tensor | None = None
    mask_is_union: bool = False
    strict_mask: bool = False


class RefSegModel(nn.Module):
    """Base class of every method's model.

    Subclasses implement `forward` (raw outputs, whatever the method needs for its loss),
    `loss` and `infer`; `decide` applies the thresholds and may be overridden where a
    paper decides differently (e.g. DeRIS: no-target iff no instance passes).

    Attributes:
        threshold_keys: the `Thresholds` fields `decide` and the post-processing read.
    """

    threshold_keys: tuple[str, ...] = ("no_target", "instance", "mask")

    def forward(self, batch: Batch):  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, outputs, batch: Batch) -> dict[str, torch.Tensor]:
        """Losses; the key ``"loss"`` is the weighted total that is back-propagated."""
        raise NotImplementedError

    def infer(self, outputs) -> Inference:
        """Probabilities and logits of the final prediction from raw outputs."""
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict]:
        """Optimiser parameter groups (methods with per-part learning rates override)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def decide(self, inference: Inference, thresholds: Thresholds) -> list[Decision]:
        """Default rule (InstAlign): no-target from the no-target predictor; otherwise the
        merged mask, and the instances whose score exceeds the instance threshold."""
        decisions = []
        for b in range(inference.no_target_prob.shape[0]):
            nt_score = float(inference.no_target_prob[b])
            keep = inference.instance_scores[b] > thresholds.instance
            boxes = inference.instance_boxes
            decisions.append(
                Decision(
                    no_target=nt_score > thresholds.no_target,
                    no_target_score=nt_score,
                    mask_logits=inference.merged_logits[b],
                    instance_logits=inference.instance_logits[b][keep],
                    instance_scores=inference.instance_scores[b][keep],
                    instance_boxes=None if boxes is None else boxes[b][keep],
                    strict_mask=True,  # InstAlign: sigmoid(M) > 0.5 (SPEC 4.1)
                )
            )
        return decisions
