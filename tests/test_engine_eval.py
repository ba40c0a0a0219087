"""`refseg eval`: metrics equal `refseg score` on the saved predictions, torchrun equals one
process, validation during training, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_tinyfilm import register, run_config, synth

from refseg.cli import main
from refseg.engine import checkpoint
from refseg.engine.trainer import train
from refseg.io.predictions import read_predictions

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tinyfilm run on a small synthetic benchmark, validated every 10 iterations."""
    with pytest.MonkeyPatch.context() as mp:
        register(mp)
        root = tmp_path_factory.mktemp("eval")
        data = synth(root)
        config = run_config(
            data, "train.epochs=1", "train.batch_size=4", "train.eval_every=10",
            "train.checkpoint_every=100",
        )
        result = train(config, root / "run", progress=False)
        yield data, result


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    register(monkeypatch)


def eval_args(data, ckpt, *extra):
    return ["eval", str(ckpt), "--format", "grefcoco", "--data", str(data), "--images",
            str(data / "images"), "--split", "val", "--workers", "0", "--no-progress", *extra]


def test_training_validates_and_keeps_best_and_last(trained):
    data, result = trained
    run = result.run_dir
    vals = [json.loads(line) for line in (run / "metrics.jsonl").open() if '"val"' in line]
    assert [v["iteration"] for v in vals] == [10, 14]  # every 10 iterations, and the end
    assert {"cIoU", "gIoU", "N-acc", "T-acc"} <= set(vals[0]["val"])
    assert result.metrics is not None and "gIoU" in result.metrics
    best = checkpoint.read_meta(run / "checkpoints" / "best")["iteration"]
    # best: the first validation with the highest gIoU (a tie does not move it)
    top = max(v["val"]["gIoU"] for v in vals)
    assert best == next(v["iteration"] for v in vals if v["val"]["gIoU"] == top)
    assert checkpoint.read_meta(run / "checkpoints" / "last")["iteration"] == 14


@pytest.fixture(scope="module")
def mixed(trained):
    """--threshold options at which this barely trained model gives non-trivial output on
    val: no-target for about half of the sentences, masks covering half of the image or more."""
    import refseg
    from refseg.data.load import load_split

    data, result = trained
    with pytest.MonkeyPatch.context() as mp:
        register(mp)
        predictor = refseg.load(result.checkpoint, device="cpu")
    split = load_split("grefcoco", data, "val", images=data / "images")
    images = [split.image_path(s) for s in split.samples]
    sentences = [s.sentence for s in split.samples]
    with pytest.warns(UserWarning):  # some sentences are longer than 6 tokens
        nt = sorted(r.no_target_score for r in predictor.predict_batch(images, sentences))
        for mask in np.arange(0.95, 0.0, -0.05):
            chosen = {"no_target": 1.0, "mask": mask}
            results = predictor.predict_batch(images, sentences, thresholds=chosen)
            if np.mean([r.mask.mean() for r in results]) >= 0.5:
                break
    return ["--threshold", f"no_target={(nt[2] + nt[3]) / 2}", "--threshold", f"mask={mask:.2f}"]


def test_eval_metrics_equal_score_of_saved_predictions(trained, mixed, tmp_path):
    data, result = trained
    preds, m_eval, m_score = tmp_path / "p.jsonl", tmp_path / "eval.json", tmp_path / "score.json"
    args = eval_args(
        data, result.checkpoint, "--save-predictions", str(preds), "--out", str(m_eval)
    )
    assert main(args + mixed) == 0
    assert main(["score", "--format", "grefcoco", "--data", str(data), "--split", "val",
                 "--predictions", str(preds), "--out", str(m_score)]) == 0
    by_eval, by_score = json.loads(m_eval.read_text()), json.loads(m_score.read_text())
    assert by_eval == by_score
    assert by_eval["cIoU"] > 0
    assert "GREC" in by_eval  # instances were saved, so boxes were scored too
    records = read_predictions(preds)
    assert len(records) == 6 and all(r.has_instances for r in records)
    assert {r.no_target for r in records} == {True, False}
    # each record carries the score its decision thresholded: one threshold splits them
    said_none = [r.no_target_score for r in records if r.no_target]
    assert max(r.no_target_score for r in records if not r.no_target) < min(said_none)


