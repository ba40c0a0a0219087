"""Swin backbone: feature contract, parity with transformers' Swin, loading every layout."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from refseg.errors import CheckpointError, ConfigError
from refseg.modeling.backbones.swin import (
    SwinBackbone,
    SwinConfig,
    drop_path,
    shifted_window_mask,
    swin_base,
    swin_nano,
    swin_small,
    swin_tiny,
    window_partition,
    window_reverse,
)
from refseg.modeling.backbones.swin_weights import (
    load_swin,
    resize_bias_table,
    swin_config_from_hf,
)


def perturbed(model: SwinBackbone, *, stage_norms: bool = True) -> SwinBackbone:
    """Every parameter moved off its initialisation, so a key loaded into the wrong place
    shows in the outputs."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if stage_norms or not name.startswith("norm"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def features(model, images):
    with torch.no_grad():
        return model(images)


def assert_same_features(a, b, atol=0.0):
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=0 if atol == 0 else 1e-5)


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 128)])
def test_feature_contract(size):
    model = swin_nano().eval()
    assert model.spec.channels == (32, 64, 128, 256)
    assert model.spec.strides == (4, 8, 16, 32)
    maps = features(model, torch.randn(2, 3, *size))
    for fmap, channels, stride in zip(maps, model.spec.channels, model.spec.strides):
        assert fmap.shape == (2, channels, size[0] // stride, size[1] // stride)
        assert torch.isfinite(fmap).all()


@pytest.mark.parametrize("size", [384, 480])
def test_large_inputs_with_window_12(size):
    # Swin-B 384's window with nano widths: at 480 stage 4 is 15x15, padded to 24x24.
    model = swin_nano(window_size=12).eval()
    maps = features(model, torch.randn(1, 3, size, size))
    assert [m.shape[-1] for m in maps] == [size // 4, size // 8, size // 16, size // 32]


def test_sizes_not_multiple_of_32_are_padded():
    maps = features(swin_nano().eval(), torch.randn(1, 3, 70, 50))
    assert [tuple(m.shape[-2:]) for m in maps] == [(18, 13), (9, 7), (5, 4), (3, 2)]


def test_batch_items_are_independent():
    model = perturbed(swin_nano())
    images = torch.randn(3, 3, 64, 64)
    together = features(model, images)
    alone = features(model, images[1:2])
    for a, b in zip(together, alone):
        torch.testing.assert_close(a[1:2], b, atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient():
    model = swin_nano().train()
    maps = model(torch.randn(2, 3, 64, 64))
    sum(m.square().mean() for m in maps).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_grad_checkpoint_gives_same_gradients(monkeypatch):
    import refseg.modeling.backbones.swin as swin

    calls = []

    def counted(function, *args, **kwargs):
        calls.append(function)
        return checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(swin, "checkpoint", counted)
    torch.manual_seed(0)
    plain = swin_nano(drop_path_rate=0.0).train()
    ckpt = SwinBackbone(replace(plain.config, grad_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    images = torch.randn(1, 3, 64, 64)
    sum(m.sum() for m in plain(images)).backward()
    assert calls == []
    sum(m.sum() for m in ckpt(images)).backward()
    assert len(calls) == sum(plain.config.depths)  # every block recomputed in the backward
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_drop_path_only_in_training():
    x = torch.ones(4000, 3)
    assert torch.equal(drop_path(x, 0.3, training=False), x)
    y = drop_path(x, 0.3, training=True)
    kept = y[:, 0] > 0
    assert torch.allclose(y[kept], torch.tensor(1 / 0.7)) and (y[~kept] == 0).all()
    assert abs(kept.float().mean().item() - 0.7) < 0.05
    assert (y[kept] == y[kept][:, :1]).all()  # whole samples dropped, not elements


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 5)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 6, 16, 5)
    assert torch.equal(windows[1].view(4, 4, 5), x[0, 0:4, 4:8])  # row-major windows
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)


def test_shifted_window_mask_by_hand():
    mask = shifted_window_mask(4, 4, 2, 1, "cpu")
    assert mask.shape == (4, 4, 4)
    assert (mask[0] == 0).all()  # top-left window: one region
    # bottom-right window holds four regions (rows 2|3 x cols 2|3): only self-pairs allowed
    assert torch.equal(mask[3] == 0, torch.eye(4, dtype=torch.bool))
    # top-right window: columns 2 and 3 are two regions, rows 0-1 one region
    assert torch.equal(mask[1] == 0, torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1]] * 2).bool())
    assert set(mask.unique().tolist()) == {0.0, -100.0}


