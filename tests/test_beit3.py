"""BEiT-3 encoder: official-layout loading, parity with a reference forward, positions,
padding, gradients, tokenizer."""

import re

import pytest
import torch
import torch.nn.functional as F

from refseg.errors import CheckpointError
from refseg.modeling.beit3 import (
    Beit3Encoder,
    Beit3Tokenizer,
    beit3_key_map,
    beit3_tiny,
    load_beit3,
    resize_patch_positions,
)

# --- official layout, written independently of refseg's key map ---------------------

_RULES = [  # refseg name pattern -> torchscale name (A = vision, B = language)
    (r"^patch_embed\.", "vision_embed.proj."),
    (r"^cls_token$", "vision_embed.cls_token"),
    (r"^vision_pos\.", "encoder.embed_positions.A."),
    (r"^text_pos\.", "encoder.embed_positions.B."),
    (r"^final_norm\.", "encoder.layer_norm."),
    (r"^layers\.", "encoder.layers."),
    (r"\.attn\.inner_norm\.", ".self_attn.inner_attn_ln."),
    (r"\.attn\.", ".self_attn."),
    (r"\.attn_norm\.", ".self_attn_layer_norm."),
    (r"\.ffn_norm\.", ".final_layer_norm."),
    (r"\.inner_norm\.", ".ffn_layernorm."),
    (r"\.vision(\.|$)", r".A\1"),
    (r"\.language(\.|$)", r".B\1"),
]


def to_official(state: dict) -> dict:
    out = {}
    for name, value in state.items():
        for pattern, repl in _RULES:
            name = re.sub(pattern, repl, name)
        out["beit3." + name] = value.clone()
    return out


def official_checkpoint(model, path, extra=None):
    state = to_official(model.state_dict())
    state["beit3.vision_embed.mask_token"] = torch.zeros(1, 1, model.dim)
    state["head.weight"] = torch.zeros(3, model.dim)  # a fine-tuning head
    state.update(extra or {})
    torch.save({"model": state, "args": None}, path)
    return state


# --- reference forward on the official state dict (torchscale semantics) ------------


def reference_forward(sd, images, ids, pad, *, patch, heads, eps=1e-5):
    """Literal re-statement of torchscale's BEiT3 forward from official keys."""
    p = lambda k: sd["beit3." + k]  # noqa: E731
    parts, split = [], 0
    if images is not None:
        w, bias = p("vision_embed.proj.weight"), p("vision_embed.proj.bias")
        x = F.conv2d(images, w, bias, stride=patch)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([p("vision_embed.cls_token").expand(x.shape[0], -1, -1), x], 1)
        x = x + p("encoder.embed_positions.A.weight")[2 : 2 + x.shape[1]]
        parts.append(x)
        split = x.shape[1]
    if ids is not None:
        t = F.embedding(ids, p("text_embed.weight"))
        parts.append(t + p("encoder.embed_positions.B.weight")[2 : 2 + ids.shape[1]])
    x = torch.cat(parts, 1)
    n = x.shape[1]
    if images is None:
        split = 0
    elif ids is None:
        split = n
    mask = torch.zeros(x.shape[:2], dtype=torch.bool)
    if pad is not None:
        mask[:, split:] = pad
    x = x * (1 - mask[..., None].float())

    def way(fn, t, key):
        a, b = t[:, :split], t[:, split:]
        outs = [fn(a, key + ".A")] if split else []
        outs += [fn(b, key + ".B")] if split < n else []
        return torch.cat(outs, 1)

    def ln(t, key):
        return F.layer_norm(t, t.shape[-1:], p(key + ".weight"), p(key + ".bias"), eps)

    def lin(t, key):
        return F.linear(t, p(key + ".weight"), p(key + ".bias"))

    def ffn(t, key):
        h = F.gelu(lin(t, key + ".fc1"))
        return lin(ln(h, key + ".ffn_layernorm"), key + ".fc2")

    depth = len({k.split(".")[3] for k in sd if k.startswith("beit3.encoder.layers.")})
    b, c = x.shape[0], x.shape[2]
    hd = c // heads
    for i in range(depth):
        pre = f"encoder.layers.{i}"
        h = way(ln, x, pre + ".self_attn_layer_norm")
        q = way(lin, h, pre + ".self_attn.q_proj") * hd**-0.5
        k = way(lin, h, pre + ".self_attn.k_proj")
        v = way(lin, h, pre + ".self_attn.v_proj")
        q, k, v = (z.view(b, n, heads, hd).transpose(1, 2) for z in (q, k, v))
        w = q @ k.transpose(-1, -2)
        w = w.masked_fill(mask[:, None, None, :], float("-inf")).softmax(-1)
        a = (w @ v).transpose(1, 2).reshape(b, n, c)
        a = way(lin, way(ln, a, pre + ".self_attn.inner_attn_ln"), pre + ".self_attn.out_proj")
        x = x + a
        x = x + way(ffn, way(ln, x, pre + ".final_layer_norm"), pre + ".ffn")
    return way(ln, x, "encoder.layer_norm")


