"""Typed containers shared by readers, metrics, models and the CLI.

Legend: N instances, H x W original image size. Boxes are (x1, y1, x2, y2) in pixels.
RLE is COCO's compressed run-length encoding: ``{"size": [h, w], "counts": str}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("grefcoco", "refcoco", "refzom", "rrefcoco")

RLE = dict  # {"size": [h, w], "counts": str}


@dataclass(frozen=True)
class ImageInfo:
    """One image of instances.json; resolved by ``id``, never by a refs file_name."""

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class Annotation:
    """One object of instances.json. ``segmentation`` is kept as published (polygons or
    RLE) and decoded on demand; ``bbox`` is COCO xywh."""

    id: int
    image_id: int
    category_id: int
    segmentation: Any
    bbox: tuple[float, float, float, float]
    iscrowd: bool = False


@dataclass(frozen=True)
class Sample:
    """One (image, sentence) pair: the unit of training and evaluation.

    ``ann_ids`` lists the referents (crowd annotations already removed); it is empty for a
    no-target sentence. ``ref_id`` groups sentences of one ref (R-RefCOCO averages per ref).
    """

    sent_id: int
    ref_id: int
    image_id: int
    sentence: str
    ann_ids: tuple[int, ...]
    split: str
    no_target: bool = field(default=False)

    @property
    def is_multi(self) -> bool:
        return len(self.ann_ids) >= 2


@dataclass
class Instance:
    """One predicted or ground-truth object. ``mask``: RLE or (H, W) bool array or None."""

    box: tuple[float, float, float, float]
    score: float = 1.0
    mask: Any = None


@dataclass
class Prediction:
    """A system's output for one sentence, as in a predictions file.

    ``mask`` is the merged mask as RLE at the original image size; ``no_target`` defaults
    to "the mask is empty" when the file omits it; ``instances`` may be empty;
    ``no_target_score`` (the probability behind ``no_target``, in [0, 1]) is optional and
    not scored: it lets a no-target threshold be studied without running the model again.
    """

    sent_id: int
    mask: RLE
    no_target: bool
    instances: list[Instance] = field(default_factory=list)
    has_instances: bool = False
    no_target_score: float | None = None


@dataclass
class RefResult:
    """What every refseg model returns for one (image, sentence), whatever the task.

    Attributes:
        no_target: the explicit no-target decision.
        no_target_score: probability that nothing is referred to, in [0, 1].
        mask: merged mask, (H, W) bool at the original image size.
        instances: referents, each with a (H, W) bool mask, an xyxy box and a score.
    """

    no_target: bool
    no_target_score: float
    mask: Any
    instances: list[Instance] = field(default_factory=list)


def image_path(root: Path | str, info: ImageInfo) -> Path:
    """Path of an image under an image folder (COCO keeps file_name relative)."""
    return Path(root) / info.file_name