def test_variant_parameter_counts_match_the_paper():
    # Swin paper Table 1 (with the 1000-class head and final norm): T 28M, S 50M, B 88M.
    for build, paper in ((swin_tiny, 28), (swin_small, 50), (swin_base, 88)):
        with torch.device("meta"):
            model = build()
        c = model.spec.channels[-1]
        ours = sum(p.numel() for p in model.parameters())
        stage_norms = 2 * sum(model.spec.channels)
        with_head = ours - stage_norms + 2 * c + (c * 1000 + 1000)
        assert round(with_head / 1e6) == paper, build.__name__
    with torch.device("meta"):
        assert swin_base(224).config.window_size == 7
        assert swin_base(384).config.window_size == 12
    with pytest.raises(ConfigError, match="pretrain_image_size 512"):
        swin_base(512)


def test_config_is_checked():
    with pytest.raises(ConfigError, match="not divisible by num_heads 3"):
        SwinConfig(embed_dim=32, num_heads=(3, 6, 12, 24))
    with pytest.raises(ConfigError, match="4 stages"):
        SwinConfig(depths=(2, 2, 6))


# ---------------------------------------------------------------------------------------
# Hugging Face layout, checked against transformers' own Swin on the same weights.


def hf_swin(tmp_path, **config):
    from transformers import SwinConfig as HFSwinConfig
    from transformers import SwinForImageClassification

    torch.manual_seed(0)
    cfg = HFSwinConfig(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=4,
                       image_size=64, num_labels=5, **config)
    hf = SwinForImageClassification(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))  # bias tables start at zero there
    hf.save_pretrained(tmp_path)
    return hf


# 96 x 96: stage 4 is 3x3, padded to one 4x4 window, shifted. 70 x 50: the image is padded
# to 72 x 52 for the patches, and odd maps (13, 9, 7, 5) are padded for patch merging.
@pytest.mark.parametrize("size", [(96, 96), (70, 50)])
def test_hf_layout_matches_transformers_swin(tmp_path, size):
    hf = hf_swin(tmp_path)
    model = SwinBackbone(swin_config_from_hf(tmp_path)).eval()
    report = load_swin(model, tmp_path, layout="hf")
    assert report.ok and not report.missing
    assert sorted(report.outside) == ["classifier.bias", "classifier.weight"]
    assert sorted(k for keys in report.fresh.values() for k in keys) == sorted(
        f"norm{s}.{p}" for s in range(4) for p in ("bias", "weight")
    )
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        # The backbone setting of transformers' Swin: keep shifted windows at every size,
        # take each stage before its patch merging.
        out = hf.swin(images, output_hidden_states=True, always_partition=True,
                      output_hidden_states_before_downsampling=True)
    # norm0..3 start as plain LayerNorms (weight 1, bias 0).
    reference = [
        F.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2]).permute(0, 3, 1, 2)
        for h in out.reshaped_hidden_states[1:]
    ]
    assert_same_features(features(model, images), reference, atol=1e-5)


