"""`refseg data`: count a downloaded benchmark's splits and verify its images.

Exit status: 0 when everything was read (and, with --images, every image opened at the
size instances.json gives), 1 when some images have problems, 2 on a user error (missing
or malformed files).
"""

from __future__ import annotations

import argparse

from refseg.data.types import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="benchmark layout")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="folder holding the refs file and instances.json",
    )
    parser.add_argument(
        "--images", metavar="DIR", help="image folder: verify every referenced image opens"
    )
    parser.add_argument(
        "--split-by",
        metavar="NAME",
        help="the <NAME> of refs(<NAME>).p (default: unc; refzom: final; or the only one)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    import json

    from refseg.data.load import load_splits, refs_file
    from refseg.data.stats import benchmark_stats, check_images, format_table

    source = refs_file(args.format, args.data, args.split_by)
    splits = load_splits(args.format, args.data, split_by=args.split_by, images=args.images)
    stats = benchmark_stats(splits)
    report = {
        "format": args.format,
        "refs_file": str(source),
        "instances": str(source.parent / "instances.json"),
        "splits": {name: st.as_dict() for name, st in stats.items()},
    }
    problems = []
    if args.images is not None:
        checked, problems = check_images(splits)
        report["images"] = {
            "folder": str(args.images),
            "checked": checked,
            "problems": [vars(p) for p in problems],
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.format}: {source}")
        print(format_table(stats))
        if args.images is not None:
            for p in problems:
                print(f"image {p.image_id}: {p.problem}")
            verdict = "all open" if not problems else f"{len(problems):,} with problems"
            print(f"images: {checked:,} checked in {args.images}, {verdict}")
    return 1 if problems else 0
