"""How often a model says "no target" to each kind of no-target sentence of a synthetic
benchmark (`refseg.data.synth.expressions.no_target_kind`), from predictions it saved.

    refseg eval CKPT --format grefcoco --data DIR --images DIR/images --split val \
        --save-predictions preds.jsonl
    .venv/bin/python benchmarks/no_target_kinds.py --data DIR --predictions preds.jsonl \
        [--split val]

(`refseg demo` leaves DIR/synth and its val predictions.jsonl.) A sentence counts as said
none when its prediction's explicit no-target decision is set, as N-acc counts it; the
last line is N-acc. Sentences naming an absent shape are also split by the shape named.
When the predictions carry `no_target_score` (refseg writes it), each row also gives the
ROC AUC of that score between the row's no-target sentences and all target sentences:
how well the model separates that kind, whatever the threshold (0.5: not at all).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from refseg.data.load import load_split
from refseg.data.synth import read_scenes
from refseg.data.synth.expressions import absent_value, no_target_kind, parse
from refseg.io.predictions import read_predictions
from refseg.metrics.separation import roc_auc


def said_none_by_kind(rows: list) -> tuple[Counter, Counter]:
    """(sentences, said none) per kind, from `no_target_rows`' no-target rows."""
    total, none = Counter(), Counter()
    for groups, pred in rows:
        for group in groups:
            total[group] += 1
            none[group] += pred.no_target
    return total, none


def auc_by_kind(rows: list, targets: list) -> dict[str, float]:
    """ROC AUC of ``no_target_score`` per kind: the chance that a no-target sentence of the
    kind scores above a target sentence (ties half). Empty when a prediction has no score."""
    if any(p.no_target_score is None for _, p in rows) or not targets or \
            any(p.no_target_score is None for p in targets):
        return {}
    negatives = [p.no_target_score for p in targets]
    scores: dict[str, list[float]] = {}
    for groups, pred in rows:
        for group in groups:
            scores.setdefault(group, []).append(pred.no_target_score)
    return {group: roc_auc(values, negatives) for group, values in scores.items()}


def no_target_rows(data: Path, predictions: Path, split: str) -> tuple[list, list]:
    """([(groups, prediction)] for the no-target sentences, [prediction] for the targets)."""
    scenes = read_scenes(data)
    by_id = {p.sent_id: p for p in read_predictions(predictions)}
    rows, targets = [], []
    for sample in load_split("grefcoco", data, split, images=data / "images").samples:
        if sample.sent_id not in by_id:
            raise SystemExit(f"{predictions}: no prediction for sent_id {sample.sent_id}")
        pred = by_id[sample.sent_id]
        if not sample.no_target:
            targets.append(pred)
            continue
        expr, things = parse(sample.sentence), list(scenes[sample.image_id].values())
        kind = no_target_kind(expr, things)
        groups = [kind]
        if kind == "absent shape":  # also by the shape named
            groups.append("absent shape: " + absent_value(expr, things)[1])
        rows.append((groups + ["all (N-acc)"], pred))
    return rows, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `refseg synth` folder")
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--split", default="val")
    args = parser.parse_args()
    rows, targets = no_target_rows(args.data, args.predictions, args.split)
    total, none = said_none_by_kind(rows)
    auc = auc_by_kind(rows, targets)
    for group in sorted(total, key=lambda g: (g == "all (N-acc)", g)):
        share = 100 * none[group] / total[group]
        line = f"{group:26s} n {total[group]:4d}  said none {share:5.1f} %"
        print(line + (f"  AUC {auc[group]:.2f}" if group in auc else ""))


if __name__ == "__main__":
    main()
