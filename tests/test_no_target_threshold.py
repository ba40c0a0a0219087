"""benchmarks/no_target_threshold.py: re-deciding saved predictions at a no-target threshold
gives the metrics counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_script

from refseg.data.load import load_split
from refseg.data.masks import mask_to_rle
from refseg.data.synth import generate
from refseg.data.types import Prediction
from refseg.engine.evaluate import score


def test_threshold_redecides_saved_scores(tmp_path):
    """Exact masks on target sentences, the whole image on no-target ones; scores 0.9 on
    no-target sentences, 0.1 on targets but one at 0.6."""
    data = generate(tmp_path / "synth", images=16, size=64, seed=2)
    dataset = load_split("grefcoco", data, "train", images=data / "images")
    wrong = next(s for s in dataset.samples if not s.no_target)
    predictions = []
    for s in dataset.samples:
        info = dataset.image_info(s)
        mask = (np.ones((info.height, info.width), bool) if s.no_target
                else dataset.instance_masks(s).any(0))
        score_ = 0.9 if s.no_target else 0.6 if s is wrong else 0.1
        predictions.append(Prediction(s.sent_id, mask_to_rle(mask), False,
                                      no_target_score=score_))
    n_none = sum(s.no_target for s in dataset.samples)
    n_target = len(dataset.samples) - n_none
    assert n_none > 0 and n_target > 1
    at = load_script("no_target_threshold").at_threshold

    kept = at(predictions, 0.95)  # nothing passes: every prediction as it was
    assert kept == predictions
    metrics = score(dataset, kept)
    assert metrics["N-acc"] == 0.0 and metrics["T-acc"] == 100.0
    assert metrics["gIoU"] == pytest.approx(100.0 * n_target / len(dataset.samples))

    metrics = score(dataset, at(predictions, 0.5))  # the no-target ones and `wrong` flip
    assert metrics["N-acc"] == 100.0
    assert metrics["T-acc"] == pytest.approx(100.0 * (n_target - 1) / n_target)
    assert metrics["gIoU"] == pytest.approx(100.0 * (len(dataset.samples) - 1) / len(dataset.samples))


def test_a_model_deciding_otherwise_is_refused():
    """A no-target decision with the threshold at 1 (DeRIS: no instance kept) stops the sweep
    with a message naming the way to sweep such a model."""
    check = load_script("no_target_threshold").require_undecided
    empty = {"size": [4, 4], "counts": "04"}
    check([Prediction(1, empty, False, no_target_score=0.9)])  # passes
    with pytest.raises(SystemExit, match="deris_tiny.py"):
        check([Prediction(1, empty, False, no_target_score=0.1),
               Prediction(2, empty, True, no_target_score=0.2)])
