"""How a model's no-target threshold trades N-acc against T-acc, gIoU and cIoU, from one
pass of the model per split: it predicts once with the no-target decision off, then its
`no_target_score` is thresholded at each value (no-target: the score exceeds it).

    .venv/bin/python benchmarks/no_target_threshold.py CKPT --data DIR [--images DIR] \
        [--format grefcoco] [--splits testA val] [--thresholds 0.3 0.4 0.5 0.6 0.7]

For models whose no-target decision is `thresholds.no_target` on a no-target probability
(InstAlign). DeRIS says no target when no instance passes `thresholds.instance`; sweep
that with benchmarks/deris_tiny.py. Pick a threshold on a split you do not report (testA,
say) and report another (val); `refseg eval ... --threshold no_target=T` and
`model.predict(..., thresholds={"no_target": T})` apply it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from refseg.data.load import load_split
from refseg.data.masks import empty_rle
from refseg.data.types import Prediction
from refseg.engine import distributed
from refseg.engine.evaluate import predict_split, score
from refseg.predictor import load

KEYS = ("gIoU", "cIoU", "N-acc", "T-acc")


def at_threshold(predictions: list[Prediction], threshold: float) -> list[Prediction]:
    """The predictions a no-target threshold gives: above it, no target and an empty mask."""
    out = []
    for p in predictions:
        if p.no_target_score > threshold:
            h, w = p.mask["size"]
            p = dataclasses.replace(p, no_target=True, mask=empty_rle(h, w), instances=[])
        out.append(p)
    return out


def undecided_predictions(predictor, dataset) -> list[Prediction]:
    """Every sample's prediction with the no-target decision off (threshold 1)."""
    thresholds = dataclasses.replace(predictor.thresholds, no_target=1.0)
    predictions = predict_split(predictor.model, predictor.tokenizer, dataset,
                                image_size=predictor.image_size, thresholds=thresholds,
                                ctx=distributed.DistContext(device=predictor.device),
                                batch_size=16)
    require_undecided(predictions)
    return predictions


def require_undecided(predictions: list[Prediction]) -> None:
    """Exit with a message when a prediction says no target with the threshold at 1: the
    model decides otherwise than by `thresholds.no_target` (DeRIS), so no sweep applies."""
    if any(p.no_target for p in predictions):
        raise SystemExit("this model decides no-target otherwise than by thresholds.no_target "
                         "(DeRIS: sweep the instance threshold with benchmarks/deris_tiny.py)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, help="image folder (default: DATA/images)")
    parser.add_argument("--format", default="grefcoco")
    parser.add_argument("--splits", nargs="+", default=["testA", "val"])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    predictor = load(args.checkpoint, device="cpu")
    print(f"saved no-target threshold: {predictor.thresholds.no_target:g}")
    print(f"{'split':<8}{'threshold':>10}" + "".join(f"{k:>9}" for k in KEYS))
    for split in args.splits:
        dataset = load_split(args.format, args.data, split, images=args.images or args.data / "images")
        predictions = undecided_predictions(predictor, dataset)
        for threshold in args.thresholds:
            metrics = score(dataset, at_threshold(predictions, threshold))
            print(f"{split:<8}{threshold:>10g}" + "".join(f"{metrics[k]:>9.2f}" for k in KEYS),
                  flush=True)


if __name__ == "__main__":
    main()
