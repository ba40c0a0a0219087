"""Tiny benchmark folders written by hand, in each published layout, for tests.

`tiny_benchmark(format, folder)` writes a small dataset whose counts, referents and masks
are known (see `EXPECTED`); the record helpers build odd cases one field at a time.
Axis-aligned rectangle polygons with integer corners (x0, y0)-(x1, y1) rasterise to
rows y0..y1-1 and columns x0..x1-1 (`rect_mask`), so masks can be checked exactly.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

COCO_NAME = "COCO_train2014_{:012d}.jpg"


def rect(x0: int, y0: int, x1: int, y1: int) -> list[float]:
    """Polygon of the axis-aligned rectangle with corners (x0, y0) and (x1, y1)."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_mask(h: int, w: int, *rects: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) bool union of rectangles (x0, y0, x1, y1) as pycocotools rasterises them."""
    m = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths, starting with background)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    runs, current, length = [], 0, 0
    for v in flat:
        if v == current:
            length += 1
        else:
            runs.append(length)
            current, length = v, 1
    runs.append(length)
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def image_record(image_id: int, h: int, w: int, file_name: str | None = None) -> dict:
    name = file_name or COCO_NAME.format(image_id)
    return {"id": image_id, "file_name": name, "height": h, "width": w}


def ann_record(ann_id, image_id, segmentation, bbox=None, *, iscrowd=0, category_id=1) -> dict:
    if bbox is None and isinstance(segmentation, list):
        xs = [v for poly in segmentation for v in poly[0::2]]
        ys = [v for poly in segmentation for v in poly[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": 0.0,
        "bbox": bbox if bbox is not None else [0.0, 0.0, 0.0, 0.0],
        "iscrowd": iscrowd,
    }


def sentence(sent_id: int, text: str, **extra) -> dict:
    return {"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id, **extra}


def ref_record(ref_id, image_id, ann_id, split, sentences, **extra) -> dict:
    """A refer-style record; ``file_name`` carries a suffix, as gRefCOCO's do."""
    return {
        "ref_id": ref_id,
        "ann_id": ann_id,
        "image_id": image_id,
        "category_id": 1,
        "split": split,
        "sent_ids": [s.get("sent_id") for s in sentences],
        "file_name": f"COCO_train2014_{image_id:012d}_{ref_id}.jpg",
        "sentences": sentences,
        **extra,
    }


def write_instances(folder: Path, images: list[dict], annotations: list[dict]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "instances.json"
    categories = [{"id": 1, "name": "thing", "supercategory": "thing"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(coco))
    return path


def write_refs(path: Path, refs: list[dict]) -> Path:
    """A refs file as published: a protocol-2 pickle (``.p``) or JSON (``.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(refs))
    else:
        path.write_bytes(pickle.dumps(refs, protocol=2))
    return path


def write_images(folder: Path, images: list[dict], seed: int = 0) -> Path:
    """Random RGB pictures of the recorded sizes under their file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for rec in images:
        pixels = rng.integers(0, 256, (rec["height"], rec["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / rec["file_name"])
    return folder


# --- the tiny benchmark ------------------------------------------------------------------

IMAGES = [image_record(1, 20, 30), image_record(2, 16, 16), image_record(3, 10, 12)]

# Rectangles of the polygon annotations, (x0, y0, x1, y1); 12 is two overlapping parts.
RECTS = {
    11: [(2, 2, 10, 8)],
    12: [(12, 4, 20, 12), (16, 8, 24, 16)],
    13: [(0, 14, 30, 20)],  # crowd, stored as uncompressed RLE
    21: [(3, 3, 9, 12)],  # stored as compressed RLE
    22: [(10, 0, 16, 6)],
    31: [(1, 1, 5, 9)],
}
_IMAGE_OF = {11: 1, 12: 1, 13: 1, 21: 2, 22: 2, 31: 3}


def annotations() -> list[dict]:
    sizes = {rec["id"]: (rec["height"], rec["width"]) for rec in IMAGES}
    out = []
    for ann_id, rects in RECTS.items():
        image_id = _IMAGE_OF[ann_id]
        h, w = sizes[image_id]
        if ann_id == 13:
            seg = uncompressed_rle(rect_mask(h, w, *rects))
            out.append(ann_record(ann_id, image_id, seg, [0, 14, 30, 6], iscrowd=1))
        elif ann_id == 21:
            seg = compressed_rle(rect_mask(h, w, *rects))
            out.append(ann_record(ann_id, image_id, seg, [3, 3, 6, 9]))
        else:
            out.append(ann_record(ann_id, image_id, [rect(*r) for r in rects]))
    return out


def _refs(fmt: str) -> list[dict]:
    s = sentence
    if fmt == "grefcoco":
        return [
            ref_record(1, 1, [11, 12], "train", [s(1, "both boxes"), s(2, "the two things")]),
            ref_record(2, 1, [-1], "train", [s(3, "the purple cat")], no_target=True),
            ref_record(3, 2, 21, "val", [s(4, "the tall one")]),
            ref_record(4, 1, [11, 13], "val", [s(5, "box and crowd")]),
            ref_record(5, 1, [13], "val", [s(6, "the crowd")]),
            ref_record(6, 3, [-1], "testA", []),
            ref_record(7, 3, [31], "testA", [s(7, "the bar")]),
            ref_record(8, 2, [-1], "testB", [s(8, "a dog")], no_target=True),
        ]
    if fmt == "refzom":
        return [
            ref_record(1, 1, 11, "train", [s(1, "the box")], source="one"),
            ref_record(2, 1, [11, 12], "train", [s(2, "all boxes")], source="many"),
            ref_record(3, 2, [999], "test", [s(3, "a giraffe"), s(4, "zebra")], source="zero"),
            ref_record(4, 2, [22], "test", [s(5, "top right")], source="one"),
            ref_record(5, 2, [21, 22], "test", [s(6, "both")], source="many"),
        ]
    exist = {"rrefcoco": {"exist": False}, "refcoco": {}}[fmt]
    return [
        ref_record(1, 1, 11, "train", [s(1, "left box"), s(2, "a horse", **exist)]),
        ref_record(2, 1, 12, "train", [s(3, "right shape", exist=True)]),
        ref_record(3, 2, 21, "val", [s(4, "the tall one"), s(5, "tall thing")]),
        ref_record(4, 3, 31, "testA", [s(6, "the bar")]),
        ref_record(5, 2, 22, "testB", [s(7, "top right"), s(8, "a boat", **exist)]),
        ref_record(6, 1, 13, "val", [s(9, "the crowd")]),
        ref_record(7, 3, 31, "val", []),
    ]


REFS_NAME = {
    "refcoco": "refs(unc).p",
    "rrefcoco": "refs(unc).p",
    "grefcoco": "grefs(unc).json",
    "refzom": "refs(final).p",
}

# split -> {sent_id: referents}; () is no-target.
EXPECTED = {
    "refcoco": {
        "train": {1: (11,), 2: (11,), 3: (12,)},
        "val": {4: (21,), 5: (21,)},
        "testA": {6: (31,)},
        "testB": {7: (22,), 8: (22,)},
    },
    "rrefcoco": {
        "train": {1: (11,), 2: (), 3: (12,)},
        "val": {4: (21,), 5: (21,)},
        "testA": {6: (31,)},
        "testB": {7: (22,), 8: ()},
    },
    "grefcoco": {
        "train": {1: (11, 12), 2: (11, 12), 3: ()},
        "val": {4: (21,), 5: (11,)},
        "testA": {7: (31,)},
        "testB": {8: ()},
    },
    "refzom": {
        "train": {1: (11,), 2: (11, 12)},
        "test": {3: (), 4: (), 5: (22,), 6: (21, 22)},
    },
}


def tiny_benchmark(fmt: str, folder: Path, *, refs_name: str | None = None) -> Path:
    """Write the tiny benchmark of ``fmt`` into ``folder``; returns the folder."""
    folder = Path(folder)
    write_instances(folder, IMAGES, annotations())
    write_refs(folder / (refs_name or REFS_NAME[fmt]), _refs(fmt))
    return folder


def open_zero_initialised_paths(model) -> None:
    """Emulate a first update of the weights that start at zero on purpose (Deformable
    DETR's query -> offsets / weights matrices, LAVT's gate output), so that a gradient
    check can demand a non-zero gradient of every parameter behind them."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            for name in ("sampling_offsets", "attention_weights"):
                if hasattr(module, name) and hasattr(getattr(module, name), "weight"):
                    getattr(module, name).weight.normal_(0, 0.01)
            gate = getattr(module, "gate", None)
            if isinstance(gate, torch.nn.Sequential) and len(gate) == 4:
                gate[2].weight.normal_(0, 0.01)


def without_gradient(model) -> list[str]:
    """Trainable parameters whose gradient is missing or exactly zero."""
    return [n for n, p in model.named_parameters()
            if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]


def noise_at_padding(tokens, pad_mask, scale: float = 30.0, seed: int = 5):
    """(B, L, C) tokens with large random values where (B, L) ``pad_mask`` is True: what a
    consumer that honours the padding mask must never notice."""
    import torch

    noisy = tokens.clone()
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(int(pad_mask.sum()), tokens.shape[-1], generator=generator) * scale
    noisy[pad_mask] = noise.to(tokens.device, tokens.dtype)
    return noisy
