"""DeRIS weights: the whole perception branch from a Mask2Former model-zoo .pkl (numpy
arrays in a pickle, protocols 2 and 4, old `static_query` name, 9 layers and 100 queries
in the file), BEiT-3 from its official layout, and wrong files failing with the report."""

import pickle
import re

import numpy as np
import pytest
import torch
from test_beit3 import official_checkpoint  # the independent BEiT-3 layout writer

from refseg.config import apply_overrides
from refseg.errors import CheckpointError
from refseg.methods.deris.config import deris_tiny
from refseg.methods.deris.model import build_deris, build_tokenizer
from refseg.methods.deris.weights import load_perception
from refseg.modeling.decoders import MaskedAttentionDecoder

SENTENCES = ["the red circle", "two blue squares on the left"]
FILE_QUERIES, FILE_LAYERS = 100, 9

# Our pixel-decoder names -> Mask2Former's, written independently of refseg's key map.
_PIXEL_RULES = [
    (r"^encoder\.level_embed$", "transformer.level_embed"),
    (r"^encoder\.layers\.", "transformer.encoder.layers."),
    (r"^lateral_convs\.(\d+)\.", lambda m: f"adapter_{int(m[1]) + 1}."),
    (r"^output_convs\.(\d+)\.", lambda m: f"layer_{int(m[1]) + 1}."),
]


def tiny_config(**fields):
    run = deris_tiny()
    apply_overrides(run, ["data.image_size=64", "model.num_points=64",
                          *[f"model.{k}={v}" for k, v in fields.items()]])
    return run


def build(seed, **fields):
    torch.manual_seed(seed)
    run = tiny_config(**fields)
    tokenizer = build_tokenizer(run.model, run.data, SENTENCES)
    return build_deris(run.model, tokenizer, pretrained=False), run, tokenizer


def perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return module


def file_decoder(model):
    """Mask2Former's predictor as saved: 9 layers, 100 queries, the tiny model's sizes."""
    d = model.decoder
    torch.manual_seed(7)
    return perturbed(MaskedAttentionDecoder(
        in_channels=d.hidden_dim, hidden_dim=d.hidden_dim, num_queries=FILE_QUERIES,
        num_layers=FILE_LAYERS, n_heads=d.n_heads, ffn_dim=d.transformer_ffn_layers[0].linear1.out_features,
        mask_dim=d.mask_embed.layers[-1].out_features,
    ))


def official_state(model, decoder) -> dict[str, np.ndarray]:
    """The .pkl's "model" dict: backbone, pixel decoder and predictor in Mask2Former's names."""
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    for s, stage in enumerate(model.backbone.layers):  # Mask2Former's Swin saves this buffer
        for b, block in enumerate(stage.blocks):
            state[f"backbone.layers.{s}.blocks.{b}.attn.relative_position_index"] = (
                block.attn.relative_position_index)
    for key, value in model.pixel_decoder.state_dict().items():
        for pattern, repl in _PIXEL_RULES:
            key = re.sub(pattern, repl, key)
        state[f"sem_seg_head.pixel_decoder.{key}"] = value
    for key, value in decoder.state_dict().items():
        key = key.replace("query_feat.", "static_query.")  # the name before Mask2Former's rename
        state[f"sem_seg_head.predictor.{key}"] = value
    c = decoder.hidden_dim
    state["sem_seg_head.predictor.class_embed.weight"] = torch.randn(81, c)
    state["sem_seg_head.predictor.class_embed.bias"] = torch.randn(81)
    state["criterion.empty_weight"] = torch.ones(81)
    return {k: v.detach().numpy().copy() for k, v in state.items()}


