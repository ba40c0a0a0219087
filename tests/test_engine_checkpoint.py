"""Checkpoints: round trip, atomic writes, and every bad checkpoint as a clear error."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from engine_tinyfilm import TinyFilmConfig, WordTokenizer, build_model, register

from refseg.config import RunConfig
from refseg.engine import checkpoint
from refseg.errors import CheckpointError
from refseg.modeling.base import Thresholds


@pytest.fixture
def parts(monkeypatch):
    register(monkeypatch)
    torch.manual_seed(0)
    model = TinyFilmConfig(thresholds=Thresholds(no_target=0.7))
    config = RunConfig(method="tinyfilm", model=model)
    tokenizer = WordTokenizer.build(["red square"], max_length=4)
    return config, tokenizer, build_model(config.model, tokenizer)


def write(path, parts, **kwargs):
    config, tokenizer, model = parts
    return checkpoint.write_checkpoint(
        path, model=model, config=config, tokenizer=tokenizer, **kwargs
    )


def test_round_trip_restores_weights_config_tokenizer_and_thresholds(parts, tmp_path):
    config, tokenizer, model = parts
    write(tmp_path / "ckpt", parts, iteration=7)
    loaded = checkpoint.load(tmp_path / "ckpt")
    assert loaded.iteration == 7 and loaded.config == config
    assert loaded.thresholds == Thresholds(no_target=0.7)  # from the model config
    text = ["a red square"]
    assert torch.equal(loaded.tokenizer.encode(text).input_ids, tokenizer.encode(text).input_ids)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), k
    assert not loaded.model.training
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["format"] == checkpoint.FORMAT and meta["method"] == "tinyfilm"
    assert "refseg_version" in meta


def test_a_checkpoint_has_the_modes_of_the_umask(parts, tmp_path):
    old = os.umask(0o027)
    try:
        path = write(tmp_path / "ckpt", parts, train_state={"iteration": 1})
    finally:
        os.umask(old)
    modes = {p.relative_to(path).as_posix(): p.stat().st_mode & 0o777
             for p in (path, *path.rglob("*"))}
    assert modes["."] == modes["tokenizer"] == 0o750
    assert modes["model.safetensors"] == modes["config.json"] == modes["train_state.pt"] == 0o640


def test_tied_weights_are_saved(parts, tmp_path):
    config, tokenizer, model = parts
    model.extra = torch.nn.Linear(2, 2)
    model.tied = model.extra  # the same parameters under two names (shared storage)
    write(tmp_path / "ckpt", parts)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert torch.equal(state["extra.weight"], state["tied.weight"])


def test_a_failed_rewrite_leaves_the_old_checkpoint(parts, tmp_path, monkeypatch):
    write(tmp_path / "ckpt", parts, iteration=1)
    config, tokenizer, model = parts

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path / "ckpt", parts, iteration=2)
    assert checkpoint.read_meta(tmp_path / "ckpt")["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind


def test_checkpoint_dir_keeps_last_and_best_only(parts, tmp_path):
    config, tokenizer, model = parts
    ckpts = checkpoint.CheckpointDir(tmp_path / "checkpoints")
    common = dict(model=model, config=config, tokenizer=tokenizer)
    ckpts.save(1, best=True, **common)
    ckpts.save(2, **common)
    ckpts.save(3, **common)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best", "iter_0000001", "iter_0000003", "last"]
    # What a save killed half-way leaves behind goes with the next save.
    (tmp_path / "checkpoints" / ".iter_0000004.x1.tmp").mkdir()
    (tmp_path / "checkpoints" / ".iter_0000003.x2.old").mkdir()
    (tmp_path / "checkpoints" / ".last.123.link").symlink_to("iter_0000001")  # a live target
    ckpts.save(5, **common)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best", "iter_0000001", "iter_0000005", "last"]
    assert checkpoint.read_meta(ckpts.last())["iteration"] == 5
    # A run directory resolves to its best checkpoint, else its last.
    (tmp_path / "config.json").write_text("{}")
    assert checkpoint.resolve(tmp_path).name == "best"


def test_a_last_link_pointing_at_nothing_whole_is_an_error(parts, tmp_path):
    """Taken for "no checkpoint yet", it would start the run afresh over its own log."""
    config, tokenizer, model = parts
    ckpts = checkpoint.CheckpointDir(tmp_path / "checkpoints")
    assert ckpts.last() is None  # before the first save
    ckpts.save(1, model=model, config=config, tokenizer=tokenizer)
    last = tmp_path / "checkpoints" / "last"
    last.unlink()
    last.symlink_to("iter_0000009")  # dangling
    with pytest.raises(CheckpointError, match=r"last: points at iter_0000009, which holds no "
                                              r"config\.json"):
        ckpts.last()
    last.unlink()
    last.mkdir()  # a folder without config.json
    with pytest.raises(CheckpointError, match="holds no config.json"):
        ckpts.last()


def test_truncated_weights_name_the_file(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt"):
        checkpoint.load(path)


def test_truncated_config_names_the_file(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    config = path / "config.json"
    config.write_text(config.read_text()[:50])
    with pytest.raises(CheckpointError, match=r"config\.json: truncated or not JSON"):
        checkpoint.load(path)
    config.write_text('{"iteration": ' + "9" * 5000 + "}")
    with pytest.raises(CheckpointError, match=r"config\.json: truncated or not JSON \(Exceeds"):
        checkpoint.load(path)


def test_weights_of_another_shape_are_an_error(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["model"]["channels"] = 16
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="another shape"):
        checkpoint.load(path)


def test_weights_of_another_model_are_an_error(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    from safetensors.torch import save_file

    save_file({"backbone.layer1.weight": torch.zeros(2)}, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="not of a tinyfilm model"):
        checkpoint.load(path)


def test_config_of_another_method_is_an_error(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    meta = json.loads((path / "config.json").read_text())
    meta["method"] = meta["config"]["method"] = "deris"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="config.json: unknown method 'deris'"):
        checkpoint.load(path)


def test_foreign_files_and_folders_are_not_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="is a file"):
        checkpoint.load(tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="not a refseg checkpoint"):
        checkpoint.load(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="not a refseg checkpoint config"):
        checkpoint.load(tmp_path / "other")


def test_a_run_without_a_checkpoint_is_named_as_such(parts, tmp_path):
    # A run directory holds the run's config.json from its start; until the first
    # checkpoint, loading it must say that, not that its config.json is malformed.
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(
        {"method": "tinyfilm", "model": {}, "data": {}, "train": {}}))
    message = "run: a training run without a checkpoint (no intact checkpoints/best or " \
              "checkpoints/last)"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.load(run)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last").symlink_to("iter_0000500")  # its target never written
    with pytest.raises(CheckpointError, match=re.escape(message)):
        checkpoint.load(run)
    write(run / "checkpoints" / "iter_0000500", parts)
    assert checkpoint.resolve(run) == run / "checkpoints" / "last"


def test_train_state_loads_weights_only_and_truncation_is_an_error(parts, tmp_path):
    torch.manual_seed(3)
    state = {"iteration": 5, "rng": checkpoint.capture_rng()}
    expected = torch.rand(3)
    path = write(tmp_path / "ckpt", parts, train_state=state)
    back = checkpoint.load_train_state(path)
    checkpoint.restore_rng(back["rng"])
    assert torch.equal(torch.rand(3), expected)
    file = path / "train_state.pt"
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"train_state\.pt: truncated or corrupt"):
        checkpoint.load_train_state(path)


def test_a_train_state_holding_code_is_refused(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    torch.save({"evil": os.system}, path / "train_state.pt")
    with pytest.raises(CheckpointError, match="train_state.pt"):
        checkpoint.load_train_state(path)


def _drop_channels(meta):
    del meta["config"]["model"]["channels"]


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(iteration="six"), "'iteration' must be a int, got 'six'"),
    (lambda m: m.update(iteration=-3), "'iteration' must be >= 0, got -3"),
    (lambda m: m.update(method=["x"]), r"'method' must be a str, got \['x'\]"),
    (lambda m: m.update(config=[1]), r"'config' must be a dict, got \[1\]"),
    (lambda m: m["thresholds"].update(no_target="0.7"),
     r"thresholds\.no_target='0\.7': expected a number in \[0, 1\]"),
    (lambda m: m["thresholds"].update(mask=None), r"thresholds\.mask=None: expected a number"),
    (lambda m: m["thresholds"].pop("instance"), r"config\.json: thresholds: missing instance"),
    (lambda m: m["thresholds"].update(instance=float("nan")), r"thresholds\.instance=nan"),
    (_drop_channels, r"config\.json: model: missing config keys \['channels'\]"),
    (lambda m: m["config"].update(extra=1), r"config\.json: unknown config keys \['extra'\]"),
    (lambda m: m["config"].update(train=None), r"config\.json: train: expected an object"),
    (lambda m: m["config"]["model"].update(thresholds=5),
     r"config\.json: model\.thresholds: expected an object"),
    (lambda m: m["config"].update(method="deris"),
     r"config\.json: the config's method 'deris' is not the checkpoint's 'tinyfilm'"),
    (lambda m: m["config"].update(method=3), r"the config's method 3 is not the checkpoint's"),
    (lambda m: m["config"]["data"].update(image_size=0), r"data\.image_size=0: must be >= 1"),
])
def test_a_hand_edited_checkpoint_config_is_a_one_line_error(parts, tmp_path, edit, message):
    path = write(tmp_path / "ckpt", parts)
    meta = json.loads((path / "config.json").read_text())
    edit(meta)
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as info:
        checkpoint.load(path)
    assert str(info.value).count("config.json") == 1  # the file is named once


def test_model_settings_a_method_refuses_name_the_checkpoint_config(tmp_path):
    from refseg.config import apply_overrides
    from refseg.methods.instalign.config import instalign_tiny
    from refseg.methods.registry import get_method

    config = apply_overrides(instalign_tiny(), [
        "model.hidden_dim=32", "model.mask_dim=32", "model.text_dim=32", "model.num_queries=4",
        "model.decoder_layers=1", "model.encoder_ffn_dim=32", "model.decoder_ffn_dim=32"])
    method = get_method("instalign")
    tokenizer = method.build_tokenizer(config.model, config.data, ["red square"])
    path = checkpoint.write_checkpoint(tmp_path / "ckpt", config=config, tokenizer=tokenizer,
                                       model=method.build_model(config.model, tokenizer))
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["model"]["encoder_heads"] = 3
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: model\.encoder_heads=3: must "):
        checkpoint.load(path)


def test_a_tokenizer_setting_out_of_range_names_the_tokenizer(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    settings = path / "tokenizer" / "refseg_tokenizer.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "max_length": -3}))
    with pytest.raises(CheckpointError, match=r"tokenizer: cannot load the tokenizer \(.*-3"):
        checkpoint.load(path)


def test_a_config_json_that_is_a_folder_is_a_checkpoint_error(parts, tmp_path):
    path = write(tmp_path / "ckpt", parts)
    (path / "config.json").unlink()
    (path / "config.json").mkdir()
    with pytest.raises(CheckpointError, match=r"config\.json: cannot read"):
        checkpoint.load(path)


def test_weights_holding_nan_are_a_damaged_file(parts, tmp_path):
    from safetensors.torch import load_file, save_file

    path = write(tmp_path / "ckpt", parts)
    state = load_file(str(path / "model.safetensors"))
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"1 tensors hold NaN or inf values, e.g. {name}"):
        checkpoint.load(path)
