"""The scorer on the tiny benchmarks (tests/builders.py): ground truth scores 100, empty
predictions score what the definitions imply, and every check of the predictions."""

from __future__ import annotations

import numpy as np
import pytest
from builders import (
    IMAGES,
    annotations,
    ref_record,
    sentence,
    tiny_benchmark,
    write_instances,
    write_refs,
)

from refseg.data.load import load_split
from refseg.data.masks import empty_rle, mask_to_rle, rle_to_mask
from refseg.data.types import Instance, Prediction
from refseg.errors import PredictionError
from refseg.metrics.rle import resize_nearest
from refseg.metrics.scorer import Scorer, format_table, score_predictions

# Splits holding both kinds of sentences where the format has both.
SPLITS = {"grefcoco": "train", "refcoco": "train", "refzom": "test", "rrefcoco": "train"}


def _dataset(fmt, tmp_path):
    return load_split(fmt, tiny_benchmark(fmt, tmp_path / fmt), SPLITS[fmt])


def ground_truth_predictions(ds) -> list[Prediction]:
    return [
        Prediction(s.sent_id, ds.merged_rle(s), s.no_target,
                   [Instance(tuple(float(v) for v in b), 1.0) for b in ds.instance_boxes(s)],
                   has_instances=True)
        for s in ds.samples
    ]


def empty_predictions(ds) -> list[Prediction]:
    return [
        Prediction(s.sent_id, empty_rle(ds.images[s.image_id].height, ds.images[s.image_id].width),
                   True, [], has_instances=True)
        for s in ds.samples
    ]