def test_hf_layout_pytorch_bin_and_bare_prefix(tmp_path):
    from safetensors.torch import load_file

    hf_swin(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    bare = {k.removeprefix("swin."): v for k, v in state.items() if k.startswith("swin.")}
    torch.save(bare, tmp_path / "pytorch_model.bin")
    model = SwinBackbone(swin_config_from_hf(tmp_path))
    report = load_swin(model, tmp_path, layout="hf", prefix="")
    assert report.ok and report.source.endswith("pytorch_model.bin")
    torch.testing.assert_close(
        model.layers[2].blocks[1].attn.qkv.weight,
        torch.cat([bare[f"encoder.layers.2.blocks.1.attention.self.{n}.weight"]
                   for n in ("query", "key", "value")]),
    )


def test_hf_layout_missing_value_and_config_errors(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_swin(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["swin.encoder.layers.1.blocks.0.attention.self.value.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_swin(swin_nano(), tmp_path, layout="hf")
    message = str(err.value)
    assert "model.safetensors: keys do not match the model" in message
    assert "layers.1.blocks.0.attn.qkv.weight" in message  # missing
    assert "swin.encoder.layers.1.blocks.0.attention.self.query.weight" in message  # loose

    with pytest.raises(CheckpointError, match=r"config.json: depths \(1, 1, 2, 1\) does not match"):
        load_swin(swin_nano(depths=(2, 2, 2, 2)), tmp_path, layout="hf")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "use_absolute_embeddings": True}))
    with pytest.raises(CheckpointError, match="use_absolute_embeddings=True is not supported"):
        swin_config_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-6}))
    with pytest.raises(CheckpointError, match="layer_norm_eps=1e-06 is not supported"):
        load_swin(swin_nano(), tmp_path, layout="hf")
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "layer_norm_eps": 1e-5}))
    assert swin_config_from_hf(tmp_path).embed_dim == 32
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: file not found"):
        load_swin(swin_nano(), tmp_path, layout="hf")


# ---------------------------------------------------------------------------------------
# The original release and Mask2Former layouts, written by hand from a random model.


