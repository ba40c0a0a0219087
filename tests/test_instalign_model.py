"""InstAlign assembled: the tiny config forward/backward on CPU, every ablation switch,
losses on empty / one / many targets, inference, parameter groups, registry and configs."""

import dataclasses

import numpy as np
import pytest
import torch
from builders import noise_at_padding, open_zero_initialised_paths, without_gradient

from refseg.config import apply_overrides, from_dict, to_dict
from refseg.engine.distributed import parameters_without_gradient
from refseg.errors import ConfigError
from refseg.methods.instalign.aggregation import FixedSelection
from refseg.methods.instalign.config import InstAlignConfig, instalign_swin_b, instalign_tiny
from refseg.methods.instalign.fusion import TextAgnosticBackbone
from refseg.methods.instalign.heads import QueryMean, RelevancePooled, SentenceOnly
from refseg.methods.instalign.model import build_instalign, build_tokenizer
from refseg.methods.registry import get_method, variant
from refseg.modeling.contracts import Batch, Targets

SENTENCES = ["the red circle on the left", "all blue squares", "the big green star",
             "the purple hexagon"]
SIZE = 64


# Smaller still than instalign-tiny, so that each case runs in well under a second.
TEST_SIZES = [f"data.image_size={SIZE}", "model.num_points=64", "model.hidden_dim=32",
              "model.mask_dim=32", "model.decoder_ffn_dim=64", "model.encoder_ffn_dim=64",
              "model.decoder_layers=2", "model.num_queries=6", "model.text_dim=32"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors run faster on one thread (and do not fight other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_run(*overrides):
    run = instalign_tiny()
    apply_overrides(run, [*TEST_SIZES, *overrides])
    return run


def build(*overrides):
    torch.manual_seed(0)
    run = tiny_run(*overrides)
    tokenizer = build_tokenizer(run.model, run.data, SENTENCES)
    return build_instalign(run.model, tokenizer), tokenizer


def targets(n: int) -> Targets:
    masks = torch.zeros(n, SIZE, SIZE)
    for i in range(n):
        masks[i, 8 * i: 8 * i + 12, 4 + 6 * i: 20 + 6 * i] = 1
    return Targets(masks, torch.zeros(n, 4), n == 0)


def make_batch(tokenizer, counts=(1, 3, 0, 2)) -> Batch:
    enc = tokenizer.encode(SENTENCES[: len(counts)])
    return Batch(torch.randn(len(counts), 3, SIZE, SIZE), enc.input_ids, enc.pad_mask,
                 [targets(n) for n in counts], list(range(len(counts))))


def test_forward_backward_every_parameter_gets_a_gradient():
    model, tok = build()
    open_zero_initialised_paths(model)  # else a few start with an exactly zero gradient
    batch = make_batch(tok)  # one, many, none and two targets in one batch
    outputs = model(batch)
    losses = model.loss(outputs, batch)
    assert set(losses) >= {"loss", "relevance", "mask", "dice", "poa", "ins", "merged_bce",
                           "merged_dice", "no_target"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = without_gradient(model)  # none, nor a gradient that is exactly zero
    assert not missing, missing
    stages = outputs.stages
    assert len(stages) == model.config.decoder_layers + 1
    assert stages[0].words is None and all(s.words is not None for s in stages[1:])
    q = model.config.num_queries
    assert stages[-1].mask_logits.shape == (4, q, SIZE // 4, SIZE // 4)
    assert outputs.merged_logits.shape == (4, SIZE // 4, SIZE // 4)


def test_loss_on_batches_of_only_no_target_and_of_single_targets():
    model, tok = build()
    for counts in [(0, 0), (1, 1)]:
        batch = make_batch(tok, counts)
        losses = model.loss(model(batch), batch)
        assert torch.isfinite(losses["loss"])
        losses["loss"].backward()
    empty = make_batch(tok, (0, 0))
    losses = model.loss(model(empty), empty)
    # nothing is matched: mask terms are zero, every query is pushed to irrelevance
    assert losses["mask"].item() == 0 and losses["dice"].item() == 0
    assert losses["poa"].item() == 0
    assert losses["relevance"].item() > 0


def test_matched_query_is_the_one_covering_the_target():
    model, tok = build("model.deep_supervision=false")
    batch = make_batch(tok, (1,))
    outputs = model(batch)
    last = outputs.stages[-1]
    # make query 3 predict exactly the target and be relevant; the matcher must pick it
    with torch.no_grad():
        gt = torch.nn.functional.interpolate(batch.targets[0].masks[None], size=last.mask_logits.shape[-2:])[0, 0]
        last.mask_logits[0] = -10.0
        last.mask_logits[0, 3] = torch.where(gt > 0, 10.0, -10.0)
        last.relevance_logits[0] = -5.0
        last.relevance_logits[0, 3] = 5.0
    (a,) = model.instance_supervision.match(last, None, batch.targets)
    assert a.query_idx.tolist() == [3] and a.target_idx.tolist() == [0]


# Every ablation switch of the paper (tests/test_distributed.py runs them too).
ABLATIONS = [
    "model.instance_supervision=none",
    "model.instance_supervision=mask2former",
    "model.aggregation=fixed",
    "model.aggregation=ia_no_prelu",
    "model.no_target_input=global",
    "model.no_target_input=sentence",
    "model.no_target_input=mean",
    "model.num_queries=5",
    "model.early_fusion=none",
    "model.deep_supervision=false",
]


@pytest.mark.parametrize("override", ABLATIONS)
def test_every_ablation_switch_runs_forward_and_backward(override):
    model, tok = build(override)
    batch = make_batch(tok)
    losses = model.loss(model(batch), batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    if override == "model.instance_supervision=none":
        assert "ins" not in losses and "poa" not in losses
    if override == "model.instance_supervision=mask2former":
        assert "poa" not in losses and "ins" in losses
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    # what torchrun needs (refseg.engine.distributed.wrap): every trained part takes part
    assert parameters_without_gradient(model) == []
    # the switch built what it names (and the default build does not)
    built = SWITCHED.get(override)
    if built is not None:
        assert built(model) and not built(build()[0]), override


SWITCHED = {
    "model.aggregation=fixed": lambda m: isinstance(m.aggregation, FixedSelection),
    "model.aggregation=ia_no_prelu":
        lambda m: isinstance(getattr(m.aggregation, "activation", None), torch.nn.Identity),
    "model.no_target_input=global": lambda m: isinstance(m.no_target.pooling, RelevancePooled),
    "model.no_target_input=sentence": lambda m: isinstance(m.no_target.pooling, SentenceOnly),
    "model.no_target_input=mean": lambda m: isinstance(m.no_target.pooling, QueryMean),
    "model.num_queries=5": lambda m: m.decoder.query_feat.num_embeddings == 5,
    "model.early_fusion=none": lambda m: isinstance(m.backbone, TextAgnosticBackbone),
    "model.deep_supervision=false": lambda m: not m.instance_supervision.deep_supervision,
}


@pytest.mark.parametrize("override", ["model.fusion_gate=open", "model.fusion_gate=shut"])
def test_text_padding_is_never_attended(override):
    """Other ids at padding, and noise in the padded text-encoder tokens the language-aware
    backbone reads, change no output and no loss."""
    model, tok = build(override)
    model.eval()
    batch = make_batch(tok)
    assert batch.text_pad_mask.any()
    ids = batch.input_ids.clone()
    ids[batch.text_pad_mask] = 3
    other = Batch(batch.images, ids, batch.text_pad_mask, batch.targets, batch.sent_ids)
    with torch.no_grad():
        torch.manual_seed(0)
        ref = model(batch)
        ref_losses = model.loss(ref, batch)
        torch.manual_seed(0)
        changed = model(other)
        changed_losses = model.loss(changed, other)
        hook = model.text_encoder.register_forward_hook(lambda _, args, out: dataclasses.replace(
            out, tokens=noise_at_padding(out.tokens, args[1])))
        torch.manual_seed(0)
        noisy = model(batch)
        noisy_losses = model.loss(noisy, batch)
        hook.remove()
    for out, losses in ((changed, changed_losses), (noisy, noisy_losses)):
        for name in ("merged_logits", "no_target_prob", "instance_logits", "instance_scores"):
            torch.testing.assert_close(getattr(model.infer(ref), name),
                                       getattr(model.infer(out), name))
        torch.testing.assert_close(ref_losses, losses)


def test_open_language_gate_starts_shut_then_learns_and_reaches_deeper_stages():
    model, tok = build("model.fusion_gate=open")
    backbone = model.backbone
    assert len(backbone.gates) == 3  # none after the last stage
    batch = make_batch(tok)
    text = model.text_encoder(batch.input_ids, batch.text_pad_mask)

    def maps():
        return backbone(batch.images, text.tokens.detach(), text.pad_mask)

    gates, opened = backbone.gates, maps()
    backbone.gates = None
    shut = maps()
    backbone.gates = gates
    for a, b in zip(opened, shut):  # W2 = 0: the open gate starts as the shut one
        torch.testing.assert_close(a, b)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model.loss(model(batch), batch)["loss"].backward()
        optimizer.step()
    assert all(g.gate[0].weight.grad.abs().sum() > 0 for g in backbone.gates)
    seen = {}

    def recording(s, x):  # stage s's own output, before its fusion
        seen[s] = x
        return backbone._fuse_stage(s, x, text.tokens[:2], text.pad_mask[:2])

    with torch.no_grad():  # the same image under two sentences: stage 2 itself differs
        text = model.text_encoder(batch.input_ids, batch.text_pad_mask)
        backbone.backbone(batch.images[:1].expand(2, -1, -1, -1), fuse=recording)
    torch.testing.assert_close(seen[0][0], seen[0][1])
    assert not torch.allclose(seen[1][0], seen[1][1])


def test_infer_and_decide():
    model, tok = build()
    model.eval()
    batch = make_batch(tok)
    with torch.no_grad():
        inference = model.infer(model(batch))
    q = model.config.num_queries
    assert inference.instance_scores.shape == (4, q)
    assert ((inference.no_target_prob >= 0) & (inference.no_target_prob <= 1)).all()
    decisions = model.decide(inference, model.config.thresholds)
    assert len(decisions) == 4
    for d, scores in zip(decisions, inference.instance_scores):
        assert d.instance_logits.shape[0] == int((scores > 0.5).sum())
    # docs/instalign.md: no target when sigmoid(z) > thresholds.no_target, instances with
    # p_i > thresholds.instance; both strictly, both read from this call's thresholds. Each
    # threshold equals one score, so that score is on the kept side only if >= were used.
    probs = inference.no_target_prob
    no_target_at = float(probs.sort().values[1])
    instance_at = float(inference.instance_scores[0].sort().values[-2])
    from refseg.modeling.base import Thresholds

    decisions = model.decide(inference, Thresholds(no_target=no_target_at, instance=instance_at))
    for d, p, scores in zip(decisions, probs, inference.instance_scores):
        assert d.no_target_score == float(p)
        assert d.no_target == (float(p) > no_target_at)
        assert torch.equal(d.instance_scores, scores[scores > instance_at])
    assert [d.no_target for d in decisions].count(True) == 2
    assert decisions[0].instance_scores.numel() == 1


def test_param_groups_backbone_lr_and_no_decay():
    model, _ = build("model.backbone_lr_factor=0.1")
    groups = model.param_groups(1e-3)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone.backbone"]["lr"] == pytest.approx(1e-4)
    assert by_name["heads"]["lr"] == pytest.approx(1e-3)
    assert by_name["text_encoder"]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))
    assert all("weight_decay" not in g for g in groups if not g["name"].endswith("no_decay"))
    counted = sum(len(g["params"]) for g in groups)
    assert counted == len(list(model.parameters()))
    fusion = {id(p) for p in model.backbone.fusions.parameters()}
    heads = {id(p) for g in groups if g["name"].startswith("heads") for p in g["params"]}
    assert fusion <= heads  # new fusion layers learn at the full rate
    no_decay = {id(p) for g in groups if g["name"].endswith("no_decay") for p in g["params"]}
    assert id(model.decoder.query_feat.weight) in no_decay
    assert id(model.decoder.mask_embed.layers[0].weight) not in no_decay


def test_registry_and_config_round_trip():
    method = get_method("instalign")
    assert method.config_class is InstAlignConfig
    run = variant("instalign-tiny")
    assert run.method == "instalign" and run.data.format == "grefcoco"
    apply_overrides(run, ["model.thresholds.no_target=0.7", "model.no_target_input=mean"])
    again = from_dict(to_dict(run), InstAlignConfig)
    assert again.model == run.model and again.model.thresholds.no_target == 0.7
    tok = method.build_tokenizer(run.model, run.data, SENTENCES)
    model = method.build_model(run.model, tok)
    assert model.config.no_target_input == "mean"


def test_tokenizer_round_trip(tmp_path):
    method = get_method("instalign")
    run = tiny_run()
    tok = method.build_tokenizer(run.model, run.data, SENTENCES)
    tok.save(tmp_path)
    again = method.load_tokenizer(run.model, str(tmp_path))
    a, b = tok.encode(SENTENCES), again.encode(SENTENCES)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pad_mask, b.pad_mask)


@pytest.mark.parametrize("override,message", [
    ("model.aggregation=mean", "model.aggregation"),
    ("model.instance_supervision=detr", "model.instance_supervision"),
    ("model.early_fusion=film", "model.early_fusion"),
    ("model.fusion_gate=half", "model.fusion_gate"),
    ("model.backbone=resnet50", "model.backbone"),
    ("model.encoder_heads=3", r"model\.encoder_heads=3: must divide model\.hidden_dim=32"),
    ("model.decoder_heads=3", r"model\.decoder_heads=3: must divide model\.hidden_dim=32"),
    ("model.text_heads=3", r"model\.text_heads=3: must divide model\.text_dim=32"),
    ("model.encoder_heads=0", r"model\.encoder_heads=0: must be >= 1"),
    ("model.decoder_heads=-1", r"model\.decoder_heads=-1: must be >= 1"),
    ("model.encoder_points=-1", r"model\.encoder_points=-1: must be >= 1"),
    ("model.decoder_ffn_dim=-1", r"model\.decoder_ffn_dim=-1: must be >= 1"),
    ("model.text_dim=0", r"model\.text_dim=0: must be >= 1"),
])
def test_bad_choices_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        build(override)


def test_pretrained_bert_needs_its_directory():
    run = instalign_swin_b()
    with pytest.raises(ConfigError, match="text_encoder_path"):
        build_tokenizer(run.model, run.data, SENTENCES)


def test_paper_config_numbers():
    run = instalign_swin_b()
    m, t, d = run.model, run.train, run.data
    assert (m.backbone, m.backbone_pretrain_size, m.num_queries, m.decoder_layers) == (
        "swin_base", 384, 100, 9)
    assert (m.hidden_dim, m.encoder_layers, m.mask_dim) == (256, 6, 256)
    assert (m.class_weight, m.mask_weight, m.dice_weight) == (2.0, 5.0, 5.0)
    assert (m.text_encoder, m.tokenizer, m.instance_supervision) == ("bert", "bert", "poa")
    assert (m.aggregation, m.no_target_input) == ("ia", "concat")
    assert (d.image_size, d.max_text_length) == (480, 20)
    assert (t.optimizer, t.lr, t.batch_size, t.epochs, t.lr_schedule, t.weight_decay) == (
        "adamw", 1e-4, 32, 20, "linear", 0.05)
    assert m.backbone_lr_factor == 0.1 and t.grad_clip > 0


def test_paper_model_has_the_reported_230m_parameters():
    """Swin-B + BERT-base + PWAM + pixel decoder + 9-block decoder, built on the meta
    device (shapes only, no memory, no weights): the paper reports 230M."""
    from types import SimpleNamespace

    run = instalign_swin_b()
    bert_uncased = SimpleNamespace(vocab_size=30522, max_length=20)
    with torch.device("meta"):
        model = build_instalign(run.model, bert_uncased, pretrained=False)
    total = sum(p.numel() for p in model.parameters())
    assert total == pytest.approx(230e6, rel=0.005)
    swin = sum(p.numel() for p in model.backbone.backbone.parameters())
    assert swin == pytest.approx(86.9e6, rel=0.005)


def test_fixed_selection_mask_follows_the_calls_instance_threshold():
    from refseg.engine.postprocess import to_result
    from refseg.modeling.base import Thresholds

    model, tok = build("model.aggregation=fixed")
    model.eval()
    with torch.no_grad():
        inference = model.infer(model(make_batch(tok)))
    scores = inference.instance_scores[0]
    low = float(scores.min()) - 1e-3  # keeps every instance of sample 0
    for threshold in (low, 0.99):
        (decision, *_) = model.decide(inference, Thresholds(no_target=1.0, instance=threshold))
        result = to_result(decision, SIZE, SIZE, Thresholds(no_target=1.0, instance=threshold))
        union = np.zeros((SIZE, SIZE), bool)
        for inst in result.instances:
            union |= inst.mask
        np.testing.assert_array_equal(result.mask, union)
    assert len(model.decide(inference, Thresholds(instance=low))[0].instance_scores) == len(scores)
