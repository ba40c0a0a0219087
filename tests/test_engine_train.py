"""Training engine: resume after a kill, NaN stop, time budget, run directory, schedule."""

from __future__ import annotations

import json
import re

import pytest
import torch
from engine_tinyfilm import TinyFilm, benchmark, register, run_config
from safetensors.torch import load_file

from refseg.cli import main
from refseg.config import TrainConfig
from refseg.engine import checkpoint
from refseg.engine.schedule import build_optimizer, lr_factor
from refseg.engine.trainer import NonFiniteLoss, Trainer, train
from refseg.errors import ConfigError


@pytest.fixture
def data(tmp_path, monkeypatch):
    register(monkeypatch)
    return benchmark(tmp_path)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (no `except Exception` catches it)."""


def kill_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th optimiser step (1-based) die before it runs."""
    original = Trainer.step
    calls = {"n": 0}

    def step(self, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise Killed
        return original(self, batch)

    monkeypatch.setattr(Trainer, "step", step)


def weights(run_dir):
    return load_file(str(run_dir / "checkpoints" / "last" / "model.safetensors"))


def test_resume_after_kill_equals_uninterrupted_run(data, tmp_path, monkeypatch):
    # 3 train samples, batch 2 -> 2 iterations per epoch, 3 epochs; checkpoints at 3 and 6.
    config = run_config(data, "data.val_split=")
    straight = train(config, tmp_path / "straight", progress=False)
    assert straight.iteration == 6

    kill_at(monkeypatch, 5)  # dies in iteration 5, after the checkpoint of iteration 3
    with pytest.raises(Killed):
        train(run_config(data, "data.val_split="), tmp_path / "killed", progress=False)
    last = tmp_path / "killed" / "checkpoints" / "last"
    assert checkpoint.read_meta(last)["iteration"] == 3
    monkeypatch.undo()
    register(monkeypatch)
    config = run_config(data, "data.val_split=")
    resumed = train(config, tmp_path / "killed", resume=True, progress=False)

    assert resumed.iteration == 6
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state_a = checkpoint.load_train_state(tmp_path / "straight" / "checkpoints" / "last")
    state_b = checkpoint.load_train_state(last)
    assert state_a["optimizer"]["state"].keys() == state_b["optimizer"]["state"].keys()
    for k, v in state_a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], state_b["optimizer"]["state"][k]["exp_avg"])
    # The log reads as one run: iterations 1..6 once each (the killed run logged 4), in
    # metrics.jsonl and in TensorBoard, the checkpoint's iteration 3 included.
    log = tmp_path / "killed" / "metrics.jsonl"
    lines = [json.loads(line) for line in log.open()]
    assert [line["iteration"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert tensorboard_steps(tmp_path / "killed", "train/loss") == [1, 2, 3, 4, 5, 6]
    # Each line logs the rate its step used: linear decay from 1e-2, 1e-2 / 6 at the last.
    lrs = [line["train"]["lr"] for line in lines]
    assert lrs == pytest.approx([1e-2 * (6 - i) / 6 for i in range(6)])


def tensorboard_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))  # all files, purges applied
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_resume_without_checkpoint_starts_fresh_and_rerun_needs_resume(data, tmp_path):
    config = run_config(data, "data.val_split=", "train.epochs=1")
    first = train(config, tmp_path / "run", resume=True, progress=False)
    assert first.iteration == 2
    with pytest.raises(ConfigError, match="already holds a run"):
        train(config, tmp_path / "run", progress=False)


def test_best_points_to_the_highest_validation_and_last_to_the_end(data, tmp_path,
                                                                  monkeypatch):
    import refseg.engine.trainer as trainer

    curve = iter([10.0, 30.0, 20.0])  # gIoU at iterations 2, 4 and 6: best at 4
    monkeypatch.setattr(trainer, "score", lambda *a, **k: {"gIoU": next(curve)})
    run = tmp_path / "run"
    train(run_config(data, "train.eval_every=2", "train.checkpoint_every=2"), run,
          progress=False)
    assert checkpoint.read_meta(run / "checkpoints" / "best")["iteration"] == 4
    assert checkpoint.read_meta(run / "checkpoints" / "last")["iteration"] == 6
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("iter_"))
    assert kept == ["iter_0000004", "iter_0000006"]


