"""Time `refseg synth`: generating the synthetic benchmark in each layout.

    .venv/bin/python benchmarks/bench_synth.py [--images 1000] [--size 128]

Prints, per layout, the wall time of `generate` into a fresh temporary folder, the
sentences written and the size of the folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from refseg.data.load import load_splits
from refseg.data.synth import REFS_FILES, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    for layout in REFS_FILES:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            out = generate(Path(tmp), layout=layout, images=args.images, size=args.size)
            seconds = time.perf_counter() - start
            sentences = sum(len(ds) for ds in load_splits(layout, out).values())
            mib = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
            print(f"{layout:9s} {args.images} images {args.size} px: {seconds:5.1f} s, "
                  f"{sentences} sentences, {mib:.0f} MiB")


if __name__ == "__main__":
    main()
