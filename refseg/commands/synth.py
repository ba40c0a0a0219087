"""`refseg synth`: generate the synthetic benchmark in a published layout."""

from __future__ import annotations

import argparse

from refseg.data.types import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="data directory to write (instances.json, images/, refs file)")
    parser.add_argument("--layout", choices=FORMATS, default="grefcoco",
                        help="published layout to write (default: grefcoco)")
    parser.add_argument("--images", type=int, default=1000, metavar="N",
                        help="total number of images over all splits (default: 1000)")
    parser.add_argument("--size", type=int, default=128, metavar="PX",
                        help="side of the square images in pixels, 32 to 16384 (default: 128)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="random seed; same arguments give identical files (default: 0)")


def run(args: argparse.Namespace) -> int:
    import time

    from refseg.data.load import load_splits, refs_file
    from refseg.data.stats import benchmark_stats, format_table
    from refseg.data.synth import generate

    start = time.perf_counter()
    out = generate(args.out, layout=args.layout, images=args.images, size=args.size,
                   seed=args.seed)
    seconds = time.perf_counter() - start
    # Counted by the same reader every other command uses: what was written is what loads.
    stats = benchmark_stats(load_splits(args.layout, out))
    print(f"{args.layout}: {refs_file(args.layout, out)} ({args.images} images of "
          f"{args.size} px, seed {args.seed}, {seconds:.1f} s)")
    print(format_table(stats))
    total = stats["all"]
    n = max(total.sentences, 1)
    single = total.sentences - total.multi_target - total.no_target
    print(f"sentences: {100 * single / n:.1f}% single, {100 * total.multi_target / n:.1f}% "
          f"multi, {100 * total.no_target / n:.1f}% no-target")
    return 0