def write_pkl(path, state, protocol):
    with open(path, "wb") as fh:  # as detectron2 writes model-zoo files
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, fh,
                    protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_mask2former_pkl_loads_the_whole_perception_branch(tmp_path, protocol):
    source, _, _ = build(1)
    perturbed(source.backbone), perturbed(source.pixel_decoder)
    decoder = file_decoder(source)
    path = write_pkl(tmp_path / "model_final.pkl", official_state(source, decoder), protocol)

    model, run, _ = build(2)
    report = load_perception(path, backbone=model.backbone, pixel_decoder=model.pixel_decoder,
                             decoder=model.decoder)
    assert report.ok
    # every module tensor came from the file, with the same value
    for ours, theirs in ((model.backbone, source.backbone),
                         (model.pixel_decoder, source.pixel_decoder)):
        for key, value in theirs.state_dict().items():
            assert torch.equal(ours.state_dict()[key], value), key
    n, rounds = run.model.num_queries, run.model.rounds
    ours = model.decoder.state_dict()
    assert torch.equal(ours["query_feat.weight"], decoder.query_feat.weight[:n])
    assert torch.equal(ours["query_embed.weight"], decoder.query_embed.weight[:n])
    for key, value in decoder.state_dict().items():
        if key.startswith("transformer_") and int(key.split(".")[1]) >= rounds:
            continue
        if key.startswith(("query_feat", "query_embed")):
            continue
        assert torch.equal(ours[key], value), key
    # the report accounts for what was cut, skipped and left fresh
    assert sorted(a.split(":")[0] for a in report.decoder.adapted) == [
        "sem_seg_head.predictor.query_embed.weight", "sem_seg_head.predictor.static_query.weight"]
    skipped = {k for keys in report.decoder.skipped.values() for k in keys}
    assert "sem_seg_head.predictor.class_embed.weight" in skipped
    assert f"sem_seg_head.predictor.transformer_ffn_layers.{FILE_LAYERS - 1}.linear1.weight" in skipped
    assert "sem_seg_head.predictor.transformer_ffn_layers.0.linear1.weight" not in skipped
    fresh = {k for keys in report.decoder.fresh.values() for k in keys}
    assert fresh and all(k.startswith(("cognition_layers.", "query_fusion.", "refer_classifier."))
                         for k in fresh)
    assert list(report.rest.skipped.values()) == [["criterion.empty_weight"]]
    text = str(report)
    assert "[decoder]" in text and "adapted" in text and "COCO class head" in text


def test_build_reads_both_pretrained_files(tmp_path):
    source, run, tokenizer = build(1)
    perturbed(source)
    pkl = write_pkl(tmp_path / "m2f.pkl", official_state(source, file_decoder(source)), 4)
    beit = tmp_path / "beit3.pth"
    official_checkpoint(source.cognition.encoder, beit)
    apply_overrides(run, [f"model.perception_weights={pkl}", f"model.cognition_weights={beit}"])
    model = build_deris(run.model, tokenizer)
    for key, value in source.cognition.encoder.state_dict().items():
        assert torch.equal(model.cognition.encoder.state_dict()[key], value), key
    assert torch.equal(model.pixel_decoder.mask_features.weight,
                       source.pixel_decoder.mask_features.weight)


def test_wrong_files_fail_with_the_key_report(tmp_path):
    source, _, _ = build(1)
    decoder = file_decoder(source)
    model, _, _ = build(2)
    parts = dict(backbone=model.backbone, pixel_decoder=model.pixel_decoder,
                 decoder=model.decoder)

    state = official_state(source, decoder)
    state["sem_seg_head.pixel_decoder.adapter_9.weight"] = state.pop(
        "sem_seg_head.pixel_decoder.adapter_1.weight")
    with pytest.raises(CheckpointError) as err:
        load_perception(write_pkl(tmp_path / "a.pkl", state, 2), **parts)
    first = str(err.value).splitlines()[0]
    assert "a.pkl: keys do not match the model" in first
    assert "1 missing, e.g. lateral_convs.0.weight" in first
    assert "unexpected, e.g. sem_seg_head.pixel_decoder.adapter_9.weight" in first

    # a checkpoint saved after the rename (query_feat) is not the layout this loader reads
    state = official_state(source, decoder)
    state["sem_seg_head.predictor.query_feat.weight"] = state.pop(
        "sem_seg_head.predictor.static_query.weight")
    with pytest.raises(CheckpointError, match="missing, e.g. query_feat.weight"):
        load_perception(write_pkl(tmp_path / "b.pkl", state, 4), **parts)

    state = official_state(source, decoder)
    state["extra_head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match="unexpected, e.g. extra_head.weight"):
        load_perception(write_pkl(tmp_path / "c.pkl", state, 4), **parts)

    # fewer queries in the file than the model asks for cannot be cut
    small = file_decoder(source)
    state = official_state(source, small)
    state["sem_seg_head.predictor.query_embed.weight"] = state[
        "sem_seg_head.predictor.query_embed.weight"][:2]
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_perception(write_pkl(tmp_path / "d.pkl", state, 4), **parts)

    beit = tmp_path / "not_beit.pth"
    torch.save({"model": {"layers.0.weight": torch.zeros(2)}}, beit)
    _, run, tokenizer = build(3)
    apply_overrides(run, [f"model.cognition_weights={beit}"])
    with pytest.raises(CheckpointError, match="not_beit.pth"):
        build_deris(run.model, tokenizer)
