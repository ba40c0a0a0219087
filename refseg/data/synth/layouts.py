"""Writing the synthetic benchmark in the published on-disk layouts (docs/synthetic.md,
Files and layouts).

    DIR/instances.json       COCO images / annotations / categories (one per shape)
    DIR/images/<file>.png
    DIR/grefs(unc).json      grefcoco  (gRefCOCO records: ann_id lists, [-1] = no target)
    DIR/refs(unc).p          refcoco   (RefCOCO records: one ann per ref)
    DIR/refs(final).p        refzom    (Ref-ZOM records with source zero / one / many)
    DIR/refs(unc).p          rrefcoco  (RefCOCO records, per-sentence exist)

Segmentations are polygons for objects nothing covers (the polygon decodes to exactly the
painted pixels) and compressed RLE for occluded ones, whose visible part is no polygon.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

from refseg.data.masks import mask_to_rle, rle_area, rle_to_box
from refseg.data.synth.refs import RefPlan
from refseg.data.synth.scenes import SHAPES, Scene, SceneObject
from refseg.io.atomic import write_bytes, write_json

REFS_FILES = {
    "grefcoco": "grefs(unc).json",
    "refcoco": "refs(unc).p",
    "refzom": "refs(final).p",
    "rrefcoco": "refs(unc).p",
}
SPLITS = {
    "grefcoco": ("train", "val", "testA", "testB"),
    "refcoco": ("train", "val", "testA", "testB"),
    "rrefcoco": ("train", "val", "testA", "testB"),
    "refzom": ("train", "test"),
}
CATEGORIES = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
CATEGORY_ID = {c["name"]: c["id"] for c in CATEGORIES}
PICKLE_PROTOCOL = 2  # what the original refer code (Python 2 era) wrote


@dataclass
class ImageRecord:
    """One generated image: its ids, split, objects, COCO annotations and refs (its
    pixels and masks are written and dropped as soon as it is made)."""

    image_id: int
    file_name: str
    side: int
    split: str
    objects: list[SceneObject]
    ann_ids: list[int]  # per object
    annotations: list[dict]
    refs: list[RefPlan]


def annotations(scene: Scene, image_id: int, ann_ids: list[int]) -> list[dict]:
    """COCO annotations of one image's objects (visible masks; bbox xywh of the visible part)."""
    out = []
    for k, (obj, visible) in enumerate(zip(scene.objects, scene.visible)):
        rle = mask_to_rle(visible)
        segmentation = rle if scene.is_occluded(k) else [list(obj.polygon)]
        x1, y1, x2, y2 = rle_to_box(rle)
        out.append({
            "id": ann_ids[k],
            "image_id": image_id,
            "category_id": CATEGORY_ID[obj.shape],
            "segmentation": segmentation,
            "area": float(rle_area(rle)),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "iscrowd": 0,
        })
    return out


def instances(records: list[ImageRecord]) -> dict:
    return {
        "info": {"description": "refseg synthetic referring-expression benchmark"},
        "images": [{"id": r.image_id, "file_name": r.file_name, "height": r.side,
                    "width": r.side} for r in records],
        "annotations": [a for r in records for a in r.annotations],
        "categories": CATEGORIES,
    }


def split_of(layout: str, split: str) -> str:
    """Ref-ZOM has only train and test: every held-out image is a test image."""
    if layout == "refzom":
        return "train" if split == "train" else "test"
    return split


def ref_records(layout: str, records: list[ImageRecord]) -> list[dict]:
    """The refs file's list of records, ref and sentence ids numbered from 0."""
    out = []
    sent_id = 0
    for record in records:
        for plan in record.refs:
            sentences = []
            for s in plan.sentences:
                sentence = {"tokens": s.text.split(), "raw": s.text, "sent": s.text,
                            "sent_id": sent_id}
                if layout == "rrefcoco":
                    sentence["exist"] = s.exist
                sentences.append(sentence)
                sent_id += 1
            out.append(_ref(layout, record, plan, len(out), sentences))
    return out


def _ref(layout: str, record: ImageRecord, plan: RefPlan, ref_id: int, sentences) -> dict:
    anns = [record.ann_ids[i] for i in plan.targets]
    cats = [CATEGORY_ID[record.objects[i].shape] for i in plan.targets]
    stem = record.file_name.rsplit(".", 1)[0]
    ref = {
        "ref_id": ref_id,
        "image_id": record.image_id,
        "split": split_of(layout, record.split),
        "sent_ids": [s["sent_id"] for s in sentences],
        "sentences": sentences,
        # As in the real files, a per-ref suffix: readers must resolve images by image_id.
        "file_name": f"{stem}_{ref_id}.png",
    }
    if layout == "grefcoco":
        ref["ann_id"] = anns or [-1]
        ref["category_id"] = cats or [-1]
        ref["no_target"] = not anns
    elif layout == "refzom":
        # Ref-ZOM's loader looks every ann_id up, so a zero ref still names a real
        # annotation of its image; source == "zero" is what makes its mask empty.
        source = {"none": "zero", "single": "one", "multi": "many"}[plan.kind]
        if source == "zero":
            anns, cats = record.ann_ids[:1], [CATEGORY_ID[record.objects[0].shape]]
        ref["ann_id"] = anns if source == "many" else anns[0]
        ref["category_id"] = cats if source == "many" else cats[0]
        ref["source"] = source
    else:
        ref["ann_id"], ref["category_id"] = anns[0], cats[0]
    return ref


def write_refs(path, layout: str, refs: list[dict]) -> None:
    """JSON for grefcoco; a pickle of plain dicts for the others."""
    if REFS_FILES[layout].endswith(".json"):
        write_json(path, refs, indent=None)
    else:
        write_bytes(path, pickle.dumps(refs, protocol=PICKLE_PROTOCOL))
