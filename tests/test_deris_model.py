"""DeRIS assembled: the tiny config forward/backward on CPU, every parameter's gradient,
targets empty / one / many, every ablation switch, the loopback exchange, the decision
rule, parameter groups, registry, configs and tokenizers."""

import pytest
import torch
from builders import noise_at_padding, open_zero_initialised_paths, without_gradient
from test_beit3 import spm_path  # noqa: F401  (a sentencepiece model trained in the test)

from refseg.config import apply_overrides, from_dict, to_dict
from refseg.errors import ConfigError
from refseg.methods.deris.cognition import REFERENT, mask_pooled_position, refer_probability
from refseg.methods.deris.config import deris_b, deris_l, deris_tiny
from refseg.methods.deris.criterion import Round
from refseg.methods.deris.model import build_deris, build_tokenizer, load_tokenizer
from refseg.methods.registry import get_method, variant
from refseg.modeling.base import Thresholds
from refseg.modeling.contracts import Batch, Inference, Targets

SENTENCES = ["the red circle on the left", "all blue squares", "the big green star",
             "the purple hexagon"]
SIZE = 64
# Smaller than deris-tiny, so that the whole file runs in seconds.
SMALL = ["model.hidden_dim=32", "model.mask_dim=32", "model.cognition_dim=32",
         "model.cognition_ffn_dim=64", "model.decoder_ffn_dim=64", "model.encoder_ffn_dim=64",
         "model.cognition_layer_ffn_dim=64", "model.existence_ffn_dim=64", "model.num_queries=6",
         "model.cognition_size=32", "model.num_points=64"]


def tiny_run(*overrides):
    run = deris_tiny()
    apply_overrides(run, [f"data.image_size={SIZE}", *SMALL, *overrides])
    return run


