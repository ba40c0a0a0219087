"""From a split and predictions to the metrics of its benchmark family.

`Scorer` maps a benchmark format to its accumulators, looks up the ground truth of every
prediction in a `RefDataset`, and assembles the output of `refseg score`::

    scorer = Scorer(dataset, with_instances=True)
    for pred in predictions:          # refseg.data.types.Prediction, RLE masks
        scorer.update(pred)
    result = scorer.result()          # {"cIoU": ..., "protocol": ..., "counts": ..., ...}

Its state merges across processes like the accumulators' (`state_dict`, `merge`).
"""

from __future__ import annotations

from typing import Any

from refseg.data.dataset import RefDataset
from refseg.data.types import Prediction, Sample
from refseg.errors import PredictionError
from refseg.metrics.accumulator import Accumulator
from refseg.metrics.gres import GRESAccumulator
from refseg.metrics.grec import GRECAccumulator
from refseg.metrics.refzom import RefZomAccumulator
from refseg.metrics.res import RECAccumulator, RESAccumulator
from refseg.metrics.rle import Overlap, at_eval_size, overlap
from refseg.metrics.rrefcoco import RRefCOCOAccumulator

ACCUMULATORS: dict[str, type[Accumulator]] = {
    "gres": GRESAccumulator,
    "grec": GRECAccumulator,
    "res": RESAccumulator,
    "rec": RECAccumulator,
    "refzom": RefZomAccumulator,
    "rrefcoco": RRefCOCOAccumulator,
}


def build_accumulators(format: str, *, with_instances: bool,
                       grec_score_thr: float = 0.7) -> dict[str, Accumulator]:
    """The accumulators of a benchmark format (box metrics only ``with_instances``)."""
    if format == "grefcoco":
        accs: dict[str, Accumulator] = {"gres": GRESAccumulator()}
        if with_instances:
            accs["grec"] = GRECAccumulator(score_thr=grec_score_thr)
        return accs
    if format == "refcoco":
        accs = {"res": RESAccumulator()}
        if with_instances:
            accs["rec"] = RECAccumulator()
        return accs
    if format == "refzom":
        return {"refzom": RefZomAccumulator()}
    if format == "rrefcoco":
        return {"rrefcoco": RRefCOCOAccumulator()}
    raise ValueError(f"unknown format {format!r}")


def _update(accs: dict[str, Accumulator], sample: Sample, scored: Overlap, pred: Prediction,
            dataset: RefDataset) -> None:
    sid, gt_nt = sample.sent_id, sample.no_target
    counts = {"intersection": scored.intersection, "union": scored.union}
    if "gres" in accs:
        accs["gres"].add(sid, **counts, pred_no_target=pred.no_target, gt_no_target=gt_nt)
    if "res" in accs:
        accs["res"].add(sid, **counts)
    if "refzom" in accs:
        accs["refzom"].add(sid, **counts, pred_area=scored.pred_area, gt_no_target=gt_nt)
    if "rrefcoco" in accs:
        accs["rrefcoco"].add(sid, ref_id=sample.ref_id, **counts, pred_area=scored.pred_area,
                             gt_no_target=gt_nt)
    if "grec" in accs or "rec" in accs:
        boxes = [inst.box for inst in pred.instances]
        scores = [inst.score for inst in pred.instances]
        gt_boxes = dataset.instance_boxes(sample)
        if "grec" in accs:
            accs["grec"].update(sid, boxes, scores, gt_boxes, gt_no_target=gt_nt)
        if "rec" in accs:
            accs["rec"].update(sid, boxes, scores, gt_boxes)


def _report(accs: dict[str, Accumulator]) -> dict[str, Any]:
    """The metric keys of `refseg score`, in percent."""
    out: dict[str, Any] = {}
    for name in ("gres", "res", "refzom", "rrefcoco"):
        if name in accs:
            out.update(accs[name].summary())
    if "grec" in accs:
        out["GREC"] = accs["grec"].summary()
    if "rec" in accs:
        (key, value), = accs["rec"].summary().items()
        out[f"REC {key}"] = value
    return out