# --- fixtures ------------------------------------------------------------------------


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Beit3Encoder.from_config(beit3_tiny(**kw)).eval()


def inputs(seed=1, b=2, n=7, side=32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, side, side, generator=g)
    ids = torch.randint(4, 512, (b, n), generator=g)
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, 4:] = True
    return images, ids, pad


# --- model and loader ----------------------------------------------------------------


def test_key_map_covers_the_module_and_matches_the_independent_rules():
    model = tiny()
    state = model.state_dict()
    theirs = beit3_key_map(len(model.layers))
    assert sorted(theirs.values()) == sorted(state)
    official = [k.removeprefix("beit3.") for k in to_official(state)]
    assert {theirs[k] for k in official} == set(state)
    assert all(theirs[o] == k for k, o in zip(state, official))


def test_official_checkpoint_loads_strictly_and_reproduces_the_model(tmp_path):
    source = tiny(seed=0)
    official_checkpoint(source, tmp_path / "beit3.pth")
    target = tiny(seed=5)
    report = load_beit3(target, tmp_path / "beit3.pth")
    assert report.ok and not report.adapted
    assert list(report.skipped.values()) == [["beit3.vision_embed.mask_token"]]
    assert report.outside == ["head.weight"]
    assert sorted(report.loaded) == sorted(source.state_dict())
    images, ids, pad = inputs()
    with torch.no_grad():
        a, b = source(images, ids, pad), target(images, ids, pad)
    assert torch.equal(a.image_tokens, b.image_tokens)
    assert torch.equal(a.text_tokens, b.text_tokens)


@pytest.mark.parametrize("mode", ["joint", "image", "text"])
def test_parity_with_reference_forward(mode):
    model = tiny()
    sd = to_official(model.state_dict())
    images, ids, pad = inputs()
    images = None if mode == "text" else images
    ids, pad = (None, None) if mode == "image" else (ids, pad)
    with torch.no_grad():
        out = model(images, ids, pad)
        ref = reference_forward(sd, images, ids, pad, patch=8, heads=4)
    got = torch.cat([t for t in (out.image_tokens, out.text_tokens) if t is not None], 1)
    valid = torch.ones(ref.shape[:2], dtype=torch.bool)
    if pad is not None:
        valid[:, ref.shape[1] - pad.shape[1] :] = ~pad
    torch.testing.assert_close(got[valid], ref[valid], rtol=1e-5, atol=1e-5)


def write_state(path, state):
    torch.save({"model": state}, path)


