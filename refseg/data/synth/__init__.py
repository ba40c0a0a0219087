"""The synthetic referring-expression benchmark: shapes, sentences, published layouts.

`generate` renders scenes of coloured shapes, samples unambiguous sentences about them
(attributes, counts, positions, relations, ordinals, near-miss no-target sentences) and
writes them in one of the published layouts, so every reader, model and metric in refseg
runs on it offline. Same arguments, same bytes.

Files, all under ``out``: ``instances.json``, ``images/*.png``, the layout's refs file
(`REFS_FILES`), and ``synth_scenes.json`` (the arguments and each object's shape,
colour, size and centre by annotation id; not part of any published layout). The refs
file is written last, atomically: a directory with a refs file is complete.
"""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Callable

import numpy as np

from refseg.data.synth.expressions import Sampler, Thing, parse, resolve
from refseg.data.synth.layouts import (REFS_FILES, SPLITS, ImageRecord, annotations,
                                       instances, ref_records, split_of, write_refs)
from refseg.data.synth.refs import ShareKeeper, plan_classic, plan_generalized
from refseg.data.synth.scenes import render_scene
from refseg.data.types import FORMATS
from refseg.errors import ConfigError
from refseg.io.atomic import write_bytes, write_json
from refseg.io.images import MAX_PIXELS

__all__ = ["generate", "assign_splits", "read_scenes", "scene_refers", "scene_size",
           "REFS_FILES", "SCENES_FILE"]

SCENES_FILE = "synth_scenes.json"
# Image share per split slot; testA holds crowded scenes, testB sparse ones.
_SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("testA", 0.1), ("testB", 0.1))
_OBJECTS = {"train": (2, 6), "val": (2, 6), "testA": (5, 6), "testB": (2, 4)}
MIN_IMAGES = 4
MIN_SIZE = 32


