"""`refseg score`: score a predictions file from any system against a benchmark split.

Examples::

    refseg score --format grefcoco --data data/grefcoco --split val \\
        --predictions preds.json --out metrics.json
    refseg score --format refcoco --data data/refcoco --split-by unc --split testA \\
        --predictions preds.jsonl --eval-size 480

The file format and the metrics are described in docs/metrics.md.
"""

from __future__ import annotations

import argparse
import sys

from refseg.commands.arguments import eval_size, unit_float
from refseg.data.types import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="benchmark format")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="folder with the refs file and instances.json")
    parser.add_argument("--split-by", metavar="NAME",
                        help="<splitBy> of refs(<splitBy>).p (e.g. unc, umd, google)")
    parser.add_argument("--split", required=True, metavar="S", help="e.g. val, testA")
    parser.add_argument("--predictions", required=True, metavar="FILE",
                        help="JSON list or JSON Lines of predictions (see docs/metrics.md)")
    parser.add_argument("--out", metavar="FILE", help="also write the metrics as JSON here")
    parser.add_argument("--eval-size", type=eval_size, metavar="S",
                        help="resize prediction and ground truth to S x S (nearest) before "
                             "scoring, to reproduce a network-resolution protocol (default: "
                             "score at the original image size)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score sentences without a prediction as empty predictions")
    parser.add_argument("--grec-score-thr", type=unit_float, default=0.7, metavar="T",
                        help="GREC keeps predicted boxes with score >= T (default 0.7)")


def run(args: argparse.Namespace) -> int:
    from refseg.data.load import load_split
    from refseg.io.atomic import check_distinct, check_output, write_json
    from refseg.io.predictions import read_predictions
    from refseg.metrics.scorer import format_table, score_predictions

    if args.out:
        check_output(args.out)
        check_distinct(args.out, "--out", args.predictions, "--predictions")
    dataset = load_split(args.format, args.data, args.split, split_by=args.split_by)
    predictions = read_predictions(args.predictions)
    result = score_predictions(
        dataset,
        predictions,
        source=str(args.predictions),
        allow_missing=args.allow_missing,
        eval_size=args.eval_size,
        grec_score_thr=args.grec_score_thr,
    )
    for warning in result["warnings"]:
        print(f"refseg score: warning: {warning}", file=sys.stderr)
    print(format_table(result, f"{args.format} {args.split}"))
    if args.out:
        write_json(args.out, result)
    return 0
