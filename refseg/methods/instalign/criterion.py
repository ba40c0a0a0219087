"""InstAlign's training objective (Sec. 3.4, Eq. 8; Supp. 11.4, Eqs. 10-12):

    L = ins_weight * L_ins + merged_weight * L_mask + no_target_weight * L_nt

- L_ins (instance supervision, one of the paper's Table 3(a) rows, chosen by
  ``InstAlignConfig.instance_supervision``): per decoder stage, Hungarian matching on
  lambda_cls BCE(p_i, 1) + lambda_mask BCE(m_i, g_j) + lambda_dice dice(m_i, g_j)
  + lambda_POA L_POA(i) (point-sampled, per image), then the same terms on the matched
  queries and BCE(p_i, 0) on the unmatched ones. ``mask2former`` is the same without the
  POA term; ``none`` drops L_ins.
- L_mask: BCE between the aggregated logits M (upsampled to the input size) and the merged
  ground truth, plus an optional dice term (``merged_dice_weight``, not in the paper).
- L_nt: BCE of the no-target logit.

Legend: B batch, Q queries, G targets of one image, L words, C channels, S input side,
H/W mask side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refseg.errors import ConfigError
from refseg.modeling.contracts import Targets
from refseg.modeling.losses import dice_loss, num_masks_over_ranks, point_mask_losses
from refseg.modeling.matching import (
    Assignment,
    HungarianMatcher,
    batch_mask_costs,
    matched_indices,
    matched_masks,
    positive_bce_cost,
)
from refseg.methods.instalign.poa import poa_distance


@dataclass
class Stage:
    """One decoder stage's predictions (stage 0: the initial queries, before any block).

    Attributes:
        relevance_logits: (B, Q).
        mask_logits: (B, Q, H, W).
        queries: (B, Q, C) normalised queries the heads read.
        words: (B, L, C) words after this stage's block, None for stage 0 (no POA there).
    """

    relevance_logits: torch.Tensor
    mask_logits: torch.Tensor
    queries: torch.Tensor
    words: torch.Tensor | None


class InstanceSupervision:
    """Mask2Former's set supervision with InstAlign's relevance BCE and POA term.

    Args:
        class_weight, mask_weight, dice_weight, poa_weight: lambda_cls, lambda_mask,
            lambda_dice, lambda_POA, in the matching cost and in the loss alike.
        unmatched_weight: weight of BCE(p_i, 0) of an unmatched query relative to a matched
            one (Mask2Former's no-object weight 0.1); the relevance loss is the weighted mean.
        num_points, oversample_ratio, importance_sample_ratio: point sampling.
        deep_supervision: supervise every stage, not just the last.
    """

    def __init__(self, *, class_weight: float, mask_weight: float, dice_weight: float,
                 poa_weight: float, unmatched_weight: float, num_points: int,
                 oversample_ratio: float, importance_sample_ratio: float,
                 deep_supervision: bool):
        self.weights = {"relevance": class_weight, "mask": mask_weight, "dice": dice_weight,
                        "poa": poa_weight}
        self.matcher = HungarianMatcher({"class": class_weight, "mask": mask_weight,
                                         "dice": dice_weight, "poa": poa_weight})
        self.unmatched_weight = unmatched_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision

    @torch.no_grad()
    def match(self, stage: Stage, poa: torch.Tensor | None,
              targets: list[Targets]) -> list[Assignment]:
        """Per-image Hungarian matching (InstAlign Eqs. 10-11).

        Args:
            poa: (B, Q) L_POA of every query, or None (stage 0: a zero cost).
        """
        masks = batch_mask_costs(stage.mask_logits, [t.masks for t in targets], self.num_points)
        assignments = []
        for b, target in enumerate(targets):
            num_targets = target.masks.shape[0]
            if num_targets == 0:
                empty = torch.empty(0, dtype=torch.long, device=stage.mask_logits.device)
                assignments.append(Assignment(empty, empty.clone()))
                continue
            row = poa[b] if poa is not None else torch.zeros_like(stage.relevance_logits[b])
            costs = {"class": positive_bce_cost(stage.relevance_logits[b].float(), num_targets),
                     **masks[b], "poa": row.float()[:, None].expand(-1, num_targets)}
            assignments.append(self.matcher.match(costs))
        return assignments

    def stage_losses(self, stage: Stage, pad_mask: torch.Tensor, targets: list[Targets],
                     num_masks: float | None = None) -> dict[str, torch.Tensor]:
        """Unweighted L_ins terms of one stage (InstAlign Eq. 12); ``num_masks`` normalises
        the mask and POA terms (default: `num_masks_over_ranks` of ``targets``)."""
        poa = None
        if stage.words is not None and self.weights["poa"] != 0:
            poa = poa_distance(stage.queries, stage.words, pad_mask)  # (B, Q)
        assignments = self.match(stage, poa, targets)
        batch_idx, query_idx = matched_indices(assignments)
        if num_masks is None:
            num_masks = num_masks_over_ranks(targets, pad_mask.device)

        logits = stage.relevance_logits
        labels = torch.zeros_like(logits)
        labels[batch_idx, query_idx] = 1.0
        weights = torch.full_like(logits, self.unmatched_weight)
        weights[batch_idx, query_idx] = 1.0
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        losses = {"relevance": (weights * bce).sum() / weights.sum()}

        pred, gt = matched_masks(stage.mask_logits, [t.masks for t in targets], assignments)
        losses["mask"], losses["dice"] = point_mask_losses(
            pred, gt, num_masks, self.num_points, self.oversample_ratio,
            self.importance_sample_ratio,
        )
        if poa is not None:
            losses["poa"] = poa[batch_idx, query_idx].sum() / num_masks
        return losses

    def __call__(self, stages: list[Stage], pad_mask: torch.Tensor,
                 targets: list[Targets]) -> dict[str, torch.Tensor]:
        """Terms summed over the supervised stages, and their weighted sum ``"ins"``."""
        supervised = stages if self.deep_supervision else stages[-1:]
        num_masks = num_masks_over_ranks(targets, pad_mask.device)  # once: one all-reduce per step
        totals: dict[str, torch.Tensor] = {}
        for stage in supervised:
            for name, value in self.stage_losses(stage, pad_mask, targets, num_masks).items():
                totals[name] = totals[name] + value if name in totals else value
        totals["ins"] = sum(self.weights[n] * v for n, v in totals.items())
        return totals


class NoInstanceSupervision:
    """Table 3(a) "None": no per-query loss; only the merged mask and no-target losses."""

    def __call__(self, stages, pad_mask, targets) -> dict[str, torch.Tensor]:
        return {}


def build_instance_supervision(cfg) -> InstanceSupervision | NoInstanceSupervision:
    """The supervision named by ``cfg.instance_supervision`` (an `InstAlignConfig`)."""
    if cfg.instance_supervision == "none":
        return NoInstanceSupervision()
    if cfg.instance_supervision not in ("poa", "mask2former"):
        raise ConfigError(f"model.instance_supervision={cfg.instance_supervision!r}: expected "
                          "poa, mask2former or none")
    return InstanceSupervision(
        class_weight=cfg.class_weight, mask_weight=cfg.mask_weight, dice_weight=cfg.dice_weight,
        poa_weight=cfg.poa_weight if cfg.instance_supervision == "poa" else 0.0,
        unmatched_weight=cfg.unmatched_weight, num_points=cfg.num_points,
        oversample_ratio=cfg.oversample_ratio, importance_sample_ratio=cfg.importance_sample_ratio,
        deep_supervision=cfg.deep_supervision,
    )


def merged_mask_losses(merged_logits: torch.Tensor,
                       targets: list[Targets]) -> dict[str, torch.Tensor]:
    """BCE and dice of the aggregated mask against the merged ground truth (InstAlign Eq. 6).

    Args:
        merged_logits: (B, H, W) logits M, upsampled here to the targets' S x S.

    Returns:
        {"merged_bce": mean pixel BCE, "merged_dice": mean dice over the batch}.
    """
    gt = torch.stack([t.merged for t in targets]).to(merged_logits.dtype)  # (B, S, S)
    logits = F.interpolate(merged_logits[:, None], size=gt.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    return {"merged_bce": F.binary_cross_entropy_with_logits(logits, gt),
            "merged_dice": dice_loss(logits, gt, len(targets))}


def no_target_loss(no_target_logits: torch.Tensor, targets: list[Targets],
                   pos_weight: float = 1.0) -> torch.Tensor:
    """BCE of the no-target logit z (InstAlign Eq. 8, L_nt). (B,) logits -> scalar.

    ``pos_weight`` > 1 weighs the (rare) no-target samples up, as ReLA's class-weighted
    no-target CE does mildly (1.1 : 0.9); the paper's BCE is ``pos_weight = 1``.
    """
    labels = torch.tensor([float(t.no_target) for t in targets], device=no_target_logits.device)
    weight = no_target_logits.new_tensor(pos_weight)
    return F.binary_cross_entropy_with_logits(no_target_logits, labels.to(no_target_logits.dtype),
                                              pos_weight=weight)
