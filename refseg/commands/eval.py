"""`refseg eval CHECKPOINT --format F --data DIR --split S`: metrics of a checkpoint.

The metrics are those `refseg score` reports on the predictions it saves; under
`torchrun --nproc_per_node N` they are identical to one process.
"""

from __future__ import annotations

import argparse

from refseg.commands.arguments import eval_size, non_negative_int, positive_int, unit_float
from refseg.data.types import FORMATS

CHECKPOINT_HELP = "checkpoint directory, or a run directory (its best, else last checkpoint)"
THRESHOLD_HELP = "override a saved threshold (no_target, instance, mask); repeatable"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--format", required=True, choices=FORMATS, help="benchmark format")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder with the refs file and instances.json")
    parser.add_argument("--images", metavar="DIR",
                        help="image folder (default: DIR/images of --data, if it exists)")
    parser.add_argument("--split", required=True, metavar="S", help="e.g. val, testA")
    parser.add_argument("--split-by", metavar="NAME",
                        help="<splitBy> of refs(<splitBy>).p (default: the format's)")
    parser.add_argument("--save-predictions", metavar="FILE",
                        help="write the predictions file (.json list or .jsonl)")
    parser.add_argument("--out", metavar="FILE", help="also write the metrics as JSON here")
    parser.add_argument("--threshold", action="append", metavar="KEY=VALUE", help=THRESHOLD_HELP)
    parser.add_argument("--eval-size", type=eval_size, metavar="S",
                        help="score at S x S (nearest) as a network-resolution protocol does "
                             "(default: the original image size)")
    parser.add_argument("--grec-score-thr", type=unit_float, default=0.7, metavar="T",
                        help="GREC keeps predicted boxes with score >= T (default 0.7)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="data loading processes (0: load in the main process)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--no-progress", action="store_true")


def _check(args: argparse.Namespace) -> None:
    """Refuse what would fail only after the model is loaded; fill in the image folder."""
    from pathlib import Path

    from refseg.data.load import default_images
    from refseg.errors import ConfigError
    from refseg.io.atomic import check_distinct, check_output

    if not Path(args.data).is_dir():
        raise ConfigError(f"{args.data}: no such folder")
    if args.images is None:
        args.images = str(default_images(args.data, "--images DIR"))
    for output in (args.out, args.save_predictions):
        if output:
            check_output(output)
    if args.out and args.save_predictions:
        check_distinct(args.out, "--out", args.save_predictions, "--save-predictions")


def run(args: argparse.Namespace) -> int:
    import sys

    from refseg.data.load import load_split
    from refseg.engine import checkpoint, distributed
    from refseg.engine.evaluate import predict_split, score
    from refseg.io.atomic import write_json
    from refseg.metrics.scorer import format_table
    from refseg.predictor import merge_thresholds, parse_threshold_overrides

    _check(args)
    overrides = parse_threshold_overrides(args.threshold)
    ctx = distributed.init(args.device)
    try:
        loaded = checkpoint.load(args.checkpoint, device=ctx.device)
        dataset = load_split(
            args.format, args.data, args.split, split_by=args.split_by, images=args.images
        )
        predictions = predict_split(
            loaded.model,
            loaded.tokenizer,
            dataset,
            image_size=loaded.config.data.image_size,
            thresholds=merge_thresholds(loaded.thresholds, overrides,
                                        loaded.model.threshold_keys),
            ctx=ctx,
            batch_size=args.batch_size,
            num_workers=args.workers,
            amp=loaded.config.train.amp,
            progress=not args.no_progress,
        )
        if ctx.is_main:
            if args.save_predictions:
                from refseg.io.predictions import write_predictions

                write_predictions(args.save_predictions, predictions)
            metrics = score(
                dataset, predictions, eval_size=args.eval_size, grec_score_thr=args.grec_score_thr
            )
            for warning in metrics["warnings"]:
                print(f"refseg eval: warning: {warning}", file=sys.stderr)
            print(format_table(metrics, f"{loaded.path} on {args.format} {args.split}"))
            if args.out:
                write_json(args.out, metrics)
    finally:
        distributed.shutdown()
    return 0
