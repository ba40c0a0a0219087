"""`RefDataset`: one split of a benchmark, as every reader returns it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from refseg.data.types import RLE, Annotation, ImageInfo, Sample
from refseg.errors import DataError


@dataclass
class RefDataset:
    """One split: its samples (one per sentence) and the images and annotations they use.

    Masks are decoded on demand from the annotations, in RLE space where possible.

    Attributes:
        format: one of `refseg.data.types.FORMATS`.
        split: e.g. ``"val"``.
        samples: one per sentence, in file order.
        images: image id -> info, for every image a sample uses.
        anns: annotation id -> annotation, for every annotation a sample uses.
        image_root: folder the images live in (None when not given).
        source: the refs file the split was read from (for error messages).
        instances: the instances.json its annotations come from (for error messages).
        skipped: what the reader left out, by reason (``refs_without_sentences``,
            ``crowd_only_sentences``: target sentences whose referents are all crowd).
        left_out: sent_id -> why, for each sentence of the file left out of ``samples``.
    """

    format: str
    split: str
    samples: list[Sample]
    images: dict[int, ImageInfo]
    anns: dict[int, Annotation]
    image_root: Path | None = None
    source: Path | None = None
    instances: Path | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    left_out: dict[int, str] = field(default_factory=dict)
    _rle_cache: dict[int, RLE] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    @cached_property
    def by_sent_id(self) -> dict[int, Sample]:
        return {s.sent_id: s for s in self.samples}

    def image_info(self, sample: Sample) -> ImageInfo:
        return self.images[sample.image_id]

    def image_path(self, sample: Sample) -> Path:
        if self.image_root is None:
            raise DataError(f"{self.source}: no image folder given (use --images DIR)")
        return self.image_root / self.images[sample.image_id].file_name

    def ann_rle(self, ann_id: int) -> RLE:
        """Compressed RLE of one annotation at its image's size (cached)."""
        rle = self._rle_cache.get(ann_id)
        if rle is None:
            from refseg.data.masks import segmentation_to_rle

            ann = self.anns[ann_id]
            info = self.images[ann.image_id]
            where = f"{self.instances or self.source}: annotation {ann_id}"
            rle = segmentation_to_rle(ann.segmentation, info.height, info.width, where=where)
            self._rle_cache[ann_id] = rle
        return rle

    def instance_rles(self, sample: Sample) -> list[RLE]:
        return [self.ann_rle(a) for a in sample.ann_ids]

    def merged_rle(self, sample: Sample) -> RLE:
        """Union of the referents' masks (all zero for a no-target sentence)."""
        from refseg.data.masks import empty_rle, union_rle

        info = self.image_info(sample)
        rles = self.instance_rles(sample)
        return union_rle(rles) if rles else empty_rle(info.height, info.width)

    def instance_boxes(self, sample: Sample) -> np.ndarray:
        """(N, 4) float32 xyxy boxes of the referents (from instances.json's bbox)."""
        boxes = [self.anns[a].bbox for a in sample.ann_ids]
        out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        out[:, 2:] += out[:, :2]
        return out

    def instance_masks(self, sample: Sample) -> np.ndarray:
        """(N, H, W) uint8 masks of the referents."""
        from refseg.data.masks import decode_rles

        info = self.image_info(sample)
        return decode_rles(self.instance_rles(sample), info.height, info.width)
