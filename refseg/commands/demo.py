"""`refseg demo`: synthesise the benchmark, train a tiny model, evaluate it beside two
trivial baselines, and write overlays, training curves and the metrics."""

from __future__ import annotations

import argparse

from refseg.commands.arguments import non_negative_int, positive_float, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="instalign-tiny",
                        help="a named config to train (default: instalign-tiny)")
    parser.add_argument("--out", default="runs/demo", metavar="DIR",
                        help="output folder (default: runs/demo)")
    parser.add_argument("--minutes", type=positive_float, default=None,
                        help="training time budget in minutes (default: the config's "
                             "train.max_minutes, 9 for the tiny configs)")
    parser.add_argument("--images", type=positive_int, default=5000,
                        help="synthetic images over all splits (default: 5000)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="synthetic image side (default: the model's input side)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data and training")
    parser.add_argument("--overlays", type=non_negative_int, default=8,
                        help="validation samples drawn as overlays (default: 8)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. data.nsc_prob=0.15")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--check", action="store_true",
                        help="exit with code 1 unless the model beats both baselines")


def run(args: argparse.Namespace) -> int:
    from refseg.demo.pipeline import DemoOptions, run_demo

    options = DemoOptions(
        model=args.model,
        out=args.out,
        minutes=args.minutes,
        images=args.images,
        size=args.size,
        seed=args.seed,
        overlays=args.overlays,
        overrides=list(args.overrides),
        progress=not args.no_progress,
    )
    report = run_demo(options)
    return 1 if args.check and not report.beats_baselines else 0