def test_eval_thresholds_change_decisions(trained, tmp_path):
    data, result = trained
    always, never = tmp_path / "a.json", tmp_path / "n.json"
    for value, path in (("0", always), ("1", never)):
        args = ["--threshold", f"no_target={value}", "--save-predictions", str(path)]
        assert main(eval_args(data, result.checkpoint, *args)) == 0
    assert all(p.no_target and not p.instances for p in read_predictions(always))
    assert not any(p.no_target for p in read_predictions(never))
    # thresholds change the decisions, not the scores behind them
    scores = [[p.no_target_score for p in read_predictions(f)] for f in (always, never)]
    assert scores[0] == scores[1]


def torchrun(*args, nproc=2, timeout=180, ok=True, **env_extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS), **env_extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(TESTS / "engine_launch.py"), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert (done.returncode == 0) == ok, done.stderr[-3000:]
    return done


def test_eval_under_torchrun_equals_one_process(trained, mixed, tmp_path):
    data, result = trained
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    p1, p2 = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    args = eval_args(data, result.checkpoint, "--batch-size", "2", "--device", "cpu",
                     *mixed)
    assert main(args + ["--out", str(one), "--save-predictions", str(p1)]) == 0
    torchrun(*args, "--out", str(two), "--save-predictions", str(p2))
    assert json.loads(one.read_text()) == json.loads(two.read_text())
    assert p1.read_text() == p2.read_text()


@pytest.mark.slow
def test_training_under_torchrun_validates_checkpoints_and_resumes(trained, tmp_path):
    data, _ = trained
    run = tmp_path / "ddp"
    args = ["train", "tinyfilm-test", f"data.root={data}", f"data.images={data / 'images'}",
            "train.batch_size=4", "train.max_iters=6", "train.checkpoint_every=3",
            "train.eval_every=3",
            "--out", str(run), "--no-progress"]
    torchrun(*args)
    assert checkpoint.read_meta(run / "checkpoints" / "last")["iteration"] == 6
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    vals = [line["iteration"] for line in lines if "val" in line]
    assert vals == [3, 6]
    done = torchrun(*args, "--resume")  # both ranks load the state; nothing is left to do
    assert "6 iterations" in done.stdout