def _metrics(result: dict) -> dict:
    flat = {}
    for key, value in result.items():
        if key in ("protocol", "counts", "warnings"):
            continue
        if isinstance(value, dict):
            flat.update({f"{key} {k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


EXPECTED_KEYS = {
    "grefcoco": ["cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.7", "Pr@0.8", "Pr@0.9", "GREC"],
    "refcoco": ["mIoU", "oIoU", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "REC Pr@0.5"],
    "refzom": ["oIoU", "mIoU", "Acc"],
    "rrefcoco": ["mIoU", "mRR", "rIoU"],
}


@pytest.mark.parametrize("fmt", sorted(SPLITS))
def test_ground_truth_as_predictions_scores_100_everywhere(fmt, tmp_path):
    ds = _dataset(fmt, tmp_path)
    result = score_predictions(ds, ground_truth_predictions(ds))
    assert list(result) == EXPECTED_KEYS[fmt] + ["protocol", "counts", "warnings"]
    assert set(_metrics(result).values()) == {100.0}
    assert result["warnings"] == []
    if fmt == "grefcoco":
        assert list(result["GREC"]) == ["F1score", "N-acc", "T-acc"]


# grefcoco train: 2 target sentences, 1 no-target; refzom test: 2 zero, 2 one/many;
# rrefcoco train: ref 1 = sentence 1 (positive) + 2 (negative), ref 2 = sentence 3.
EMPTY = {
    "grefcoco": {"cIoU": 0.0, "gIoU": 100 / 3, "N-acc": 100.0, "T-acc": 0.0, "Pr@0.7": 0.0,
                 "Pr@0.8": 0.0, "Pr@0.9": 0.0, "GREC F1score": 100 / 3, "GREC N-acc": 100.0,
                 "GREC T-acc": 0.0},
    "refcoco": {"mIoU": 0.0, "oIoU": 0.0, "Pr@0.5": 0.0, "Pr@0.6": 0.0, "Pr@0.7": 0.0,
                "Pr@0.8": 0.0, "Pr@0.9": 0.0, "REC Pr@0.5": 0.0},
    "refzom": {"oIoU": 0.0, "mIoU": 0.0, "Acc": 100.0},
    "rrefcoco": {"mIoU": 0.0, "mRR": 100.0, "rIoU": 0.0},
}


@pytest.mark.parametrize("fmt", sorted(SPLITS))
def test_all_empty_predictions_score_what_the_definitions_imply(fmt, tmp_path):
    ds = _dataset(fmt, tmp_path)
    result = score_predictions(ds, empty_predictions(ds))
    assert _metrics(result) == pytest.approx(EMPTY[fmt], abs=1e-12)
    if fmt == "grefcoco":
        assert any("T-acc is 0" in w for w in result["warnings"])


def test_never_no_target_warns(tmp_path):
    ds = _dataset("grefcoco", tmp_path)
    preds = ground_truth_predictions(ds)
    for p in preds:
        if p.no_target:  # predict something on the no-target sentence
            p.mask, p.no_target = mask_to_rle(np.ones(rle_to_mask(p.mask).shape, bool)), False
            p.instances = [Instance((0.0, 0.0, 5.0, 5.0), 0.9)]
    result = score_predictions(ds, preds)
    assert result["N-acc"] == 0.0 and result["T-acc"] == 100.0
    assert [w.split(":")[0] for w in result["warnings"]] == ["GRES", "GREC"]
    assert "N-acc is 0" in result["warnings"][0]


def test_eval_size_resizes_prediction_and_ground_truth_first(tmp_path):
    ds = _dataset("refcoco", tmp_path)
    rng = np.random.default_rng(0)
    preds, expected_i, expected_u = [], 0, 0
    for s in ds.samples:
        gt = rle_to_mask(ds.merged_rle(s))
        pred = gt ^ (rng.random(gt.shape) < 0.2)
        preds.append(Prediction(s.sent_id, mask_to_rle(pred), False))
        small_pred, small_gt = resize_nearest(pred, 7), resize_nearest(gt, 7)
        expected_i += int((small_pred & small_gt).sum())
        expected_u += int((small_pred | small_gt).sum())
    result = score_predictions(ds, preds, eval_size=7)
    assert result["oIoU"] == 100.0 * expected_i / expected_u
    assert result["protocol"]["eval_size"] == 7
    assert result["protocol"]["resolution"] == "7x7 (nearest)"
    assert result["oIoU"] != score_predictions(ds, preds)["oIoU"]


def test_protocol_and_counts(tmp_path):
    ds = _dataset("grefcoco", tmp_path)
    result = score_predictions(ds, ground_truth_predictions(ds), grec_score_thr=0.8)
    assert result["protocol"] == {
        "resolution": "original", "eval_size": None,
        "thresholds": {"gres": {"pr_thresholds": [0.7, 0.8, 0.9]},
                       "grec": {"score_thr": 0.8, "iou_thr": 0.5}},
    }
    assert result["counts"] == {"sentences": 3, "target": 2, "no_target": 1, "missing": 0}
    masks_only = [Prediction(p.sent_id, p.mask, p.no_target) for p in ground_truth_predictions(ds)]
    result = score_predictions(ds, masks_only)
    assert "GREC" not in result and "grec" not in result["protocol"]["thresholds"]


def test_missing_predictions_are_an_error_unless_allowed(tmp_path):
    ds = _dataset("grefcoco", tmp_path)
    preds = [p for p in ground_truth_predictions(ds) if p.sent_id != 2]
    with pytest.raises(PredictionError, match=r"p.json: 1 of 3 sentences .* sent_id 2 \("):
        score_predictions(ds, preds, source="p.json")
    result = score_predictions(ds, preds, allow_missing=True)
    assert result["counts"]["missing"] == 1
    assert result["T-acc"] == 50.0 and result["GREC"]["T-acc"] == 50.0


def test_unknown_sent_id_and_wrong_sizes_name_the_sent_id(tmp_path):
    ds = _dataset("grefcoco", tmp_path)
    preds = ground_truth_predictions(ds)
    with pytest.raises(PredictionError, match="p.json: sent_id 99: not in grefcoco split 'train'"):
        unknown = Prediction(99, preds[0].mask, False, [], True)
        score_predictions(ds, preds + [unknown], source="p.json")
    preds[1].mask = empty_rle(3, 4)
    with pytest.raises(PredictionError,
                       match=r"sent_id 2: mask: size \[3, 4\] but image 1 is \[20, 30\]"):
        score_predictions(ds, preds, source="p.json")
    preds = ground_truth_predictions(ds)
    preds[0].instances[0].mask = empty_rle(30, 20)
    with pytest.raises(PredictionError, match=r"sent_id 1: instances\[0\].mask: size"):
        score_predictions(ds, preds)


def test_instances_on_some_records_only_is_an_error(tmp_path):
    ds = _dataset("refcoco", tmp_path)
    preds = ground_truth_predictions(ds)
    preds[1].has_instances = False
    preds[1].instances = []
    with pytest.raises(PredictionError, match=f"sent_id {preds[1].sent_id}: no 'instances'"):
        score_predictions(ds, preds)


def test_scorers_merge_across_shards(tmp_path):
    ds = _dataset("rrefcoco", tmp_path)
    preds = ground_truth_predictions(ds)
    preds[0].mask = empty_rle(*preds[0].mask["size"])
    single = Scorer(ds)
    shards = [Scorer(ds), Scorer(ds)]
    for k, p in enumerate(preds):
        single.update(p)
        shards[k % 2].update(p)
    merged = Scorer(ds).merge(shards[1].state_dict()).merge(shards[0])
    assert merged.result() == single.result()
    assert len(merged) == len(ds)


def test_table_lists_every_metric(tmp_path):
    ds = _dataset("grefcoco", tmp_path)
    result = score_predictions(ds, ground_truth_predictions(ds))
    table = format_table(result, "grefcoco train")
    assert table.splitlines()[0] == "grefcoco train: 3 sentences (2 target, 1 no-target)"
    for key in ["cIoU", "gIoU", "N-acc", "T-acc", "Pr@0.9", "GREC", "F1score"]:
        assert key in table
    assert "100.00" in table


def test_predictions_for_crowd_only_sentences_are_not_scored(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())
    write_refs(tmp_path / "grefs(unc).json", [
        ref_record(1, 1, [11], "val", [sentence(1, "the box")]),
        ref_record(2, 1, [13], "val", [sentence(2, "the crowd")]),  # 13 is a crowd region
    ])
    ds = load_split("grefcoco", tmp_path, "val")
    assert [s.sent_id for s in ds.samples] == [1] and list(ds.left_out) == [2]
    truth = ground_truth_predictions(ds)
    crowd = Prediction(2, empty_rle(20, 30), True, [], has_instances=True)
    result = score_predictions(ds, truth + [crowd])
    assert result == {**score_predictions(ds, truth), "counts": result["counts"],
                      "warnings": result["warnings"]}
    assert result["counts"]["not_scored"] == 1 and result["counts"]["sentences"] == 1
    assert result["warnings"] == ["1 predictions are for sentences left out of the split when "
                                  "read (sent_id 2: its referents are all crowd regions); they "
                                  "are not scored"]
    with pytest.raises(PredictionError, match="sent_id 2: left out of grefcoco split 'val' when "
                                              "read: its referents are all crowd regions"):
        Scorer(ds).update(crowd)
