"""Trivial baselines every model must beat: predict nothing, or the whole image."""

from __future__ import annotations

import numpy as np

from refseg.data.dataset import RefDataset
from refseg.data.masks import empty_rle, mask_to_rle
from refseg.data.types import Instance, Prediction


def all_empty(dataset: RefDataset) -> list[Prediction]:
    """Every sentence answered "no target" with an empty mask."""
    out = []
    for sample in dataset.samples:
        info = dataset.image_info(sample)
        out.append(Prediction(sample.sent_id, empty_rle(info.height, info.width), True,
                              [], has_instances=True))
    return out


def whole_image(dataset: RefDataset) -> list[Prediction]:
    """Every sentence answered with the whole image as one instance."""
    out, full = [], {}
    for sample in dataset.samples:
        info = dataset.image_info(sample)
        size = (info.height, info.width)
        if size not in full:
            full[size] = mask_to_rle(np.ones(size, dtype=bool))
        box = Instance(box=(0.0, 0.0, float(info.width), float(info.height)), score=1.0)
        out.append(Prediction(sample.sent_id, full[size], False, [box], has_instances=True))
    return out


BASELINES = {"all-empty": all_empty, "whole-image": whole_image}
