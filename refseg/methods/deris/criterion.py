"""DeRIS's training objective (Sec. 3.4, Eqs. 7-8; released ``HierVG_criterion`` and
``SimpleHead_Independent_match``):

    L_r   = lambda_cls CE(refer_r) + lambda_mask BCE(M_r) + lambda_dice Dice(M_r)   (Eq. 7)
    L     = L_R + aux_weight * sum_{r < R} L_r + existence_weight * BCE(existence)    (Eq. 8)

Every round r (stage 0, the initial queries, included) is matched to the referents on its
own: Hungarian matching on Mask2Former's cost lambda_cls * (-p_referent) + lambda_mask BCE +
lambda_dice dice on 12544 random points. The refer loss is a 2-way cross entropy whose
"not referred" class weighs ``no_object_weight`` (0.1); the mask terms are point-sampled
on the matched queries and normalised by the number of referents in the batch.

Legend: B batch, Q queries, G referents of one image, H/W mask side, S input side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from refseg.methods.deris.cognition import REFERENT
from refseg.modeling.contracts import Targets
from refseg.modeling.losses import num_masks_over_ranks, point_mask_losses
from refseg.modeling.matching import (
    Assignment,
    HungarianMatcher,
    batch_mask_costs,
    class_prob_cost,
    matched_indices,
    matched_masks,
)


@dataclass
class Round:
    """One loopback round's predictions.

    Attributes:
        refer_logits: (B, Q, 2) refer classification (class `REFERENT` = referred to).
        mask_logits: (B, Q, H, W) instance masks.
    """

    refer_logits: torch.Tensor
    mask_logits: torch.Tensor


@dataclass
class DerisCriterion:
    """Set supervision of every round plus the existence BCE.

    Attributes:
        class_weight, mask_weight, dice_weight: lambda_cls, lambda_mask, lambda_dice, in the
            matching cost and in the loss alike (Mask2Former: 2, 5, 5).
        no_object_weight: CE weight of the "not referred" class.
        existence_weight: weight of the existence BCE.
        aux_weight: weight of every round but the last.
        deep_supervision: supervise the auxiliary rounds.
        num_points, oversample_ratio, importance_sample_ratio: point sampling.
    """

    class_weight: float
    mask_weight: float
    dice_weight: float
    no_object_weight: float
    existence_weight: float
    aux_weight: float
    deep_supervision: bool
    num_points: int
    oversample_ratio: float
    importance_sample_ratio: float

    def __post_init__(self):
        self.weights = {"refer": self.class_weight, "mask": self.mask_weight,
                        "dice": self.dice_weight}
        self.matcher = HungarianMatcher({"class": self.class_weight, "mask": self.mask_weight,
                                         "dice": self.dice_weight})

    @classmethod
    def from_config(cls, cfg) -> "DerisCriterion":
        """The criterion of a `DerisConfig` (fields of the same names)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})

    @torch.no_grad()
    def match(self, round_: Round, targets: list[Targets]) -> list[Assignment]:
        """Per-image Hungarian matching of one round (Mask2Former's cost)."""
        masks = batch_mask_costs(round_.mask_logits, [t.masks for t in targets], self.num_points)
        assignments = []
        for b, target in enumerate(targets):
            num_targets = target.masks.shape[0]
            labels = torch.full((num_targets,), REFERENT, dtype=torch.long,
                                device=round_.refer_logits.device)
            costs = {"class": class_prob_cost(round_.refer_logits[b].float(), labels), **masks[b]}
            assignments.append(self.matcher.match(costs))
        return assignments

    def round_losses(self, round_: Round, targets: list[Targets],
                     num_masks: float | None = None) -> dict[str, torch.Tensor]:
        """Unweighted terms of one round: {"refer", "mask", "dice"}; ``num_masks`` normalises
        the mask terms (default: `num_masks_over_ranks` of ``targets``)."""
        assignments = self.match(round_, targets)
        batch_idx, query_idx = matched_indices(assignments)
        if num_masks is None:
            num_masks = num_masks_over_ranks(targets, round_.refer_logits.device)

        logits = round_.refer_logits.float()
        labels = torch.full(logits.shape[:2], 1 - REFERENT, dtype=torch.long,
                            device=logits.device)
        labels[batch_idx, query_idx] = REFERENT
        class_weights = logits.new_ones(2)
        class_weights[1 - REFERENT] = self.no_object_weight
        losses = {"refer": F.cross_entropy(logits.transpose(1, 2), labels, class_weights)}

        pred, gt = matched_masks(round_.mask_logits, [t.masks for t in targets], assignments)
        losses["mask"], losses["dice"] = point_mask_losses(
            pred, gt, num_masks, self.num_points, self.oversample_ratio,
            self.importance_sample_ratio,
        )
        return losses

    def __call__(self, rounds: list[Round], existence_logits: torch.Tensor,
                 targets: list[Targets]) -> dict[str, torch.Tensor]:
        """All terms (summed over rounds with their weights) and the total ``"loss"``.

        Args:
            rounds: R + 1 rounds, stage 0 first.
            existence_logits: (B,) logits that something is referred to.
            targets: one per sample.
        """
        if len(targets) != existence_logits.shape[0]:
            raise ValueError(f"DeRIS loss: {len(targets)} targets for "
                             f"{existence_logits.shape[0]} samples")
        supervised = rounds if self.deep_supervision else rounds[-1:]
        num_masks = num_masks_over_ranks(targets, existence_logits.device)  # one all-reduce
        totals: dict[str, torch.Tensor] = {}
        for r, round_ in enumerate(supervised):
            scale = 1.0 if r == len(supervised) - 1 else self.aux_weight
            for name, value in self.round_losses(round_, targets, num_masks).items():
                term = scale * value
                totals[name] = totals[name] + term if name in totals else term
        exists = torch.tensor([float(not t.no_target and t.masks.shape[0] > 0) for t in targets],
                              device=existence_logits.device)
        totals["existence"] = F.binary_cross_entropy_with_logits(existence_logits.float(), exists)
        totals["loss"] = (sum(self.weights[n] * totals[n] for n in ("refer", "mask", "dice"))
                          + self.existence_weight * totals["existence"])
        return totals