def no_target_warnings(name: str, summary: dict, counts: dict) -> list[str]:
    """Warnings for a degenerate no-target decision on a set with both kinds of sentences.

    N-acc 0 (usually with T-acc 100) means no no-target sentence was recognised: a system
    that never says no-target, or a file without ``no_target`` and with masks that are
    never empty. T-acc 0 is the converse (every sentence predicted no-target).
    """
    if not counts.get("target") or not counts.get("no_target"):
        return []
    out = []
    if summary.get("N-acc") == 0:
        out.append(
            f"{name}: N-acc is 0 (T-acc {summary.get('T-acc'):.2f}): none of the "
            f"{counts['no_target']} no-target sentences was predicted no-target (does the "
            "system write 'no_target', or empty masks?)"
        )
    if summary.get("T-acc") == 0:
        out.append(
            f"{name}: T-acc is 0 (N-acc {summary.get('N-acc'):.2f}): every one of the "
            f"{counts['target']} target sentences was predicted no-target"
        )
    return out


class Scorer:
    """Scores `Prediction`s of one split against its ground truth.

    Args:
        dataset: the split (ground truth).
        with_instances: also score boxes (GREC for grefcoco, REC for refcoco).
        eval_size: None scores at the original image size; S resizes prediction and
            ground truth to S x S (nearest) first, as official network-resolution
            protocols do.
        grec_score_thr: GREC keeps predicted boxes with score >= this.
        source: names the predictions in error messages (e.g. the file).
    """

    def __init__(self, dataset: RefDataset, *, with_instances: bool = False,
                 eval_size: int | None = None, grec_score_thr: float = 0.7,
                 source: str = "predictions") -> None:
        if eval_size is not None and eval_size < 1:
            raise ValueError(f"eval_size must be positive, got {eval_size}")
        self.dataset = dataset
        self.with_instances = with_instances
        self.eval_size = eval_size
        self.source = source
        self.accumulators = build_accumulators(dataset.format, with_instances=with_instances,
                                               grec_score_thr=grec_score_thr)
        self._empty: dict[tuple[int, int], dict] = {}

    def sample(self, sent_id: int) -> Sample:
        sample = self.dataset.by_sent_id.get(sent_id)
        if sample is None and sent_id in self.dataset.left_out:
            raise PredictionError(
                f"{self.source}: sent_id {sent_id}: left out of {self.dataset.format} split "
                f"'{self.dataset.split}' when read: {self.dataset.left_out[sent_id]}"
            )
        if sample is None:
            skipped = sum(self.dataset.skipped.values()) if self.dataset.skipped else 0
            note = f"; {skipped} sentences were left out of it when read" if skipped else ""
            raise PredictionError(
                f"{self.source}: sent_id {sent_id}: not in {self.dataset.format} split "
                f"'{self.dataset.split}' ({len(self.dataset)} sentences{note})"
            )
        return sample

    def update(self, pred: Prediction) -> None:
        """Score one prediction (masks as RLE at the image's original size).

        Raises:
            PredictionError: unknown sent_id, or a mask of another size than the image.
        """
        sample = self.sample(pred.sent_id)
        info = self.dataset.image_info(sample)
        where = f"{self.source}: sent_id {pred.sent_id}"
        masks = [("mask", pred.mask)] + [
            (f"instances[{k}].mask", inst.mask) for k, inst in enumerate(pred.instances)
            if isinstance(inst.mask, dict)
        ]
        for name, rle in masks:
            if list(rle["size"]) != [info.height, info.width]:
                raise PredictionError(
                    f"{where}: {name}: size {list(rle['size'])} but image {info.id} is "
                    f"[{info.height}, {info.width}] (masks are [h, w] at the original size)"
                )
        gt = self._ground_truth(sample, info.height, info.width)
        scored = overlap(at_eval_size(pred.mask, self.eval_size), at_eval_size(gt, self.eval_size))
        _update(self.accumulators, sample, scored, pred, self.dataset)

    def _ground_truth(self, sample: Sample, height: int, width: int) -> dict:
        """The merged mask; the empty one of no-target sentences is built once per size."""
        if sample.ann_ids:
            return self.dataset.merged_rle(sample)
        return self.empty_rle(height, width)

    def empty_rle(self, height: int, width: int) -> dict:
        from refseg.data.masks import empty_rle

        key = (height, width)
        if key not in self._empty:
            self._empty[key] = empty_rle(height, width)
        return self._empty[key]

    def __len__(self) -> int:
        return len(next(iter(self.accumulators.values())))

    def protocol(self) -> dict[str, Any]:
        return {
            "resolution": "original" if self.eval_size is None
            else f"{self.eval_size}x{self.eval_size} (nearest)",
            "eval_size": self.eval_size,
            "thresholds": {name: _plain(acc.params()) for name, acc in self.accumulators.items()},
        }

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for acc in self.accumulators.values():
            counts.update(acc.counts())
        return counts

    def result(self) -> dict[str, Any]:
        """Metrics (percent), ``protocol``, ``counts`` and ``warnings``."""
        out = _report(self.accumulators)
        counts = self.counts()
        warnings = []
        for name in ("gres", "grec"):
            if name in self.accumulators:
                summary = self.accumulators[name].summary()
                warnings += no_target_warnings(name.upper(), summary, counts)
        out.update(protocol=self.protocol(), counts=counts, warnings=warnings)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {name: acc.state_dict() for name, acc in self.accumulators.items()}

    def merge(self, other: "Scorer | dict[str, Any]") -> "Scorer":
        """Add another scorer's (or `state_dict`'s) sentences to this one; returns self."""
        state = other.state_dict() if isinstance(other, Scorer) else other
        if set(state) != set(self.accumulators):
            raise ValueError(f"state holds {sorted(state)}, scorer has {sorted(self.accumulators)}")
        for name, acc in self.accumulators.items():
            acc.merge(ACCUMULATORS[name].from_state(state[name]))
        return self


