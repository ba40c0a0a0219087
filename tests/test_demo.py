"""`refseg demo` end to end at toy size: every promised file, the report beside the
baselines, and the benchmark drawn at the model's input side."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from refseg.cli import main
from refseg.demo.pipeline import DemoOptions, DemoReport, run_demo
from refseg.errors import ConfigError

FAST = ["train.max_iters=2", "train.batch_size=2", "train.eval_max_samples=4",
        "train.checkpoint_every=2"]


def test_demo_writes_every_file_and_scores_beside_the_baselines(tmp_path):
    out = tmp_path / "demo"
    report = run_demo(DemoOptions(out=str(out), images=8, overlays=2, overrides=FAST,
                                  progress=False))
    for name in ("metrics.json", "predictions.jsonl", "curves.png", "run/config.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "overlays").glob("*.png"))) == 2
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == "instalign-tiny"
    assert saved["iterations"] == 2
    assert set(saved["baselines"]) == {"all-empty", "whole-image"}
    assert saved["metrics"] == report.model
    # All-empty is right on every no-target sentence and on nothing else.
    assert saved["baselines"]["all-empty"]["N-acc"] == 100.0
    assert saved["baselines"]["all-empty"]["T-acc"] == 0.0
    # Whole-image is the other way round.
    assert saved["baselines"]["whole-image"]["N-acc"] == 0.0
    assert saved["baselines"]["whole-image"]["T-acc"] == 100.0
    # The benchmark is drawn at the network's input side (instalign-tiny: 64 px).
    image = next((out / "synth" / "images").glob("*.png"))
    assert Image.open(image).size == (64, 64)
    # A second demo into the same folder is refused at once, before generating data.
    shutil.rmtree(out / "synth")
    with pytest.raises(ConfigError, match="holds the model of an earlier demo"):
        run_demo(DemoOptions(out=str(out), images=8, overrides=FAST, progress=False))
    assert not (out / "synth").exists()


def test_demo_check_flag_fails_when_the_baselines_are_not_beaten(tmp_path, capsys):
    # Two iterations of two samples cannot beat the baselines: --check must say so.
    argv = ["demo", "--out", str(tmp_path / "demo"), "--images", "8", "--size", "48",
            "--overlays", "0", "--no-progress", "--check", *FAST]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "does NOT beat" in printed
    assert Image.open(next((tmp_path / "demo" / "synth" / "images").glob("*.png"))).size == (48, 48)


def test_verdict_judges_the_four_gres_headline_metrics_against_each_baseline():
    baselines = {"all-empty": {"gIoU": 10.0, "cIoU": 0.0, "N-acc": 100.0, "T-acc": 0.0,
                               "Pr@0.9": 0.0},
                 "whole-image": {"gIoU": 2.6, "cIoU": 2.6, "N-acc": 0.0, "T-acc": 100.0,
                                 "Pr@0.9": 0.0}}
    model = {"gIoU": 36.4, "cIoU": 40.5, "N-acc": 58.3, "T-acc": 72.6, "Pr@0.9": 0.0}
    assert DemoReport("out", model, baselines).beats_baselines  # a Pr@0.9 tie is not judged
    for key, value in [("gIoU", 10.0), ("cIoU", 2.0), ("N-acc", 0.0), ("T-acc", 0.0)]:
        assert not DemoReport("out", {**model, key: value}, baselines).beats_baselines, key


def test_baselines_answer_nothing_or_the_whole_picture_hand_scored(tmp_path):
    """gRefCOCO's tiny train split: sentences 1 and 2 name boxes 11 and 12 (48 + 112 of the
    600 pixels of their 20 x 30 image), sentence 3 nothing."""
    from builders import tiny_benchmark

    from refseg.data.load import load_split
    from refseg.data.masks import rle_to_mask
    from refseg.demo.baselines import all_empty, whole_image
    from refseg.engine.evaluate import score

    split = load_split("grefcoco", tiny_benchmark("grefcoco", tmp_path), "train")
    empty, whole = all_empty(split), whole_image(split)
    for sample, e, w in zip(split.samples, empty, whole, strict=True):
        assert e.sent_id == w.sent_id == sample.sent_id
        assert e.no_target and e.instances == [] and not w.no_target
        assert rle_to_mask(e.mask).shape == rle_to_mask(w.mask).shape == (20, 30)
        assert not rle_to_mask(e.mask).any() and rle_to_mask(w.mask).all()
        assert [(i.box, i.score) for i in w.instances] == [((0.0, 0.0, 30.0, 20.0), 1.0)]
    by_empty, by_whole = score(split, empty), score(split, whole)
    assert by_empty["gIoU"] == pytest.approx(100 / 3)  # right on the no-target sentence only
    assert by_whole["gIoU"] == pytest.approx(100 * (2 * 160 / 600) / 3)
    assert by_whole["cIoU"] == pytest.approx(100 * 2 * 160 / (2 * 600 + 600))


@pytest.mark.parametrize(("option", "message"), [
    (["--minutes", "0"], "argument --minutes: expected a positive number, got 0.0"),
    (["--minutes", "nan"], "argument --minutes: expected a positive number, got nan"),
    (["--size", "0"], "argument --size: expected a positive integer, got 0"),
    (["--images", "-5"], "argument --images: expected a positive integer, got -5"),
    (["--overlays", "-1"], "argument --overlays: expected an integer >= 0, got -1"),
])
def test_demo_refuses_bad_numbers_before_writing_anything(tmp_path, capsys, option, message):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(out), *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(("option", "message"), [
    (["--images", "3"], "--images 3: need at least 4 (one per split)"),
    (["--size", "16"], "--size 16: need at least 32 pixels"),
    (["model.encoder_heads=3"], "model.encoder_heads=3: must divide model.hidden_dim=64"),
    (["model.thresholds.mask=3"], "model.thresholds.mask=3.0: expected a number in [0, 1]"),
])
def test_demo_refuses_what_synth_or_training_would_before_generating_data(tmp_path, capsys,
                                                                         option, message):
    # The default demo draws 5,000 images first: a value that synth or training refuses
    # must stop it before that, not after.
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", *option]) == 2
    err = capsys.readouterr().err
    assert message in err and "1/4" not in err
    assert not out.exists()


def test_demo_refuses_an_out_that_is_a_file_before_generating_data(tmp_path, capsys):
    out = tmp_path / "demo"
    out.write_text("")
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "1/4" not in err
