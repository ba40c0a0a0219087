"""Time `refseg score` on 10,000 gRefCOCO predictions of 640x480 masks, start-up included.

Writes a gRefCOCO-shaped split (``grefs(unc).json`` + ``instances.json``: 640x480 images,
star-shaped polygon annotations, one, several or no referents per sentence) and a
predictions file (jittered ground-truth polygons as RLE, boxes with scores) into a
temporary folder, then runs the whole command in a fresh process several times::

    .venv/bin/python benchmarks/score_speed.py [--sentences 10000] [--repeats 3]

No image file is needed to score. Prints the set's shape, the wall time of each run, and
sentences per second of the best and the median run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from refseg.data.types import Instance, Prediction
from refseg.io.predictions import write_predictions

H, W = 480, 640
ANNS_PER_IMAGE = 5


def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[float]:
    """A star-shaped blob of 24 vertices, clipped to the image (COCO polygon, x y pairs)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, 24))
    radii = radius * rng.uniform(0.6, 1.0, 24)
    xs = np.clip(cx + radii * np.cos(angles), 0, W - 1)
    ys = np.clip(cy + 0.8 * radii * np.sin(angles), 0, H - 1)
    return np.stack([xs, ys], axis=1).round(2).ravel().tolist()


def xywh(polygon: list[float]) -> list[float]:
    xs, ys = polygon[0::2], polygon[1::2]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def write_split(folder: Path, n_sentences: int, rng: np.random.Generator) -> dict[int, list]:
    """Write the annotation files; returns sent_id -> referent polygons ([] = no target)."""
    images, anns, refs, truth = [], [], [], {}
    polygons: dict[int, list[float]] = {}
    sent_id = 0
    while sent_id < n_sentences:
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg",
                       "height": H, "width": W})
        own = []
        for _ in range(ANNS_PER_IMAGE):
            ann_id = len(anns) + 1
            poly = star_polygon(rng, rng.uniform(80, W - 80), rng.uniform(80, H - 80),
                                rng.uniform(20, 160))
            polygons[ann_id] = poly
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1,
                         "segmentation": [poly], "area": 0.0, "bbox": xywh(poly), "iscrowd": 0})
            own.append(ann_id)
        for _ in range(6):
            if sent_id >= n_sentences:
                break
            kind = rng.random()
            targets = [-1] if kind < 0.1 else [int(a) for a in rng.choice(
                own, size=1 if kind < 0.7 else int(rng.integers(2, 4)), replace=False)]
            sentences = []
            for _ in range(min(2, n_sentences - sent_id)):
                text = f"sentence {sent_id}"
                sentences.append({"tokens": text.split(), "raw": text, "sent": text,
                                  "sent_id": sent_id})
                truth[sent_id] = [] if targets == [-1] else [polygons[a] for a in targets]
                sent_id += 1
            refs.append({"ref_id": len(refs), "image_id": image_id, "ann_id": targets,
                         "category_id": [1], "split": "val", "no_target": targets == [-1],
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
                         "file_name": images[-1]["file_name"]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (folder / "instances.json").write_text(json.dumps(coco))
    (folder / "grefs(unc).json").write_text(json.dumps(refs))
    return truth


def predict(truth: dict[int, list], rng: np.random.Generator) -> list[Prediction]:
    """A plausible system: jittered referents, a few false alarms on no-target sentences."""
    preds = []
    for sent_id, polys in truth.items():
        if not polys and rng.random() < 0.3:
            polys = [star_polygon(rng, W / 2, H / 2, 60)]  # a false alarm
        shifted = [[v + rng.normal(0, 4) for v in p] for p in polys]
        shifted = [[min(max(v, 0), (W if k % 2 == 0 else H) - 1) for k, v in enumerate(p)]
                   for p in shifted]
        if shifted:
            rle = mask_utils.merge(mask_utils.frPyObjects(shifted, H, W))
        else:
            rle = mask_utils.encode(np.zeros((H, W, 1), dtype=np.uint8, order="F"))[0]
        rle = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
        instances = []
        for p in shifted:
            x, y, w, h = xywh(p)
            instances.append(Instance((x, y, x + w, y + h), float(rng.uniform(0.5, 1.0))))
        preds.append(Prediction(sent_id, rle, not shifted, instances, has_instances=True))
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        truth = write_split(folder, args.sentences, rng)
        preds = predict(truth, rng)
        write_predictions(folder / "predictions.json", preds)
        n = len(preds)
        chars = statistics.mean(len(p.mask["counts"]) for p in preds)
        size_mb = (folder / "predictions.json").stat().st_size / 2**20
        print(f"{n} sentences ({sum(not t for t in truth.values())} no-target), {W}x{H} masks, "
              f"predictions file {size_mb:.1f} MB (mean RLE {chars:.0f} characters)")
        command = [sys.executable, "-m", "refseg", "score", "--format", "grefcoco", "--data",
                   str(folder), "--split", "val", "--predictions",
                   str(folder / "predictions.json"), "--out", str(folder / "metrics.json")]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        print("runs (s): " + ", ".join(f"{t:.2f}" for t in times))
        best, median = min(times), statistics.median(times)
        print(f"best {best:.2f} s = {n / best:,.0f} sentences/s; "
              f"median {median:.2f} s = {n / median:,.0f} sentences/s")
        result = json.loads((folder / "metrics.json").read_text())
        shown = {k: round(v, 2) for k, v in result.items() if isinstance(v, float)}
        print(f"metrics: {shown} GREC {result['GREC']}")
        assert not math.isnan(result["cIoU"])


if __name__ == "__main__":
    main()
