"""The shared weight-loading toolkit: key maps, strict loading, the key report, readers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from refseg.errors import CheckpointError
from refseg.modeling.weights import (
    KeyReport,
    apply_key_map,
    load_mapped,
    read_hf_weights,
    read_pkl_weights,
    read_safetensors,
    read_torch,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        self.table = nn.Parameter(torch.zeros(4, 2))


# The foreign layout: "enc." prefix, other names.
RULES = [
    (r"fc\.(weight|bias)", r"proj.\1"),
    (r"ln\.(gamma|beta)", None),  # handled by the callable test below
    (r"ln\.(weight|bias)", r"norm.\1"),
    (r"bias_table", "table"),
]


def foreign_state(model: Tiny, prefix: str = "enc.") -> dict[str, torch.Tensor]:
    return {
        f"{prefix}fc.weight": model.proj.weight.detach().clone(),
        f"{prefix}fc.bias": model.proj.bias.detach().clone(),
        f"{prefix}ln.weight": torch.randn(2),
        f"{prefix}ln.bias": torch.randn(2),
        f"{prefix}bias_table": torch.randn(4, 2),
    }


def test_rules_apply_first_full_match():
    assert apply_key_map(RULES, "fc.weight") == "proj.weight"
    assert apply_key_map(RULES, "xfc.weight") is None  # full match only
    assert apply_key_map(RULES, "ln.gamma") is None
    assert apply_key_map(lambda k: k.upper(), "ab") == "AB"


def test_load_mapped_loads_every_key_and_reports_outside():
    src = foreign_state(Tiny())
    src["head.weight"] = torch.zeros(1)
    model = Tiny()
    report = load_mapped(model, src, RULES, prefix="enc.", source="f.pth")
    assert report.ok
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert report.outside == ["head.weight"]
    assert torch.equal(model.norm.bias, src["enc.ln.bias"])
    assert torch.equal(model.table, src["enc.bias_table"])
    text = str(report)
    assert text.startswith("f.pth: 5 loaded")
    assert "outside prefix 'enc.': 1 keys (head.)" in text


def test_missing_key_fails_naming_key_and_file():
    src = foreign_state(Tiny())
    del src["enc.ln.bias"]
    with pytest.raises(CheckpointError) as err:
        load_mapped(Tiny(), src, RULES, prefix="enc.", source="/x/f.pth")
    first = str(err.value).splitlines()[0]
    assert first.startswith("/x/f.pth: keys do not match the model")
    assert "1 missing, e.g. norm.bias" in first


def test_unexpected_key_fails_naming_source_key():
    src = foreign_state(Tiny())
    src["enc.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unexpected, e.g. enc.extra.weight"):
        load_mapped(Tiny(), src, RULES, prefix="enc.")


def test_shape_mismatch_fails_unless_adapted():
    src = foreign_state(Tiny())
    src["enc.bias_table"] = torch.ones(9, 2)
    with pytest.raises(CheckpointError, match=r"enc.bias_table \(9, 2\) for table \(4, 2\)"):
        load_mapped(Tiny(), src, RULES, prefix="enc.")

    def crop(key, value, shape):
        return value[: shape[0]] if key == "table" else None

    model = Tiny()
    report = load_mapped(model, src, RULES, prefix="enc.", adapt=crop)
    assert report.adapted == ["enc.bias_table: (9, 2) -> (4, 2)"]
    assert torch.equal(model.table, torch.ones(4, 2))


def test_skip_and_fresh_are_reported_not_silent():
    src = foreign_state(Tiny())
    del src["enc.ln.weight"], src["enc.ln.bias"]
    src["enc.head.weight"] = torch.zeros(5)
    model = Tiny()
    report = load_mapped(
        model,
        src,
        RULES,
        prefix="enc.",
        skip={r"head\..*": "classifier, not used"},
        fresh={r"norm\..*": "not in this layout"},
    )
    assert report.ok
    assert report.skipped == {"classifier, not used": ["enc.head.weight"]}
    assert report.fresh == {"not in this layout": ["norm.weight", "norm.bias"]}
    assert "skipped on purpose: classifier, not used: 1" in str(report)
    assert "initialised fresh on purpose: not in this layout: 2" in str(report)


def test_non_strict_loads_what_matches():
    src = foreign_state(Tiny())
    del src["enc.fc.bias"]
    model = Tiny()
    before = model.proj.bias.detach().clone()
    report = load_mapped(model, src, RULES, prefix="enc.", strict=False)
    assert report.missing == ["proj.bias"] and not report.ok
    assert torch.equal(model.proj.bias, before)
    assert torch.equal(model.proj.weight, src["enc.fc.weight"])


def test_two_sources_on_one_target_is_an_error():
    src = {"a": torch.zeros(2), "b": torch.zeros(2)}
    with pytest.raises(CheckpointError, match="a and b both map to norm.bias"):
        load_mapped(Tiny(), src, lambda k: "norm.bias", strict=False)


def test_report_truncates_long_sections():
    report = KeyReport(missing=[f"k{i}" for i in range(30)], source="s")
    text = str(report)
    assert "missing (in the model, not in the file): 30" in text
    assert "... and 18 more" in text


def test_read_torch_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"a": torch.arange(1000.0)}}, good)
    assert torch.equal(read_torch(good)["model"]["a"], torch.arange(1000.0))

    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:700])
    with pytest.raises(CheckpointError, match=r"cut.pth: truncated or corrupt torch file"):
        read_torch(cut)

    with pytest.raises(CheckpointError, match=r"nothere.pth: file not found"):
        read_torch(tmp_path / "nothere.pth")

    import argparse

    objs = tmp_path / "objs.pth"
    torch.save({"model": {}, "args": argparse.Namespace(a=1)}, objs)
    with pytest.raises(CheckpointError, match=r"objs.pth: holds a argparse.Namespace object"):
        read_torch(objs)


def test_read_safetensors_truncated(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(100)}, str(path))
    assert torch.equal(read_safetensors(path)["a"], torch.ones(100))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"w.safetensors: truncated or corrupt"):
        read_safetensors(path)


@pytest.mark.parametrize("protocol", [2, 3, 4])  # what model-zoo files use
def test_read_pkl_weights(tmp_path, protocol):
    path = tmp_path / "m.pkl"
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    with open(path, "wb") as fh:
        pickle.dump({"model": {"backbone.w": arr}, "__author__": "x"}, fh, protocol=protocol)
    state = read_pkl_weights(path)
    assert torch.equal(state["backbone.w"], torch.from_numpy(arr))


def test_read_pkl_weights_errors(tmp_path):
    path = tmp_path / "nomodel.pkl"
    path.write_bytes(pickle.dumps({"weights": {}}))
    with pytest.raises(CheckpointError, match=r"nomodel.pkl: no 'model' entry"):
        read_pkl_weights(path)
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"w": print}}))
    with pytest.raises(CheckpointError, match=r"evil.pkl: pickle references builtins.print"):
        read_pkl_weights(evil)


def test_read_hf_weights_sharded(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "part1.safetensors"))
    torch.save({"b": torch.ones(3)}, tmp_path / "part2.bin")
    index = {"weight_map": {"a": "part1.safetensors", "b": "part2.bin"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    state, path = read_hf_weights(tmp_path)
    assert path.name == "model.safetensors.index.json"
    assert sorted(state) == ["a", "b"] and torch.equal(state["b"], torch.ones(3))
    with pytest.raises(CheckpointError, match="nowhere: not a directory"):
        read_hf_weights(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="no weights file"):
        read_hf_weights(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