@pytest.mark.slow
def test_torchrun_resume_after_a_kill_equals_the_uninterrupted_run(trained, tmp_path):
    """Each rank draws its own dropout masks, so each rank's RNG state is saved and
    restored: the resumed 2-process run ends with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    data, _ = trained
    args = ["train", "tinyfilm-test", f"data.root={data}", f"data.images={data / 'images'}",
            "data.val_split=", "train.batch_size=4", "train.max_iters=8",
            "train.checkpoint_every=4", "--no-progress"]
    torchrun(*args, "--out", str(tmp_path / "straight"))
    killed = tmp_path / "killed"
    torchrun(*args, "--out", str(killed), ok=False, REFSEG_TEST_DIE_AFTER="6")
    assert checkpoint.read_meta(killed / "checkpoints" / "last")["iteration"] == 4
    torchrun(*args, "--out", str(killed), "--resume")
    a, b = (load_file(str(run / "checkpoints" / "last" / checkpoint.WEIGHTS))
            for run in (tmp_path / "straight", killed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rngs = torch.load(killed / "checkpoints" / "last" / checkpoint.TRAIN_STATE,
                      weights_only=True)["rng"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])


@pytest.mark.slow
def test_a_matching_failure_on_one_rank_stops_every_rank(trained, tmp_path):
    data, _ = trained
    run = tmp_path / "run"
    done = torchrun("train", "tinyfilm-test", f"data.root={data}", "data.val_split=",
                    "train.batch_size=4", "train.max_iters=8", "train.checkpoint_every=2",
                    "--out", str(run), "--no-progress", ok=False, timeout=120,
                    REFSEG_TEST_UNMATCHED_AT="3")  # a hang here is a TimeoutExpired
    assert "non-finite matching cost (injected on rank 1) at iteration 3" in done.stderr
    assert "non-finite matching cost (on another process) at iteration 3" in done.stderr
    assert checkpoint.read_meta(run / "checkpoints" / "last")["iteration"] == 2


def test_eval_reports_a_corrupt_image_by_name(trained, tmp_path, capsys):
    from refseg.data.load import load_split

    data, result = trained
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    split = load_split("grefcoco", bad, "val", images=bad / "images")
    victim = split.image_path(split.samples[0])
    victim.write_bytes(victim.read_bytes()[:60])  # a truncated PNG
    for workers in ("0", "1"):  # in a DataLoader worker too, the message stays one line
        code = main(["eval", str(result.checkpoint), "--format", "grefcoco", "--data", str(bad),
                     "--images", str(bad / "images"), "--split", "val", "--workers", workers,
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2
        errors = [line for line in err.splitlines() if line.startswith("refseg eval: error")]
        assert len(errors) == 1 and str(victim) in errors[0] and "Traceback" not in err


def test_eval_of_a_truncated_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    data, result = trained
    ckpt = tmp_path / "ckpt"
    shutil.copytree(result.checkpoint, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(eval_args(data, ckpt)) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "truncated or corrupt" in err


def test_eval_predictions_are_at_original_size(trained, tmp_path):
    data, result = trained
    preds = tmp_path / "p.json"
    assert main(eval_args(data, result.checkpoint, "--save-predictions", str(preds))) == 0
    for p in read_predictions(preds):
        assert p.mask["size"] == [48, 48]
        assert np.isfinite([inst.score for inst in p.instances]).all()


def test_an_empty_sentence_in_a_split_is_an_error_and_long_ones_are_counted(trained):
    import dataclasses

    from refseg.data.load import load_split
    from refseg.engine.distributed import DistContext
    from refseg.engine.evaluate import predict_split
    from refseg.errors import DataError

    data, result = trained
    loaded = checkpoint.load(result.checkpoint)
    split = load_split("grefcoco", data, "val", images=data / "images")
    kwargs = dict(image_size=32, thresholds=loaded.thresholds, ctx=DistContext())
    with pytest.warns(UserWarning, match=r"of 6 sentences of split 'val' are longer than 6 tokens"):
        assert len(predict_split(loaded.model, loaded.tokenizer, split, **kwargs)) == 6
    blank = dataclasses.replace(split.samples[2], sentence="  ")
    broken = dataclasses.replace(split, samples=split.samples[:2] + [blank] + split.samples[3:])
    named = rf"sentence {blank.sent_id} \(.*grefs\(unc\)\.json\): empty or whitespace-only"
    with pytest.raises(DataError, match=named):
        predict_split(loaded.model, loaded.tokenizer, broken, **kwargs)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
        (["--eval-size", "0"], "argument --eval-size: expected a side of 1 to 8192 pixels, got 0"),
        (["--grec-score-thr", "1.5"],
         "argument --grec-score-thr: expected a number in [0, 1], got 1.5"),
        (["--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    ],
)
def test_eval_bad_options_are_usage_errors(trained, capsys, option, message):
    data, result = trained
    with pytest.raises(SystemExit) as exit_info:
        main(eval_args(data, result.checkpoint, *option))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_reads_data_images_by_default_and_refuses_early_without(trained, tmp_path,
                                                                    capsys):
    data, result = trained
    args = eval_args(data, result.checkpoint, "--out", str(tmp_path / "m.json"))
    cut = args.index("--images")
    assert main(args[:cut] + args[cut + 2:]) == 0  # DATA/images
    assert json.loads((tmp_path / "m.json").read_text())["gIoU"] >= 0
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "grefs(unc).json").write_text("[]")
    argv = ["eval", str(result.checkpoint), "--format", "grefcoco", "--data", str(bare),
            "--split", "val"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "images does not exist; give the image folder with --images DIR" in err
    assert "eval val" not in err  # refused before loading the model or any progress bar
    argv[argv.index("--data") + 1] = str(tmp_path / "nowhere")
    assert main(argv) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_eval_refuses_one_file_for_metrics_and_predictions(trained, tmp_path, capsys):
    data, result = trained
    same = str(tmp_path / "both.json")
    assert main(eval_args(data, result.checkpoint, "--out", same,
                          "--save-predictions", same)) == 2
    err = capsys.readouterr().err
    assert "--out and --save-predictions name the same file" in err
    assert "eval val" not in err and not (tmp_path / "both.json").exists()


def test_eval_bad_threshold_is_a_one_line_error(trained, capsys):
    data, result = trained
    assert main(eval_args(data, result.checkpoint, "--threshold", "mask=7")) == 2
    assert "thresholds.mask=7.0: expected a number in [0, 1]" in capsys.readouterr().err