def test_other_layouts_fail_with_a_key_report(tmp_path):
    model = tiny()
    state = official_checkpoint(model, tmp_path / "ok.pth")

    renamed = dict(state)
    renamed["beit3.encoder.layers.0.self_attn.qq_proj.A.weight"] = renamed.pop(
        "beit3.encoder.layers.0.self_attn.q_proj.A.weight"
    )
    write_state(tmp_path / "renamed.pth", renamed)
    with pytest.raises(
        CheckpointError,
        match=r"1 missing, e\.g\. layers\.0\.attn\.q_proj\.vision\.weight; 1 unexpected, .*qq_proj",
    ):
        load_beit3(tiny(), tmp_path / "renamed.pth")

    missing = {k: v for k, v in state.items() if "final_layer_norm.B.bias" not in k}
    write_state(tmp_path / "missing.pth", missing)
    with pytest.raises(CheckpointError, match=r"2 missing, e\.g\. layers\.0\.ffn_norm\.language"):
        load_beit3(tiny(), tmp_path / "missing.pth")

    swin = {
        "patch_embed.proj.weight": torch.zeros(96, 3, 4, 4),
        "layers.0.blocks.0.attn.qkv.weight": torch.zeros(288, 96),
        "norm.weight": torch.zeros(768),
    }
    write_state(tmp_path / "swin.pth", swin)
    with pytest.raises(CheckpointError, match=r"swin\.pth: keys do not match .*\(90 missing") as err:
        load_beit3(tiny(), tmp_path / "swin.pth")
    assert "outside prefix 'beit3.': 3 keys" in str(err.value)

    with pytest.raises(CheckpointError, match=r"78 of the wrong shape, e\.g\. beit3\.vision_embed"):
        load_beit3(tiny(dim=48), tmp_path / "ok.pth")  # base checkpoint into large


    torch.save(state, tmp_path / "bare.pth")  # no 'model' entry
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_beit3(tiny(), tmp_path / "bare.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: .*corrupt"):
        load_beit3(tiny(), tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_beit3(tiny(), tmp_path / "absent.pth")


def test_position_interpolation_identity_and_384(tmp_path):
    table = torch.randn(14 * 14, 8)
    same = resize_patch_positions(table, (14, 14), (14, 14))
    torch.testing.assert_close(same, table, rtol=0, atol=1e-5)
    # Another size: the official resize, the rows of a 4 x 6 (h x w) grid as a (1, C, h, w)
    # picture, bicubic with corners not aligned (bilinear or a swapped grid gives others).
    wide = torch.randn(4 * 6, 8)
    picture = wide.reshape(4, 6, 8).permute(2, 0, 1)[None]
    official = F.interpolate(picture, size=(7, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(resize_patch_positions(wide, (4, 6), (7, 3)),
                               official[0].permute(1, 2, 0).reshape(7 * 3, 8), rtol=0, atol=1e-6)

    model = tiny(img_size=224, patch_size=16)
    images, ids, pad = inputs(side=384)
    with torch.no_grad():
        out = model(images, ids, pad)
    assert out.grid == (24, 24) and out.image_tokens.shape == (2, 1 + 576, 32)
    assert out.patch_map().shape == (2, 32, 24, 24)
    # Same as a 384 model loading the 224 checkpoint, its table resized at load time
    # (the official way: the two fairseq rows and the CLS row kept, patch rows resized).
    official_checkpoint(model, tmp_path / "224.pth")
    native = tiny(seed=3, img_size=384, patch_size=16)
    report = load_beit3(native, tmp_path / "224.pth")
    assert report.adapted == ["beit3.encoder.embed_positions.A.weight: (199, 32) -> (579, 32)"]
    torch.testing.assert_close(native.vision_pos.weight[:3], model.vision_pos.weight[:3])
    with torch.no_grad():
        ref = native(images, ids, pad)
    torch.testing.assert_close(out.image_tokens, ref.image_tokens)
    torch.testing.assert_close(out.text_tokens[~pad], ref.text_tokens[~pad])
    # Non-square inputs get their own grid.
    with torch.no_grad():
        assert model(torch.randn(1, 3, 320, 224)).grid == (20, 14)


def test_padding_is_honoured():
    model = tiny()
    images, ids, pad = inputs()
    with torch.no_grad():
        base = model(images, ids, pad)
        changed = ids.clone()
        changed[pad] = 9  # other tokens where the mask says padding
        other = model(images, changed, pad)
        # The padded sample alone, without its padding, gives the same valid outputs.
        alone = model(images[1:], ids[1:, :4], None)
    assert torch.equal(base.image_tokens, other.image_tokens)
    assert torch.equal(base.text_tokens[~pad], other.text_tokens[~pad])
    torch.testing.assert_close(base.image_tokens[1:], alone.image_tokens)
    torch.testing.assert_close(base.text_tokens[1:, :4], alone.text_tokens)
    # Without the mask the padded tokens do change the result.
    with torch.no_grad():
        unmasked = model(images, ids, None)
    assert not torch.allclose(unmasked.image_tokens[1], base.image_tokens[1])


def test_every_parameter_gets_a_gradient_in_joint_mode():
    model = tiny().train()
    images, ids, pad = inputs()
    out = model(images, ids, pad)
    loss = out.image_tokens.square().mean() + out.text_tokens[~pad].square().mean()
    loss = loss + out.patch_map().mean() + out.cls.mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_text_features_contract():
    model = tiny()
    images, ids, pad = inputs()
    with torch.no_grad():
        feats = model(images, ids, pad).text_features(pad)
    assert feats.tokens.shape == (2, 7, 32) and feats.sentence.shape == (2, 32)
    assert torch.equal(feats.sentence, feats.tokens[:, 0])


# --- tokenizer -----------------------------------------------------------------------

SENTENCES = [
    "the man on the left holding a red umbrella",
    "a woman in a blue shirt",
    "two dogs running on the grass",
    "the car behind the white truck",
    "girl with long hair sitting on a bench",
    "small boat near the shore",
] * 5


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    import sentencepiece as spm

    prefix = tmp_path_factory.mktemp("spm") / "beit3"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_prefix=str(prefix), vocab_size=40,
        hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2,
    )
    return prefix.with_suffix(".model")


def test_tokenizer_specials_and_offsets(spm_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    tok = Beit3Tokenizer(spm_path, max_length=24)
    ids, pad = tok.encode(["The man, on the LEFT!", "a woman ж"])
    pieces = sp.EncodeAsIds("the man on the left")
    n = len(pieces)
    assert 0 < n < 22
    assert ids[0, 0] == 0 and ids[0, n + 1] == 2  # <s> ... </s>
    assert ids[0, 1 : n + 1].tolist() == [i + 1 for i in pieces]  # fairseq offset
    assert (ids[0, n + 2 :] == 1).all()  # <pad>
    assert pad[0].tolist() == [False] * (n + 2) + [True] * (24 - n - 2)
    assert 3 in ids[1].tolist()  # an unseen character maps to <unk> = 3
    assert int(ids.max()) < tok.vocab_size


def test_tokenizer_truncates_to_max_length(spm_path):
    tok = Beit3Tokenizer(spm_path, max_length=5)
    ids, pad = tok.encode([SENTENCES[0]])
    assert ids.shape == (1, 5) and not pad.any()
    assert ids[0, 0] == 0 and ids[0, -1] == 2
    assert ids[0, 1:4].tolist() == tok.piece_ids(SENTENCES[0])[:3]


def test_tokenizer_save_load_and_bad_files(spm_path, tmp_path):
    tok = Beit3Tokenizer(spm_path, max_length=20, clean=False)
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "beit3.spm").read_bytes() == spm_path.read_bytes()
    again = Beit3Tokenizer.load(tmp_path / "tok")
    assert (again.max_length, again.clean) == (20, False)
    assert torch.equal(again.encode(SENTENCES[:3])[0], tok.encode(SENTENCES[:3])[0])

    import sentencepiece as spm

    prefix = tmp_path / "other"  # ids of another layout: no <s>/</s> control pieces
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_prefix=str(prefix), vocab_size=30,
        hard_vocab_limit=False,
        bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
    )
    with pytest.raises(CheckpointError, match="not an XLM-R style"):
        Beit3Tokenizer(prefix.with_suffix(".model"))
    (tmp_path / "junk.spm").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a sentencepiece model"):
        Beit3Tokenizer(tmp_path / "junk.spm")
    with pytest.raises(CheckpointError, match="settings not found"):
        Beit3Tokenizer.load(tmp_path)
    settings = next(p for p in (tmp_path / "tok").iterdir() if p.suffix == ".json")
    for text, message in [(b"\xff", "malformed tokenizer settings"),
                          (b"[1]", "malformed tokenizer settings"),
                          (b'{"kind": "beit3"}', "malformed tokenizer settings .*max_length"),
                          (b'{"kind": "beit3", "max_length": 7.9, "clean": true}',
                           "max_length=7.9: expected a positive integer")]:
        settings.write_bytes(text)
        with pytest.raises(CheckpointError, match=message):
            Beit3Tokenizer.load(tmp_path / "tok")


def test_tokenizer_feeds_the_encoder(spm_path):
    tok = Beit3Tokenizer(spm_path, max_length=10)
    model = tiny()
    ids, pad = tok.encode(SENTENCES[:2])
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32), ids, pad)
    assert out.text_tokens.shape == (2, 10, 32) and torch.isfinite(out.text_tokens).all()