def original_layout(model: SwinBackbone) -> dict[str, torch.Tensor]:
    """What a Swin release ``.pth`` holds: no norm0..3, plus buffers, final norm and head."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("norm")}
    for s, stage in enumerate(model.layers):
        for b, block in enumerate(stage.blocks):
            stem = f"layers.{s}.blocks.{b}."
            state[stem + "attn.relative_position_index"] = block.attn.relative_position_index
            if b % 2:
                state[stem + "attn_mask"] = torch.zeros(4, 16, 16)
    c = model.spec.channels[-1]
    state.update({"norm.weight": torch.ones(c), "norm.bias": torch.zeros(c),
                  "head.weight": torch.zeros(10, c), "head.bias": torch.zeros(10)})
    return state


def test_original_pth_round_trip(tmp_path):
    source = perturbed(swin_nano(), stage_norms=False)
    path = tmp_path / "swin_nano.pth"
    torch.save({"model": original_layout(source)}, path)
    model = swin_nano().eval()
    report = load_swin(model, path, layout="original")
    assert report.ok
    skipped = {reason.split(",")[0]: keys for reason, keys in report.skipped.items()}
    assert skipped["ImageNet classifier"] == ["head.weight", "head.bias"]
    assert len(skipped["buffer"]) == 5 and len(skipped["shifted-window mask"]) == 1
    assert "norm0.weight" in next(iter(report.fresh.values()))
    text = str(report)
    assert "skipped on purpose: ImageNet classifier, not part of the backbone: 2" in text
    images = torch.randn(2, 3, 64, 64)
    assert_same_features(features(model, images), features(source, images))


def test_original_pth_errors(tmp_path):
    path = tmp_path / "swin.pth"
    state = original_layout(swin_nano())
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"swin.pth: no 'model' entry"):
        load_swin(swin_nano(), path, layout="original")

    torch.save({"model": state}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"swin.pth: truncated or corrupt torch file"):
        load_swin(swin_nano(), path, layout="original")

    with pytest.raises(ConfigError, match="unknown layout 'timm'"):
        load_swin(swin_nano(), path, layout="timm")


def mask2former_pkl(path, model: SwinBackbone, rename: dict[str, str] | None = None):
    state = {f"backbone.{k}": v.numpy() for k, v in model.state_dict().items()}
    for s, stage in enumerate(model.layers):  # Mask2Former's Swin saves this buffer
        for b, block in enumerate(stage.blocks):
            key = f"backbone.layers.{s}.blocks.{b}.attn.relative_position_index"
            state[key] = block.attn.relative_position_index.numpy()
    state["sem_seg_head.pixel_decoder.adapter_1.norm.weight"] = torch.ones(3).numpy()
    state["sem_seg_head.predictor.static_query.weight"] = torch.ones(2, 3).numpy()
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    with open(path, "wb") as fh:  # as detectron2 writes model-zoo files
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, fh,
                    protocol=2)


def test_mask2former_pkl_round_trip(tmp_path):
    source = perturbed(swin_nano())
    path = tmp_path / "model_final.pkl"
    mask2former_pkl(path, source)
    model = swin_nano().eval()
    report = load_swin(model, path, layout="mask2former")
    assert report.ok and not report.fresh
    assert sorted(report.outside) == ["sem_seg_head.pixel_decoder.adapter_1.norm.weight",
                                      "sem_seg_head.predictor.static_query.weight"]
    assert "outside prefix 'backbone.': 2 keys (sem_seg_head.)" in str(report)
    images = torch.randn(2, 3, 96, 96)
    assert_same_features(features(model, images), features(source, images))


def test_mask2former_pkl_wrong_key_is_named(tmp_path):
    path = tmp_path / "model_final.pkl"
    old = "backbone.layers.0.blocks.0.mlp.fc1.weight"
    mask2former_pkl(path, swin_nano(), rename={old: "backbone.layers.0.blocks.0.mlp.fc9.weight"})
    with pytest.raises(CheckpointError) as err:
        load_swin(swin_nano(), path, layout="mask2former")
    first = str(err.value).splitlines()[0]
    assert "model_final.pkl: keys do not match the model" in first
    assert "1 missing, e.g. layers.0.blocks.0.mlp.fc1.weight" in first
    assert "1 unexpected, e.g. backbone.layers.0.blocks.0.mlp.fc9.weight" in first
    # A loader that is told a wrong prefix finds nothing of its own.
    with pytest.raises(CheckpointError, match="missing"):
        load_swin(swin_nano(), path, layout="mask2former", prefix="swin.")


def test_window_size_change_interpolates_bias_tables(tmp_path):
    source = perturbed(swin_nano(), stage_norms=False)
    with torch.no_grad():
        source.layers[0].blocks[0].attn.relative_position_bias_table.fill_(0.25)
    path = tmp_path / "w4.pth"
    torch.save({"model": original_layout(source)}, path)
    model = swin_nano(window_size=6)
    report = load_swin(model, path, layout="original")
    assert len(report.adapted) == 5
    assert report.adapted[0] == (
        "layers.0.blocks.0.attn.relative_position_bias_table: (49, 1) -> (121, 1)"
    )
    torch.testing.assert_close(
        model.layers[0].blocks[0].attn.relative_position_bias_table, torch.full((121, 1), 0.25)
    )


def test_resize_bias_table_keeps_orientation_and_order():
    # Rows of a table index (dy, dx) offsets row-major; a table rising with dy, resized
    # 7 -> 12 (13x13 -> 23x23 offsets), still rises with dy only.
    src = 13
    dy = torch.arange(src).float()
    table = dy[:, None].expand(src, src).reshape(-1, 1).repeat(1, 2)
    out = resize_bias_table("x.relative_position_bias_table", table, torch.Size((23 * 23, 2)))
    assert out.shape == (23 * 23, 2) and torch.equal(out[:, 0], out[:, 1])
    grid = out[:, 0].view(23, 23)
    assert torch.allclose(grid, grid[:, :1].expand(23, 23))  # constant along dx
    assert (grid[1:, 0] > grid[:-1, 0]).all()
    assert -0.5 < grid[0, 0] < 0.5 and 11.5 < grid[-1, 0] < 12.5
    assert resize_bias_table("x.qkv.weight", table, torch.Size((23 * 23, 2))) is None
