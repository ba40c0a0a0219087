"""Feature contracts checked where components meet.

Legend: B batch, L tokens, Q queries, C channels, N instances, S input side, H/W spatial.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class FeatureSpec:
    """What a backbone returns: one map per stride, ascending (e.g. 4, 8, 16, 32)."""

    channels: tuple[int, ...]
    strides: tuple[int, ...]


@dataclass
class TextFeatures:
    """What every text encoder returns.

    Attributes:
        tokens: (B, L, C) per-token features.
        pad_mask: (B, L) bool, True where the token is padding (never attended to).
        sentence: (B, C) sentence feature.
    """

    tokens: torch.Tensor
    pad_mask: torch.Tensor
    sentence: torch.Tensor

    def __post_init__(self) -> None:
        """Check the contract where a text encoder hands over its output."""
        shapes = tuple(tuple(t.shape) for t in (self.tokens, self.pad_mask, self.sentence))
        tokens, pad, sentence = shapes
        if (len(tokens) != 3 or pad != tokens[:2] or self.pad_mask.dtype != torch.bool
                or sentence != (tokens[0], tokens[2])):
            raise ValueError(f"TextFeatures: expected tokens (B, L, C), a bool pad_mask (B, L) "
                             f"and a sentence (B, C), got shapes {shapes} and a "
                             f"{self.pad_mask.dtype} pad_mask")


@dataclass
class Targets:
    """Ground truth of one sample at the network input resolution.

    Attributes:
        masks: (N, S, S) float in {0, 1}, one per referent (N = 0 for no-target).
        boxes: (N, 4) float xyxy normalised to [0, 1].
        no_target: True when the sentence refers to nothing.
    """

    masks: torch.Tensor
    boxes: torch.Tensor
    no_target: bool

    @property
    def merged(self) -> torch.Tensor:
        """(S, S) union of the instance masks."""
        if self.masks.shape[0] == 0:
            return self.masks.new_zeros(self.masks.shape[1:])
        return self.masks.amax(dim=0)

    def to(self, device) -> "Targets":
        return Targets(self.masks.to(device), self.boxes.to(device), self.no_target)


@dataclass
class Batch:
    """A training or evaluation batch.

    Attributes:
        images: (B, 3, S, S) normalised images.
        input_ids: (B, L) token ids.
        text_pad_mask: (B, L) bool, True at padding.
        targets: one `Targets` per sample (may be empty at inference).
        sent_ids: one per sample, to trace a sample back to its file.
    """

    images: torch.Tensor
    input_ids: torch.Tensor
    text_pad_mask: torch.Tensor
    targets: list[Targets] = field(default_factory=list)
    sent_ids: list[int] = field(default_factory=list)

    def to(self, device) -> "Batch":
        return Batch(
            self.images.to(device, non_blocking=True),
            self.input_ids.to(device, non_blocking=True),
            self.text_pad_mask.to(device, non_blocking=True),
            [t.to(device) for t in self.targets],
            list(self.sent_ids),
        )


@dataclass
class Inference:
    """A model's decoded output for a batch, at the network input resolution.

    Attributes:
        merged_logits: (B, S', S') logits of the merged mask (any stride; upsampled later).
        no_target_prob: (B,) probability that nothing is referred to.
        instance_logits: (B, Q, S', S') per-query mask logits.
        instance_scores: (B, Q) per-query referent probability.
        instance_boxes: (B, Q, 4) normalised xyxy boxes, or None (derived from masks).
    """

    merged_logits: torch.Tensor
    no_target_prob: torch.Tensor
    instance_logits: torch.Tensor
    instance_scores: torch.Tensor
    instance_boxes: torch.Tensor | None = None
