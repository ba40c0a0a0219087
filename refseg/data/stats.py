"""Counts of a benchmark's splits and a check of its image folder (``refseg data``)."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from refseg.data.dataset import RefDataset
from refseg.data.types import Sample

COLUMNS = ("images", "refs", "sentences", "no_target", "multi_target", "instances")


@dataclass
class SplitStats:
    """What one split (or several together) holds.

    Attributes:
        images: distinct images the sentences are about.
        refs: distinct refs with at least one sentence.
        sentences: samples (one per sentence).
        no_target: sentences that refer to nothing.
        multi_target: sentences with 2+ referents.
        instances: distinct annotations referred to.
        skipped: what the reader left out, by reason.
    """

    images: int
    refs: int
    sentences: int
    no_target: int
    multi_target: int
    instances: int
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def count_samples(samples: list[Sample], skipped: dict[str, int] | None = None) -> SplitStats:
    return SplitStats(
        images=len({s.image_id for s in samples}),
        refs=len({s.ref_id for s in samples}),
        sentences=len(samples),
        no_target=sum(s.no_target for s in samples),
        multi_target=sum(s.is_multi for s in samples),
        instances=len({a for s in samples for a in s.ann_ids}),
        skipped=dict(skipped or {}),
    )


def split_stats(dataset: RefDataset) -> SplitStats:
    return count_samples(dataset.samples, dataset.skipped)


def benchmark_stats(splits: dict[str, RefDataset]) -> dict[str, SplitStats]:
    """Per split, plus ``"all"``: every split together (images, refs, instances distinct)."""
    out = {name: split_stats(ds) for name, ds in splits.items()}
    skipped: dict[str, int] = {}
    for ds in splits.values():
        for reason, n in ds.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    out["all"] = count_samples([s for ds in splits.values() for s in ds.samples], skipped)
    return out


def format_table(stats: dict[str, SplitStats]) -> str:
    """Aligned text table, one row per split; notes on what was skipped below it."""
    header = ("split",) + tuple(c.replace("_", "-") for c in COLUMNS)
    rows = [header] + [
        (name,) + tuple(f"{getattr(st, c):,}" for c in COLUMNS) for name, st in stats.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    # Split names left-aligned, numbers right-aligned.
    lines = [
        "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])])
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = {
        "refs_without_sentences": "refs without sentences (skipped)",
        "crowd_only_sentences": "target sentences whose referents are all crowd (skipped)",
    }
    for name, st in stats.items():
        for reason, n in st.skipped.items():
            if n and name != "all":
                lines.append(f"{name}: {n:,} {notes.get(reason, reason)}")
    return "\n".join(lines)


@dataclass
class ImageProblem:
    image_id: int
    file: str
    problem: str


def check_images(
    splits: dict[str, RefDataset], *, progress: bool = True
) -> tuple[int, list[ImageProblem]]:
    """Decode every image the splits use; report each missing, unreadable or mis-sized one.

    Returns:
        (number of distinct images checked, problems in image-id order).
    """
    from tqdm import tqdm

    from refseg.io.images import check_image

    infos, roots = {}, {}
    for ds in splits.values():
        for image_id, info in ds.images.items():
            infos[image_id] = info
            roots[image_id] = ds.image_root
    ids = sorted(infos)

    def check(image_id: int) -> ImageProblem | None:
        info = infos[image_id]
        path = Path(roots[image_id]) / info.file_name
        problem = check_image(path, (info.height, info.width))
        return None if problem is None else ImageProblem(image_id, str(path), problem)

    # Pillow releases the GIL while decoding: threads overlap file reads and decoding.
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            tqdm(
                pool.map(check, ids),
                total=len(ids),
                desc="checking images",
                unit="img",
                file=sys.stderr,
                disable=None if progress else True,
            )
        )
    return len(ids), [p for p in results if p is not None]