def build(*overrides):
    torch.manual_seed(0)
    run = tiny_run(*overrides)
    tokenizer = build_tokenizer(run.model, run.data, SENTENCES)
    return build_deris(run.model, tokenizer), tokenizer


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
    assert set(losses) == {"refer", "mask", "dice", "existence", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = without_gradient(model)  # none, nor a gradient that is exactly zero
    assert not missing, missing
    cfg = model.config
    assert len(outputs.rounds) == cfg.rounds + 1
    assert outputs.rounds[-1].refer_logits.shape == (4, cfg.num_queries, 2)
    assert outputs.rounds[-1].mask_logits.shape == (4, cfg.num_queries, SIZE // 4, SIZE // 4)
    assert outputs.existence_logits.shape == (4,)


def test_frozen_backbone_gets_no_gradient_and_stays_in_eval_mode():
    model, tok = build("model.freeze_backbone=true")
    model.train()
    assert not model.backbone.training and model.decoder.training
    batch = make_batch(tok)
    model.loss(model(batch), batch)["loss"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    others = [n for n, p in model.named_parameters()
              if not n.startswith("backbone.") and p.grad is None]
    assert not others, others
    assert all(g["name"] != "backbone" for g in model.param_groups(1e-4))


@pytest.mark.parametrize("counts", [(0, 0), (1, 1), (3, 2)])
def test_loss_on_batches_of_empty_single_and_many_targets(counts):
    model, tok = build()
    batch = make_batch(tok, counts)
    losses = model.loss(model(batch), batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    if counts == (0, 0):  # nothing matched: no mask terms, every query "not referred"
        assert losses["mask"].item() == 0 and losses["dice"].item() == 0
        assert losses["refer"].item() > 0


def test_loss_weights_aux_rounds_and_no_object_class():
    model, tok = build()
    batch = make_batch(tok, (1, 0))
    outputs = model(batch)
    crit = model.criterion
    torch.manual_seed(1)
    total = crit(outputs.rounds, outputs.existence_logits, batch.targets)
    torch.manual_seed(1)
    per_round = [crit.round_losses(r, batch.targets) for r in outputs.rounds]
    expected = {k: sum((1.0 if i == len(per_round) - 1 else 0.2) * p[k]
                       for i, p in enumerate(per_round)) for k in ("refer", "mask", "dice")}
    for k, v in expected.items():
        torch.testing.assert_close(total[k], v)
    # hand-computed refer CE on the all-empty sample: every query is "not referred" (w 0.1)
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    empty = [Targets(torch.zeros(0, 8, 8), torch.zeros(0, 4), True)]
    got = crit.round_losses(Round(logits, torch.zeros(1, 2, 8, 8)), empty)["refer"]
    ce = -torch.log_softmax(logits[0], -1)[:, 1]
    torch.testing.assert_close(got, ce.mean())  # equal weights 0.1 cancel in the mean
    # one referent, matched to query 0 (its mask covers it): CE weighted 1 for the matched
    # query and 0.1 for the other, a weighted mean (PyTorch's, as the released criterion)
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1.0
    masks = torch.full((1, 2, 8, 8), -10.0)
    masks[0, 0, 2:6, 2:6] = 10.0
    one = [Targets(target, torch.tensor([[0.25, 0.25, 0.75, 0.75]]), False)]
    got = crit.round_losses(Round(logits, masks), one)["refer"]
    log_p = torch.log_softmax(logits[0], -1)
    expected = (-log_p[0, REFERENT] - 0.1 * log_p[1, 1 - REFERENT]) / 1.1
    torch.testing.assert_close(got, expected)


def test_matched_query_is_the_one_covering_the_target():
    model, tok = build()
    batch = make_batch(tok, (1,))
    gt = torch.nn.functional.interpolate(batch.targets[0].masks[None], size=(SIZE // 4,) * 2)[0, 0]
    masks = torch.full((1, model.config.num_queries, SIZE // 4, SIZE // 4), -10.0)
    masks[0, 3] = torch.where(gt > 0, 10.0, -10.0)
    refer = torch.zeros(1, model.config.num_queries, 2)
    refer[0, 3, 0] = 5.0
    (a,) = model.criterion.match(Round(refer, masks), batch.targets)
    assert a.query_idx.tolist() == [3] and a.target_idx.tolist() == [0]


# Every ablation switch of the paper (tests/test_distributed.py runs them too).
ABLATIONS = [
    "model.synergy=p2c",
    "model.synergy=c2p",
    "model.rounds=1",
    "model.rounds=5",
    "model.share_cognition=true",
    "model.existence_source=image",
    "model.existence_source=cls",
    "model.existence_source=query",
    "model.num_queries=3",
    "model.deep_supervision=false",
    "model.position_role=content",
    "model.mask_pool_norm=mask",
    "model.existence_at_test=true",
    "model.existence_weight=0",
]


@pytest.mark.parametrize("override", ABLATIONS)
def test_every_ablation_switch_runs_forward_and_backward(override):
    model, tok = build(override)
    batch = make_batch(tok)
    outputs = model(batch)
    assert len(outputs.rounds) == model.config.rounds + 1
    losses = model.loss(outputs, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    if override.startswith("model.existence_source="):
        # only the query source reads the last round's fused queries; others lack that fusion
        query = model.config.existence_source == "query"
        assert len(model.decoder.query_fusion) == model.config.rounds + query
    if override == "model.share_cognition=true":
        assert len(model.decoder.cognition_layers) == 1
    if override.startswith("model.synergy="):
        assert len(model.decoder.query_fusion) == 0
    cognition = model.decoder.cognition_layers[0]
    checks = {
        "model.num_queries=3": lambda: outputs.rounds[-1].refer_logits.shape[1] == 3,
        "model.deep_supervision=false": lambda: not model.criterion.deep_supervision,
        "model.position_role=content": lambda: cognition.position_role == "content",
        "model.mask_pool_norm=mask": lambda: cognition.pool_norm == "mask",
        "model.existence_weight=0": lambda: torch.allclose(losses["loss"], sum(
            model.criterion.weights[k] * losses[k] for k in ("refer", "mask", "dice"))),
        "model.existence_at_test=true": lambda: torch.allclose(
            model.infer(outputs).instance_scores,
            refer_probability(outputs.rounds[-1].refer_logits)
            * outputs.existence_logits.sigmoid()[:, None]),
    }
    assert checks.get(override, lambda: True)(), override


def test_synergy_forms_decide_what_the_next_perception_layer_gets():
    from refseg.methods.deris.loopback import LoopbackContext

    batch_queries = torch.randn(2, 6, 32)
    masks = torch.randn(2, 6, 16, 16)
    ctx = lambda: LoopbackContext(torch.randn(2, 5, 32), torch.zeros(2, 5, dtype=torch.bool),  # noqa: E731
                                  torch.randn(2, 32, 16, 16))
    for synergy in ("loopback", "p2c", "c2p"):
        model, _ = build(f"model.synergy={synergy}")
        context = ctx()
        out = model.decoder.after_prediction(0, batch_queries, masks, context)
        assert len(context.refer_logits) == 1 and context.refer_logits[0].shape == (2, 6, 2)
        if synergy == "p2c":
            assert out is batch_queries
        elif synergy == "c2p":
            assert torch.equal(out, context.cognition_queries[0])
        else:
            assert not torch.equal(out, batch_queries)
            assert not torch.equal(out, context.cognition_queries[0])


@pytest.mark.parametrize("source", ["cls", "query"])
def test_text_padding_is_never_attended(source):
    """Other ids at padding, and noise in the padded text tokens the cognition layers and
    the query existence head read, change no output."""
    model, tok = build(f"model.existence_source={source}")
    model.eval()
    batch = make_batch(tok, (1, 2))
    assert batch.text_pad_mask.any()
    with torch.no_grad():
        ref = model(batch)
        ids = batch.input_ids.clone()
        ids[batch.text_pad_mask] = 3  # change only padded positions
        batch2 = Batch(batch.images, ids, batch.text_pad_mask, batch.targets, batch.sent_ids)
        other = model(batch2)
        hook = model.cognition.register_forward_hook(
            lambda _, args, out: (out[0], noise_at_padding(out[1], args[2]), out[2]))
        noisy = model(batch)
        hook.remove()
    for out in (other, noisy):
        torch.testing.assert_close(ref.rounds[-1].refer_logits, out.rounds[-1].refer_logits)
        torch.testing.assert_close(ref.rounds[-1].mask_logits, out.rounds[-1].mask_logits)
        torch.testing.assert_close(ref.existence_logits, out.existence_logits)


def test_an_all_padding_sentence_gives_finite_queries_not_nan():
    """The layers' contract (one open key per row): torch 2.13's attention returns
    finite values for a row with no key, which attention has not always done."""
    from refseg.methods.deris.cognition import InstanceTextRelation

    torch.manual_seed(0)
    layer = InstanceTextRelation(d_model=16, n_heads=2, ffn_dim=32).eval()
    queries, text = torch.randn(2, 3, 16), torch.randn(2, 4, 16)
    pad = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = layer(queries, text, pad)
    assert torch.isfinite(out).all()
    alone = layer(queries[:1], text[:1], pad[:1])  # the other row is unchanged by the opening
    assert torch.allclose(out[:1], alone, atol=1e-6)


def test_mask_pooled_position_is_eq4():
    masks = torch.tensor([[[[10.0, -10.0], [-10.0, -10.0]]]])  # (1, 1, 2, 2)
    feats = torch.arange(8.0).view(1, 2, 2, 2)
    got = mask_pooled_position(masks, feats, stride=1)
    s = torch.sigmoid(masks[0, 0])
    expected = (s[None] * feats[0]).sum(dim=(1, 2)) / 4
    torch.testing.assert_close(got[0, 0], expected)
    # normalised by the mask's soft area instead of the pixel count
    got_mask = mask_pooled_position(masks, feats, stride=1, norm="mask")
    torch.testing.assert_close(got_mask[0, 0], expected * 4 / s.sum())
    # stride 2: one pixel left, average-pooled features times the resized mask
    got2 = mask_pooled_position(masks, feats, stride=2)
    s2 = torch.sigmoid(torch.nn.functional.interpolate(masks, size=(1, 1), mode="bilinear"))
    torch.testing.assert_close(got2[0, 0], s2.flatten() * feats[0].mean(dim=(1, 2)))


def test_decide_keeps_instances_above_threshold_and_unions_them():
    model, _ = build()
    logits = torch.full((2, 3, 4, 4), -8.0)
    logits[0, 0, :2, :2] = 8.0
    logits[0, 1, 2:, 2:] = 8.0
    logits[0, 2, :, :] = 8.0  # a whole-image mask with a low score: must not be merged
    refer = torch.tensor([[[3.0, 0.0], [2.0, 0.0], [-3.0, 0.0]],
                          [[-1.0, 0.0], [-2.0, 0.0], [0.0, 0.0]]])
    scores = refer_probability(refer)
    inference = Inference(torch.zeros(2, 4, 4), 1 - scores.max(1).values, logits, scores)
    first, second = model.decide(inference, Thresholds(instance=0.7, mask=0.5))
    assert not first.no_target and first.instance_scores.shape == (2,)
    union = first.mask_logits >= 0.0
    assert union[:2, :2].all() and union[2:, 2:].all() and not union[:2, 2:].any()
    assert first.no_target_score == pytest.approx(1 - float(scores[0].max()))
    assert second.no_target and second.instance_logits.shape[0] == 0
    assert second.no_target_score == pytest.approx(0.5)  # best refer probability 0.5
    assert not second.mask_logits.ge(0.0).any()


def test_infer_and_decide_on_the_model():
    model, tok = build()
    model.eval()
    with torch.no_grad():
        inference = model.infer(model(make_batch(tok)))
    q = model.config.num_queries
    assert inference.instance_scores.shape == (4, q)
    assert ((inference.instance_scores >= 0) & (inference.instance_scores <= 1)).all()
    decisions = model.decide(inference, model.config.thresholds)
    for d, score in zip(decisions, inference.no_target_prob):
        assert d.no_target_score == pytest.approx(float(score), abs=1e-6)
        assert d.no_target == (d.instance_scores.numel() == 0)


def test_existence_at_test_scales_the_scores():
    model, tok = build("model.existence_at_test=false")
    model.eval()
    with torch.no_grad():
        outputs = model(make_batch(tok))
        plain = model.infer(outputs).instance_scores
        model.config.existence_at_test = True
        scaled = model.infer(outputs).instance_scores
    torch.testing.assert_close(scaled, plain * outputs.existence_logits.sigmoid()[:, None])


def test_param_groups_and_adam_options():
    model, _ = build("model.freeze_backbone=false", "model.backbone_lr_factor=0.1",
                     "model.cognition_lr_factor=0.5", "model.amsgrad=true")
    groups = {g["name"]: g for g in model.param_groups(1e-4)}
    assert set(groups) == {"backbone", "cognition.encoder", "heads"}
    assert groups["backbone"]["lr"] == pytest.approx(1e-5)
    assert groups["cognition.encoder"]["lr"] == pytest.approx(5e-5)
    assert groups["heads"]["lr"] == pytest.approx(1e-4)
    assert all(g["amsgrad"] for g in groups.values())
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)
    torch.optim.Adam(list(groups.values()), lr=1e-4)  # the options are Adam's


def test_registry_variants_and_config_round_trip():
    method = get_method("deris")
    assert method.config_class.__name__ == "DerisConfig"
    for name in ("deris-tiny", "deris-b", "deris-l", "deris-b-refcoco", "deris-l-refcoco"):
        run = variant(name)
        back = from_dict(to_dict(run), method.config_class)
        assert back == run


def test_paper_config_numbers():
    b, l = deris_b(), deris_l()
    assert (b.model.backbone, l.model.backbone) == ("swin_small", "swin_base")
    assert (b.model.cognition_dim, l.model.cognition_dim) == (768, 1024)
    assert (b.model.thresholds.instance, l.model.thresholds.instance) == (0.7, 0.9)
    assert b.model.num_queries == 20 and variant("deris-b-refcoco").model.num_queries == 10
    assert b.model.rounds == 3 and b.model.freeze_backbone
    assert b.data.image_size == 384 and b.model.cognition_size == 224
    assert b.data.nsc_prob == 0.15 and b.data.max_text_length == 50
    assert (b.train.optimizer, b.train.lr, b.train.epochs, b.train.lr_steps) == (
        "adam", 1e-4, 6, (5,))
    assert b.model.cognition_lr_factor == 0.5 and b.train.grad_clip == 0.15
    assert (b.model.class_weight, b.model.mask_weight, b.model.dice_weight) == (2.0, 5.0, 5.0)
    assert (b.model.no_object_weight, b.model.aux_weight, b.model.num_points) == (0.1, 0.2, 12544)


@pytest.mark.parametrize("override,message", [
    ("model.synergy=both", "model.synergy"),
    ("model.existence_source=text", "model.existence_source"),
    ("model.mask_dim=16", "model.mask_dim"),
    ("model.cognition_size=60", "model.cognition_size"),
    ("model.backbone=resnet50", "model.backbone"),
    ("model.encoder_heads=3", r"model\.encoder_heads=3: must divide model\.hidden_dim=32"),
    ("model.decoder_heads=3", r"model\.decoder_heads=3: must divide model\.hidden_dim=32"),
    ("model.cognition_heads=3", r"model\.cognition_heads=3: must divide model\.cognition_dim"),
    ("model.cognition_layer_heads=3", r"model\.cognition_layer_heads=3: must divide"),
    ("model.cognition_patch_size=0", r"model\.cognition_patch_size=0: must be >= 1"),
    ("model.norm_groups=0", r"model\.norm_groups=0: must be >= 1"),
    ("model.decoder_heads=0", r"model\.decoder_heads=0: must be >= 1"),
    ("model.encoder_points=-1", r"model\.encoder_points=-1: must be >= 1"),
])
def test_bad_choices_are_config_errors(override, message):
    run = tiny_run(override)
    with pytest.raises(ConfigError, match=message):
        build_deris(run.model, build_tokenizer(tiny_run().model, run.data, SENTENCES))


def test_tokenizers_round_trip_and_beit3_needs_its_file(tmp_path):
    run = tiny_run()
    tok = build_tokenizer(run.model, run.data, SENTENCES)
    tok.save(tmp_path / "word")
    again = load_tokenizer(run.model, str(tmp_path / "word"))
    assert torch.equal(again.encode(SENTENCES).input_ids, tok.encode(SENTENCES).input_ids)
    b = deris_b()
    with pytest.raises(ConfigError, match="tokenizer_path"):
        build_tokenizer(b.model, b.data, SENTENCES)


def test_beit3_batch_tokenizer_contract(spm_path, tmp_path):
    from refseg.errors import DataError
    from refseg.modeling.beit3 import Beit3BatchTokenizer, Beit3Tokenizer

    length = len(Beit3Tokenizer(spm_path).piece_ids("the man")) + 2  # fits exactly
    tok = Beit3BatchTokenizer.from_spm(spm_path, max_length=length)
    out = tok.encode(["the man", "a woman in a blue shirt on the left"], ids=[7, 8])
    ids, pad = Beit3Tokenizer(spm_path, max_length=length).encode(
        ["the man", "a woman in a blue shirt on the left"])
    assert torch.equal(out.input_ids, ids) and torch.equal(out.pad_mask, pad)
    assert out.truncated.tolist() == [False, True] and out.num_truncated == 1
    with pytest.raises(DataError, match="sentence 9: empty"):
        tok.encode(["the man", "  "], ids=[3, 9])
    with pytest.raises(DataError, match="sentence 1: no tokens left"):
        tok.encode(["the man", "?!"])
    tok.save(tmp_path / "tok")
    again = Beit3BatchTokenizer.load(tmp_path / "tok")
    assert again.max_length == length and torch.equal(again.encode(["the man"]).input_ids, ids[:1])


def test_deris_with_the_beit3_tokenizer_runs_and_reloads_it(spm_path, tmp_path):
    run = tiny_run("model.tokenizer=beit3", f"model.tokenizer_path={spm_path}",
                   "model.cognition_vocab_size=64")
    run.data.max_text_length = 10
    tok = build_tokenizer(run.model, run.data, SENTENCES)
    assert tok.vocab_size <= 64
    torch.manual_seed(0)
    model = build_deris(run.model, tok)
    batch = make_batch(tok, (1, 0))
    model.loss(model(batch), batch)["loss"].backward()
    tok.save(tmp_path / "tok")
    again = load_tokenizer(run.model, str(tmp_path / "tok"))
    assert torch.equal(again.encode(SENTENCES).input_ids, tok.encode(SENTENCES).input_ids)
    small = tiny_run("model.tokenizer=beit3", f"model.tokenizer_path={spm_path}",
                     "model.cognition_vocab_size=8")
    with pytest.raises(ConfigError, match="cognition_vocab_size"):
        build_deris(small.model, tok)
