"""How often a model says "no target" to each kind of no-target sentence of a synthetic
benchmark (`refseg.data.synth.expressions.no_target_kind`), from predictions it saved.

    refseg eval CKPT --format grefcoco --data DIR --images DIR/images --split val \
        --save-predictions preds.jsonl
    .venv/bin/python benchmarks/no_target_kinds.py --data DIR --predictions preds.jsonl \
        [--split val]

(`refseg demo` leaves DIR/synth and its val predictions.jsonl.) A sentence counts as said
none when its prediction's explicit no-target decision is set, as N-acc counts it; the
last line is N-acc. Sentences naming an absent shape are also split by the shape named.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from refseg.data.load import load_split
from refseg.data.synth import read_scenes
from refseg.data.synth.expressions import no_target_kind, parse
from refseg.io.predictions import read_predictions


def said_none_by_kind(data: Path, predictions: Path, split: str) -> tuple[Counter, Counter]:
    """(sentences, said none) per kind, over the split's no-target sentences."""
    scenes = read_scenes(data)
    decided = {p.sent_id: p.no_target for p in read_predictions(predictions)}
    total, none = Counter(), Counter()
    for sample in load_split("grefcoco", data, split, images=data / "images").samples:
        if not sample.no_target:
            continue
        if sample.sent_id not in decided:
            raise SystemExit(f"{predictions}: no prediction for sent_id {sample.sent_id}")
        expr, things = parse(sample.sentence), list(scenes[sample.image_id].values())
        kind = no_target_kind(expr, things)
        groups = [kind]
        if kind == "absent shape":  # the shape named (by the head or the landmark) and absent
            phrases = [expr.head, expr.landmark]
            groups.append("absent shape: " + next(
                ph.shape for ph in phrases if ph is not None and ph.shape is not None
                and all(t.shape != ph.shape for t in things)))
        for group in groups + ["all (N-acc)"]:
            total[group] += 1
            none[group] += decided[sample.sent_id]
    return total, none


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `refseg synth` folder")
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    total, none = said_none_by_kind(args.data, args.predictions, args.split)
    for group in sorted(total, key=lambda g: (g == "all (N-acc)", g)):
        print(f"{group:26s} n {total[group]:4d}  said none {100 * none[group] / total[group]:5.1f} %")


if __name__ == "__main__":
    main()
