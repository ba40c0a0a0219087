"""`refseg train CONFIG [key=value ...]`: train a model (one process or under torchrun)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "config", help="a named config (e.g. instalign-tiny), or a run's or checkpoint's "
                       "config.json (or its folder)"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE",
        help="type-checked overrides, e.g. train.lr=5e-4 data.root=data/synth "
             "(an unknown key is an error)",
    )
    parser.add_argument("--out", help="run directory (default: runs/<config name>)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --out from its last checkpoint (starts fresh when there is none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config", action="store_true",
        help="print the resolved config (overrides applied) as JSON and exit without training",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from refseg.engine.trainer import resolve_config, train
    from refseg.io.atomic import check_output

    config = resolve_config(args.config, args.overrides)
    if args.print_config:
        import json

        from refseg.config import to_dict

        print(json.dumps(to_dict(config), indent=2))
        return 0
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    check_output(out, folder=True)  # before minutes of loading data and building the model
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {result.run_dir} ({result.iteration} iterations, stopped: {result.stopped})")
        print(f"checkpoint: {result.checkpoint}")
        if result.metrics is not None:
            from refseg.metrics.scorer import format_table

            title = f"{config.data.format} {config.data.val_split} (final validation)"
            print(format_table(result.metrics, title))
    return 0