def test_resuming_a_finished_run_does_nothing_and_logs_nothing(data, tmp_path):
    config = run_config(data, "train.epochs=1")
    train(config, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(config, tmp_path / "run", resume=True, progress=False)
    assert again.iteration == 2 and again.metrics is None
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # no second validation


def test_resume_refuses_a_changed_config_but_allows_budget_keys(data, tmp_path):
    train(run_config(data, "data.val_split=", "train.epochs=1"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        changed = run_config(data, "data.val_split=", "train.epochs=1", "train.lr=0.5")
        train(changed, tmp_path / "run", resume=True)
    again = train(
        run_config(data, "data.val_split=", "train.epochs=1", "train.max_minutes=30"),
        tmp_path / "run", resume=True, progress=False,
    )
    assert again.iteration == 2


def test_resume_follows_moved_data_but_refuses_other_training_data(data, tmp_path):
    import shutil

    run = tmp_path / "run"
    train(run_config(data, "data.val_split=", "train.epochs=2"), run, progress=False)
    moved = shutil.copytree(data, tmp_path / "moved")
    resumed = train(run_config(moved, "data.val_split=", "train.epochs=2"), run, resume=True,
                    progress=False)
    assert resumed.iteration == 4
    refs = json.loads((moved / "grefs(unc).json").read_text())
    first = next(r for r in refs if r["split"] == "train")
    first["sentences"][0]["raw"] = first["sentences"][0]["sent"] = "another sentence"
    (moved / "grefs(unc).json").write_text(json.dumps(refs))
    with pytest.raises(ConfigError, match=r"--resume with another training split \(3 sentences "
                                          r"now, 3 in the run"):
        train(run_config(moved, "data.val_split=", "train.epochs=2"), run, resume=True,
              progress=False)


def test_nan_loss_stops_with_iteration_and_sent_ids_and_saves_nothing(data, tmp_path, monkeypatch):
    original = TinyFilm.loss
    calls = {"n": 0}

    def loss(self, outputs, batch):
        calls["n"] += 1
        out = original(self, outputs, batch)
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
            calls["sent_ids"] = list(batch.sent_ids)
        return out

    monkeypatch.setattr(TinyFilm, "loss", loss)
    with pytest.raises(NonFiniteLoss) as info:
        train(run_config(data, "data.val_split="), tmp_path / "run", progress=False)
    message = str(info.value)
    assert "iteration 5 " in message and "sent_ids [" in message
    ids = json.loads(message.split("sent_ids ")[1].split("]")[0] + "]")
    assert ids == calls["sent_ids"] and len(ids) == 2  # the whole batch that went NaN
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000003", "last"]
    loaded = checkpoint.load(ckpts / "last")
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())


def test_diverged_predictions_reaching_the_matcher_stop_as_a_non_finite_loss(data, tmp_path,
                                                                            monkeypatch):
    from refseg.modeling.matching import HungarianMatcher

    original = TinyFilm.loss

    def loss(self, outputs, batch):  # a matching method's loss, its predictions gone NaN
        if len(calls) == 4:
            HungarianMatcher({"mask": 1.0}).match({"mask": torch.full((2, 1), float("nan"))})
        calls.append(1)
        return original(self, outputs, batch)

    calls = []
    monkeypatch.setattr(TinyFilm, "loss", loss)
    with pytest.raises(NonFiniteLoss, match=r"non-finite matching cost \(HungarianMatcher: "
                                            r"non-finite values in cost terms \['mask'\]\) "
                                            r"at iteration 5 .*sent_ids \["):
        train(run_config(data, "data.val_split="), tmp_path / "run", progress=False)


def test_time_budget_stops_cleanly_with_a_checkpoint(data, tmp_path):
    config = run_config(data, "data.val_split=", "train.max_minutes=1e-9")
    result = train(config, tmp_path / "run", progress=False)
    assert result.stopped == "time budget"
    assert result.iteration == 1
    assert checkpoint.read_meta(result.checkpoint)["iteration"] == 1
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["iteration"] for r in logged if "train" in r] == [1]  # the last steps are logged


def test_data_images_defaults_to_the_root_images_folder(data, tmp_path):
    run = tmp_path / "run"
    train(run_config(data, "data.val_split=", "train.epochs=1", "data.images="), run,
          progress=False)
    assert json.loads((run / "config.json").read_text())["data"]["images"] == str(data / "images")
    (data / "images").rename(data / "pictures")
    with pytest.raises(ConfigError, match=r"no image folder given and .*images does not exist; "
                                          r"give the image folder with data\.images="):
        train(run_config(data, "data.images="), tmp_path / "other", progress=False)


@pytest.mark.parametrize(("override", "message"), [
    ("data.image_size=0", "data.image_size=0: must be >= 1"),
    ("data.nsc_prob=2.0", r"data.nsc_prob=2.0: must be in \[0, 1\]"),
    ("data.num_workers=-1", "data.num_workers=-1: must be >= 0"),
    ("model.thresholds.no_target=5.0", r"thresholds.no_target=5.0: expected a number in \[0, 1\]"),
])
def test_bad_data_and_threshold_values_are_config_errors(data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        train(run_config(data, override), tmp_path / "run", progress=False)


def test_a_second_process_in_a_used_run_directory_is_refused(data, tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(  # holds the lock the way a training process does
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from refseg.engine.trainer import _lock_run_dir\n"
         "lock = _lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
         str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another training process \(pid "
                                              rf"{holder.pid}\)"):
            train(run_config(data, "data.val_split="), run, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert train(run_config(data, "data.val_split="), run, progress=False).iteration == 6


def test_run_directory_holds_config_logs_and_curves(data, tmp_path):
    run = tmp_path / "run"
    config = run_config(data, "data.val_split=", "train.epochs=1", "train.lr=0.003")
    train(config, run, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["lr"] == 0.003 and saved["method"] == "tinyfilm"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert {"loss", "mask", "no_target", "lr", "samples_per_s"} <= set(lines[0]["train"])
    assert (run / "curves.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())


def test_cli_train_rejects_unknown_override(data, tmp_path, capsys):
    out = str(tmp_path / "r")
    code = main(["train", "tinyfilm-test", f"data.root={data}", "train.bogus=1", "--out", out])
    assert code == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_train_prints_the_resolved_config_and_trains_nothing(tmp_path, capsys):
    from refseg.config import to_dict
    from refseg.methods.registry import variant

    out = tmp_path / "r"
    code = main(["train", "instalign-tiny", "train.lr=5e-4", "model.num_queries=7",
                 "--out", str(out), "--print-config"])
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(to_dict(variant("instalign-tiny"))))
    expected["train"]["lr"], expected["model"]["num_queries"] = 5e-4, 7
    assert code == 0 and printed == expected and not out.exists()
    assert main(["train", "instalign-tiny", "train.bogus=1", "--print-config"]) == 2


@pytest.mark.parametrize(("override", "message"), [
    ("model.encoder_heads=3", "model.encoder_heads=3: must divide model.hidden_dim=64"),
    ("model.thresholds.mask=2", r"model.thresholds.mask=2.0: expected a number in [0, 1]"),
])
def test_cli_print_config_refuses_a_config_the_method_cannot_train(capsys, override, message):
    # --print-config is how a user checks a config before a run: it must not print one
    # that training would refuse.
    assert main(["train", "instalign-tiny", override, "--print-config"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


def test_overrides_may_follow_the_options():
    from refseg.cli import parse

    args = parse(["train", "instalign-tiny", "a.b=1", "--out", "x", "c=2", "--resume", "a.b=3"])
    assert args.overrides == ["a.b=1", "c=2", "a.b=3"] and args.out == "x" and args.resume
    assert parse(["demo", "--no-progress", "train.seed=1"]).overrides == ["train.seed=1"]
    for argv in (["train", "instalign-tiny", "--out", "x", "--bogus"],
                 ["train", "instalign-tiny", "--out", "x", "notakey"],
                 ["score", "--format", "grefcoco", "--data", "d", "--split", "val",
                  "--predictions", "p", "a=1"]):  # score takes no overrides
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 2


def test_cli_train_takes_a_run_or_checkpoint_folder_and_checks_out_early(data, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    assert main(["train", "tinyfilm-test", f"data.root={data}", "data.val_split=",
                 "train.epochs=1", "--out", str(run), "--no-progress"]) == 0
    for source in (run, run / "checkpoints" / "last", run / "checkpoints" / "last" / "config.json"):
        again = tmp_path / f"again_{len(list(tmp_path.iterdir()))}"
        assert main(["train", str(source), "--out", str(again), "--no-progress"]) == 0
        assert json.loads((again / "config.json").read_text()) == \
            json.loads((run / "config.json").read_text())
    (tmp_path / "afile").write_text("")
    assert main(["train", str(run), "--out", str(tmp_path / "afile")]) == 2
    assert "afile: exists and is not a folder" in capsys.readouterr().err


def test_cli_train_from_saved_config_json(data, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "tinyfilm-test", f"data.root={data}", f"data.images={data / 'images'}",
                 "data.val_split=", "train.epochs=1", "--out", str(run), "--no-progress"]) == 0
    again = tmp_path / "again"
    args = ["train", str(run / "config.json"), "train.epochs=2", "--out", str(again)]
    assert main(args + ["--no-progress"]) == 0
    assert checkpoint.read_meta(again / "checkpoints" / "last")["iteration"] == 4


@pytest.mark.parametrize("key, value, message", [
    ("batch_size", 2.0, "train.batch_size: expected int, got 2.0"),
    ("lr", "0.01", "train.lr: expected float, got '0.01'"),
    ("checkpoint_every", True, "train.checkpoint_every: expected int, got True"),
])
def test_a_config_json_is_type_checked_as_overrides_are(data, tmp_path, capsys, key, value,
                                                        message):
    run = tmp_path / "run"
    assert main(["train", "tinyfilm-test", f"data.root={data}", f"data.images={data / 'images'}",
                 "data.val_split=", "train.epochs=1", "--out", str(run), "--no-progress"]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["train"][key] = value
    (tmp_path / "edited.json").write_text(json.dumps(saved))
    code = main(["train", str(tmp_path / "edited.json"), "--out", str(tmp_path / "again")])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [
    (b'{"method": "\xff"}', "not valid JSON ('utf-8' codec can't decode"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON (nested too deeply)"),
    (b'{"method": "instalign", "iteration": ' + b"9" * 5000 + b"}", "not valid JSON (Exceeds"),
    (b'{"method": ["x"]}', "'method' must be a method name, got ['x']"),
    (b'{"method": {}}', "'method' must be a method name, got {}"),
    (b'{"method": "zzz"}', "c.json: unknown method 'zzz'"),
])
def test_an_unreadable_config_json_is_a_one_line_error(tmp_path, capsys, content, message):
    (tmp_path / "c.json").write_bytes(content)
    assert main(["train", str(tmp_path / "c.json"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"refseg train: error: {tmp_path / 'c.json'}: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_fused_optimizer_step_equals_the_multi_tensor_step(name):
    """CPU parameters get the fused update; it moves the weights as the foreach one does."""
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(3)]
    grads = [torch.randn_like(w) for w in weights]
    cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.05)
    fast = [w.clone().requires_grad_() for w in weights]
    optimizer = build_optimizer([{"params": fast}], cfg)
    assert optimizer.defaults["fused"]
    reference = [w.clone().requires_grad_() for w in weights]
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    slow = kind([{"params": reference}], lr=1e-2, weight_decay=0.05, foreach=True)
    for _ in range(3):
        for params, opt in ((fast, optimizer), (reference, slow)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b, w in zip(fast, reference, weights):
        assert not torch.equal(a, w)
        torch.testing.assert_close(a, b)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="train.optimizer=sgd"):
        build_optimizer([{"params": [torch.zeros(1, requires_grad=True)]}],
                        TrainConfig(optimizer="sgd"))


def test_lr_schedules_hand_computed():
    linear = TrainConfig(lr_schedule="linear", warmup_iters=0)
    assert lr_factor(0, linear, 10, 5) == 1.0
    assert lr_factor(5, linear, 10, 5) == pytest.approx(0.5)
    step = TrainConfig(lr_schedule="step", lr_steps=(1, 2), lr_gamma=0.1)
    assert [lr_factor(i, step, 100, 4) for i in (3, 4, 8)] == pytest.approx([1.0, 0.1, 0.01])
    warm = TrainConfig(lr_schedule="constant", warmup_iters=4)
    assert [lr_factor(i, warm, 100, 4) for i in (0, 3, 4)] == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(ConfigError, match="lr_schedule"):
        lr_factor(0, TrainConfig(lr_schedule="cosine"), 10, 5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.amp=fp32", "train.amp=fp32: expected none, bf16 or fp16"),
        ("train.checkpoint_every=0", "train.checkpoint_every=0: must be >= 1"),
        ("train.max_iters=-5", "train.max_iters=-5: must be >= 0"),
        ("train.epochs=0", "train.epochs=0: must be >= 1"),
        ("train.lr=0", "train.lr=0.0: must be > 0"),
        ("data.root=", "data.root is not set"),
        ("data.root=/nonexistent-refseg-root",
         "data.root=/nonexistent-refseg-root: no such folder"),
        ("data.val_split=dev", "data.val_split=dev: "),
        ("data.val_split=dev", "no split 'dev' (has train, val, testA, testB; "
                               "data.val_split= trains without validation)"),
        ("data.train_split=training", "data.train_split=training: "),
        ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
        ("data.max_text_length=2", "data.max_text_length=2: must be >= 3"),
    ],
)
def test_bad_run_configs_are_one_line_errors(data, tmp_path, override, message):
    from refseg.errors import DataError

    with pytest.raises((ConfigError, DataError), match=re.escape(message)):
        train(run_config(data, override), tmp_path / "run", progress=False)


def test_global_batch_must_split_evenly_over_processes(data, tmp_path):
    from refseg.engine.distributed import DistContext

    config = run_config(data, "train.batch_size=4")
    with pytest.raises(ConfigError, match="batch_size=4: must be a multiple of the 3 processes"):
        Trainer(config, tmp_path / "run", DistContext(rank=0, world_size=3))


def test_an_image_of_another_size_than_instances_json_is_an_error(data, tmp_path):
    from PIL import Image

    from refseg.errors import DataError

    image = data / "images" / sorted(p.name for p in (data / "images").iterdir())[0]
    Image.new("RGB", (7, 5)).save(image)
    with pytest.raises(DataError, match=rf"{image.name}: image is 5x7 .*instances.json says"):
        train(run_config(data, "data.val_split="), tmp_path / "run", progress=False)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(data, tmp_path):
    """A real kill -9 of a training process: the last checkpoint is whole, and resuming ends
    with the weights of the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    args = ["train", "tinyfilm-test", f"data.root={data}", f"data.images={data / 'images'}",
            "data.val_split=", "train.max_iters=120", "train.checkpoint_every=4", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(tests), OMP_NUM_THREADS="1")
    launch = [sys.executable, str(tests / "engine_launch.py")]
    subprocess.run(launch + args + ["--out", str(tmp_path / "straight")], env=env, check=True,
                   capture_output=True, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen(launch + args + ["--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            last = run / "checkpoints" / "last"
            if last.exists() and checkpoint.read_meta(last)["iteration"] >= 40:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.read_meta(run / "checkpoints" / "last")["iteration"]
    assert 40 <= killed_at < 120
    subprocess.run(launch + args + ["--out", str(run), "--resume"], env=env, check=True,
                   capture_output=True, timeout=300)
    a, b = weights(tmp_path / "straight"), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
