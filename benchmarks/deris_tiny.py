"""Does deris-tiny learn the synthetic benchmark on CPU, and what does NSC add?

    .venv/bin/python benchmarks/deris_tiny.py [--data DIR] [--minutes 8] [--iters 0]
        [--threads 2] [--thresholds 0.5,0.6,0.7,0.8] [KEY=VALUE ...]

Trains ``deris-tiny`` twice on the same data and budget, with NSC (the config's 0.15) and
without (``data.nsc_prob=0``), then prints the val metrics of each (GRES gIoU / cIoU /
N-acc / T-acc at the original image size, as `refseg eval` reports them) for several
instance thresholds, next to the trivial "predict nothing" baseline. Without ``--data``
a default synthetic benchmark is generated in a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from refseg.data.load import load_split
from refseg.data.synth import generate
from refseg.engine import checkpoint, distributed
from refseg.engine.evaluate import numbers, predict_split, score
from refseg.engine.trainer import resolve_config, train
from refseg.modeling.base import Thresholds

KEYS = ("gIoU", "cIoU", "N-acc", "T-acc")


def row(name: str, metrics: dict) -> str:
    return f"{name:34s} " + "  ".join(f"{k} {metrics.get(k, float('nan')):6.2f}" for k in KEYS)


def evaluate(run_dir: Path, val, thresholds: list[float]) -> list[tuple[float, dict]]:
    """Val metrics of the run's last checkpoint at each instance threshold."""
    loaded = checkpoint.load(run_dir / "checkpoints" / "last")
    ctx = distributed.init("cpu")
    out = []
    for thr in thresholds:
        saved = loaded.thresholds
        preds = predict_split(loaded.model, loaded.tokenizer, val,
                              image_size=loaded.config.data.image_size,
                              thresholds=Thresholds(saved.no_target, thr, saved.mask), ctx=ctx)
        out.append((thr, numbers(score(val, preds))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a synthetic benchmark folder (default: generate one)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per run")
    parser.add_argument("--iters", type=int, default=0, help="fixed steps instead of minutes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--thresholds", default="0.5,0.6,0.7,0.8")
    parser.add_argument("overrides", nargs="*", help="config overrides for both runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else generate(Path(tmp) / "synth", layout="grefcoco")
        val = load_split("grefcoco", data, "val", images=data / "images")
        nothing = sum(s.no_target for s in val.samples) / len(val.samples) * 100
        print(row("predict nothing", {"gIoU": nothing, "cIoU": 0.0, "N-acc": 100.0,
                                      "T-acc": 0.0}))
        budget = [f"train.max_minutes={args.minutes}"] if not args.iters else [
            "train.max_minutes=0", f"train.max_iters={args.iters}"]
        for name, nsc in (("with NSC", []), ("without NSC", ["data.nsc_prob=0"])):
            config = resolve_config("deris-tiny", [
                f"data.root={data}", f"data.images={data / 'images'}", *budget, *nsc,
                *args.overrides])
            run_dir = Path(tmp) / name.replace(" ", "_")
            start = time.time()
            result = train(config, run_dir, progress=False)
            took = time.time() - start
            print(f"deris-tiny {name}: {result.iteration} steps in {took:.0f} s")
            for thr, metrics in evaluate(run_dir, val, thresholds):
                print(row(f"  instance threshold {thr:.2f}", metrics))


if __name__ == "__main__":
    main()