def format_table(result: dict[str, Any], title: str) -> str:
    """The metrics of a `Scorer.result` as an aligned table (what the terminal shows)."""
    counts = result.get("counts", {})
    kinds = ", ".join(f"{counts[k]} {k.replace('_', '-')}" for k in ("target", "no_target")
                      if k in counts)
    lines = [f"{title}: {counts.get('sentences', 0)} sentences" + (f" ({kinds})" if kinds else "")]
    if counts.get("missing"):
        lines.append(f"  {counts['missing']} without prediction, scored as empty")
    protocol = result.get("protocol", {})
    lines.append(f"  scored at {protocol.get('resolution', 'original')} resolution")
    for key, value in result.items():
        if key in ("protocol", "counts", "warnings"):
            continue
        if isinstance(value, dict):
            lines.append(f"  {key}")
            lines += [f"    {k:<10} {_number(v)}" for k, v in value.items()]
        else:
            lines.append(f"  {key:<12} {_number(value)}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:6.2f}"


def _plain(params: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def score_predictions(dataset: RefDataset, predictions: list[Prediction], *,
                      source: str = "predictions", allow_missing: bool = False,
                      eval_size: int | None = None, grec_score_thr: float = 0.7) -> dict[str, Any]:
    """Score a predictions file's content against a split (what `refseg score` prints).

    Box metrics are scored when the predictions carry ``instances``; then every one must.

    Raises:
        PredictionError: a sent_id not in the split, a mask of the wrong size, records
            with and without ``instances``, or sent_ids of the split without a prediction
            (unless ``allow_missing``: they count as empty predictions).
    """
    with_instances = any(p.has_instances for p in predictions)
    if with_instances:
        lacking = [p.sent_id for p in predictions if not p.has_instances]
        if lacking:
            raise PredictionError(
                f"{source}: sent_id {lacking[0]}: no 'instances' while other records have them "
                f"({len(lacking)} such records)"
            )
    scorer = Scorer(dataset, with_instances=with_instances, eval_size=eval_size,
                    grec_score_thr=grec_score_thr, source=source)
    # Sentences the reader left out (crowd-only referents) have no ground truth to score
    # against; a complete predictions file of another pipeline may still hold them.
    unscored = [p.sent_id for p in predictions if p.sent_id in dataset.left_out]
    for pred in predictions:
        if pred.sent_id not in dataset.left_out:
            scorer.update(pred)
    predicted = {p.sent_id for p in predictions}
    missing = [s for s in dataset.samples if s.sent_id not in predicted]
    if missing and not allow_missing:
        shown = ", ".join(str(s.sent_id) for s in missing[:20])
        more = ", ..." if len(missing) > 20 else ""
        raise PredictionError(
            f"{source}: {len(missing)} of {len(dataset)} sentences of {dataset.format} split "
            f"'{dataset.split}' have no prediction: sent_id {shown}{more} (--allow-missing "
            "scores them as empty predictions)"
        )
    for sample in missing:
        info = dataset.image_info(sample)
        scorer.update(Prediction(sample.sent_id, scorer.empty_rle(info.height, info.width), True,
                                 [], has_instances=with_instances))
    result = scorer.result()
    result["counts"]["missing"] = len(missing)
    if unscored:
        result["counts"]["not_scored"] = len(unscored)
        result["warnings"].append(
            f"{len(unscored)} predictions are for sentences left out of the split when read "
            f"(sent_id {unscored[0]}: {dataset.left_out[unscored[0]]}); they are not scored"
        )
    return result
