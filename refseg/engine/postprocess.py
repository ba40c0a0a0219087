"""Network-resolution decisions -> results at the original image size.

Soft masks (not binary ones) are upsampled bilinearly and thresholded afterwards, so the
mask edge is placed at sub-pixel precision of the network's output. The resize works on
logits, as the mask losses read them (point sampling and the merged-mask loss interpolate
logits) and as Mask2Former's inference resizes them: resizing probabilities instead moves
the edges of small, weakly peaked masks outwards (about 4 points of gIoU for instalign-tiny
on the synthetic benchmark, docs/instalign-tiny.md, fifth round).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from refseg.data.masks import box_of_mask
from refseg.data.types import Instance, RefResult
from refseg.modeling.base import Decision, Thresholds


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of mask logits to the image.

    Args:
        logits: (K, S', S') mask logits at network resolution.

    Returns:
        (K, H, W) foreground probabilities at the original size: sigmoid of the resized
        logits.
    """
    if logits.shape[0] == 0:
        return logits.new_zeros((0, height, width))
    return F.interpolate(
        logits[:, None].float(), size=(height, width), mode="bilinear", align_corners=False
    )[:, 0].sigmoid()


def to_result(decision: Decision, height: int, width: int, thresholds: Thresholds) -> RefResult:
    """One sample's `Decision` -> `RefResult` at ``height`` x ``width``.

    A no-target decision has an empty mask and no instances. The mask is the resized
    ``mask_logits``, or the union of the instance masks when ``mask_is_union``. Boxes come
    from the model (normalised xyxy, scaled to pixels) or, when it gives none, from the
    instance masks (tight, COCO convention); then an instance whose mask is empty is
    dropped.
    """
    if decision.no_target:
        return RefResult(True, decision.no_target_score, np.zeros((height, width), bool), [])
    foreground = torch.gt if decision.strict_mask else torch.ge
    inst = foreground(upsample_logits(decision.instance_logits, height, width), thresholds.mask)
    inst_masks = inst.cpu().numpy()
    if decision.mask_is_union:  # exactly the union of the instance masks at this size
        merged = inst_masks.any(axis=0) if len(inst_masks) else np.zeros((height, width), bool)
    else:
        merged = foreground(upsample_logits(decision.mask_logits[None], height, width)[0],
                            thresholds.mask).cpu().numpy()
    scores = decision.instance_scores.detach().float().cpu().tolist()
    if decision.instance_boxes is not None:
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = (decision.instance_boxes.detach().float().cpu() * scale).tolist()
        kept = range(len(scores))
    else:
        # Without a box from the model an instance is its mask: an empty one is no instance.
        kept = [k for k in range(len(scores)) if inst_masks[k].any()]
        boxes = {k: box_of_mask(inst_masks[k]) for k in kept}
    instances = [
        Instance(box=tuple(float(v) for v in boxes[k]), score=float(scores[k]), mask=inst_masks[k])
        for k in kept
    ]
    return RefResult(False, decision.no_target_score, merged, instances)
