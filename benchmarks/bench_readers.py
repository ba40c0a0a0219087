"""Time the gRefCOCO reader on a file of the real benchmark's size.

Writes a gRefCOCO-shaped ``grefs(unc).json`` + ``instances.json`` (about 20k images, 60k
polygon annotations, 280k sentences, as published) into a temporary folder, then times
`load_splits` (every split, one parse) and `load_split` (val only), and decoding the merged
masks of the first 1,000 val sentences.

    .venv/bin/python benchmarks/bench_readers.py [--sentences 280000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from refseg.data.load import load_split, load_splits

SPLITS = ("train",) * 7 + ("val", "testA", "testB")


def write_grefcoco(folder: Path, n_sentences: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    n_images = max(1, n_sentences // 14)
    images = [
        {"id": i, "file_name": f"COCO_train2014_{i:012d}.jpg", "height": 480, "width": 640}
        for i in range(n_images)
    ]
    anns, refs, sent_id, ann_id = [], [], 0, 0
    for image in images:
        own = []
        for _ in range(3):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            poly = [v for k in range(16) for v in (x + 60 * abs((k % 8) - 4) / 4, y + 8 * k)]
            anns.append(
                {"id": ann_id, "image_id": image["id"], "category_id": 1, "segmentation": [poly],
                 "area": 1.0, "bbox": [x, y, 60, 120], "iscrowd": 0}
            )
            own.append(ann_id)
            ann_id += 1
        for r in range(5):
            targets = [-1] if r == 4 else rng.sample(own, rng.randint(1, 3))
            sentences = []
            for _ in range(rng.choice((2, 3, 3, 4))):
                text = f"the object number {sent_id}"
                sentences.append(
                    {"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id}
                )
                sent_id += 1
            refs.append(
                {"ref_id": len(refs), "image_id": image["id"], "ann_id": targets, "category_id": [1],
                 "split": rng.choice(SPLITS), "sent_ids": [s["sent_id"] for s in sentences],
                 "file_name": image["file_name"], "sentences": sentences, "no_target": targets == [-1]}
            )
    coco = {"images": images, "annotations": anns, "categories": []}
    (folder / "instances.json").write_text(json.dumps(coco))
    (folder / "grefs(unc).json").write_text(json.dumps(refs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=280_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_grefcoco(folder, args.sentences)
        mb = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
        t = time.perf_counter()
        splits = load_splits("grefcoco", folder)
        t_all = time.perf_counter() - t
        n = sum(len(ds) for ds in splits.values())
        t = time.perf_counter()
        val = load_split("grefcoco", folder, "val")
        t_val = time.perf_counter() - t
        t = time.perf_counter()
        for sample in val.samples[:1000]:
            val.merged_rle(sample)
        t_masks = time.perf_counter() - t
    print(f"files: {mb:.0f} MB, {n:,} sentences in {len(splits)} splits")
    print(f"load_splits (all splits): {t_all:.2f} s")
    print(f"load_split  (val, {len(val):,} sentences): {t_val:.2f} s")
    print(f"merged masks of 1,000 val sentences: {t_masks * 1000:.0f} ms")


if __name__ == "__main__":
    main()