def generate(out: str | Path, *, layout: str = "grefcoco", images: int = 1000,
             size: int = 128, seed: int = 0) -> Path:
    """Write the synthetic benchmark into ``out`` and return ``out``.

    Args:
        out: the data directory (created if missing). Refs files and scene files a
            previous run left there are removed first; a folder holding another
            benchmark's refs file is refused.
        layout: one of `refseg.data.types.FORMATS`.
        images: total number of images over all splits (at least 4).
        size: side of the square images in pixels (objects scale with it), 32 to 16384
            (the largest side refseg reads, `refseg.io.images.MAX_PIXELS`).
        seed: any non-negative integer; the output is a pure function of the arguments.

    Raises:
        ConfigError: an argument is out of range.
    """
    check_arguments(layout, images, size, seed)
    if not str(out):
        raise ConfigError("--out is empty (give the data directory to write)")
    out = Path(out)
    _refuse_foreign_benchmark(out)
    try:
        (out / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create {out / 'images'} ({exc.strerror})") from None
    for name in REFS_FILES.values():
        (out / name).unlink(missing_ok=True)  # no stale refs file may present this as done

    records = _build(layout, images, size, seed, out / "images")
    _remove_stale_images(out / "images", {r.file_name for r in records})
    # The scenes file first: it marks the folder as this generator's, so that a run
    # killed before the refs file can be repeated over what it left.
    write_json(out / SCENES_FILE, _scenes_file(layout, images, size, seed, records),
               indent=1)
    write_json(out / "instances.json", instances(records), indent=None)
    write_refs(out / REFS_FILES[layout], layout, ref_records(layout, records))
    return out


def _refuse_foreign_benchmark(out: Path) -> None:
    """A folder holding a refs file or an ``instances.json`` but no ``synth_scenes.json``
    holds annotations this generator did not write (it writes the scenes file before
    either): replacing them would destroy them."""
    if not out.is_dir() or (out / SCENES_FILE).exists():
        return
    foreign = sorted({p.name for p in out.glob("*refs(*)*")} | {
        name for name in (*REFS_FILES.values(), "instances.json") if (out / name).exists()})
    if foreign:
        raise ConfigError(f"--out {out}: holds {', '.join(foreign)} that refseg synth did not "
                          "write (no synth_scenes.json); choose another folder")


def check_arguments(layout: str, images: int, size: int, seed: int) -> None:
    """Raise ConfigError on an argument `generate` refuses, before any work."""
    if layout not in FORMATS:
        raise ConfigError(f"unknown layout {layout!r} (one of {', '.join(FORMATS)})")
    if images < MIN_IMAGES:
        raise ConfigError(f"--images {images}: need at least {MIN_IMAGES} (one per split)")
    if size < MIN_SIZE:
        raise ConfigError(f"--size {size}: need at least {MIN_SIZE} pixels")
    if size * size > MAX_PIXELS:
        raise ConfigError(f"--size {size}: at most {math.isqrt(MAX_PIXELS)} pixels (refseg "
                          f"reads images of up to {MAX_PIXELS // 2**20} MP)")
    if seed < 0:
        raise ConfigError(f"--seed {seed}: must be non-negative")


def assign_splits(images: int, seed: int) -> list[str]:
    """Split of each image index: a seeded shuffle cut 70 / 10 / 10 / 10, every split
    getting at least one image."""
    held_out = [max(1, round(share * images)) for _, share in _SPLIT_SHARES[1:]]
    counts = [images - sum(held_out), *held_out]
    names = [name for (name, _), n in zip(_SPLIT_SHARES, counts) for _ in range(n)]
    order = list(range(images))
    random.Random(f"refseg-synth/{seed}/splits").shuffle(order)
    splits = [""] * images
    for index, name in zip(order, names):
        splits[index] = name
    return splits


def _build(layout, images, size, seed, image_dir: Path) -> list[ImageRecord]:
    splits = assign_splits(images, seed)
    keepers = {s: ShareKeeper() for s in SPLITS[layout]}
    records = []
    next_ann = 1
    for index, split in enumerate(splits):
        # Separate streams: scenes do not depend on the layout or on other images.
        scene_rng = random.Random(f"refseg-synth/{seed}/{index}/scene")
        noise = np.random.default_rng([seed, index])
        scene = render_scene(scene_rng, noise, size, scene_rng.randint(*_OBJECTS[split]))
        image_id = index + 1
        file_name = f"synth_{image_id:06d}.png"
        write_bytes(image_dir / file_name, _png(scene.pixels))

        things = [Thing(o.shape, o.color, o.size, *o.center) for o in scene.objects]
        language = random.Random(f"refseg-synth/{seed}/{index}/{layout}")
        sampler = Sampler(things, size, language)
        if layout in ("grefcoco", "refzom"):
            plans = plan_generalized(sampler, language, keepers[split_of(layout, split)])
        else:
            plans = plan_classic(sampler, language, negatives=int(layout == "rrefcoco"))
        ann_ids = list(range(next_ann, next_ann + len(scene.objects)))
        next_ann += len(scene.objects)
        records.append(ImageRecord(image_id, file_name, size, split, scene.objects, ann_ids,
                                   annotations(scene, image_id, ann_ids), plans))
    return records


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _remove_stale_images(image_dir: Path, keep: set[str]) -> None:
    for path in image_dir.glob("synth_*.png"):
        if path.name not in keep:
            path.unlink()


def _scenes_file(layout, images, size, seed, records) -> dict:
    return {
        "generator": "refseg synth",
        "layout": layout, "images": images, "size": size, "seed": seed,
        "scenes": [{
            "image_id": r.image_id,
            "split": split_of(layout, r.split),
            "objects": [{"ann_id": a, "shape": o.shape, "color": o.color, "size": o.size,
                         "center": list(o.center), "radius": o.radius}
                        for a, o in zip(r.ann_ids, r.objects)],
        } for r in records],
    }


def read_scenes(out: str | Path) -> dict[int, dict[int, Thing]]:
    """The scene description `generate` left in ``out``: image id -> ann id -> `Thing`."""
    return _things(_scene_meta(out))


def scene_size(out: str | Path) -> int:
    """The side in pixels of the images `generate` drew into ``out`` (scene coordinates)."""
    return _scene_meta(out)["size"]


def _scene_meta(out: str | Path) -> dict:
    return json.loads((Path(out) / SCENES_FILE).read_text())


def _things(meta: dict) -> dict[int, dict[int, Thing]]:
    return {scene["image_id"]: {o["ann_id"]: Thing(o["shape"], o["color"], o["size"], *o["center"])
                                for o in scene["objects"]}
            for scene in meta["scenes"]}


def scene_refers(out: str | Path) -> Callable[[int, str], bool] | None:
    """For a benchmark `generate` wrote in ``out``: ``refers(image_id, sentence)``, False
    only when the sentence refers to nothing in that image (an ambiguous sentence, one
    outside the grammar or an unknown image count as referring). None when ``out`` holds
    no scene file (any other dataset). NSC's fourth filter (`refseg.data.nsc`)."""
    if not (Path(out) / SCENES_FILE).is_file():
        return None
    meta = _scene_meta(out)
    side = meta["size"]
    scenes = {image_id: list(things.values()) for image_id, things in _things(meta).items()}

    def refers(image_id: int, sentence: str) -> bool:
        if image_id not in scenes:
            return True
        try:
            expr = parse(sentence)
        except ValueError:
            return True
        return resolve(expr, scenes[image_id], side) != frozenset()

    return refers
