"""`refseg.load(...).predict(...)` and `refseg predict`: inputs of every kind, thresholds,
bad inputs, the JSON and overlay outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from engine_tinyfilm import TinyFilmConfig, WordTokenizer, build_model, register
from PIL import Image

import refseg
from refseg.cli import _plain_warnings, main
from refseg.config import DataConfig, RunConfig
from refseg.data.masks import rle_to_mask
from refseg.engine import checkpoint
from refseg.errors import CheckpointError, ConfigError, DataError
from refseg.modeling.base import Thresholds
from refseg.visualize import NO_TARGET_RED

SENTENCE = "the red square"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        register(mp)
        torch.manual_seed(0)
        config = RunConfig(
            method="tinyfilm",
            model=TinyFilmConfig(dropout=0.0, thresholds=Thresholds(no_target=0.7, mask=0.5)),
            data=DataConfig(image_size=32),
        )
        tokenizer = WordTokenizer.build(["the red square"], max_length=6)  # 4 words
        model = build_model(config.model, tokenizer)
        with torch.no_grad():
            model.mask_head.bias.fill_(0.05)  # some foreground at the default thresholds
        path = tmp_path_factory.mktemp("ckpt") / "ckpt"
        checkpoint.write_checkpoint(path, model=model, config=config, tokenizer=tokenizer)
        yield path


@pytest.fixture
def predictor(ckpt, monkeypatch):
    register(monkeypatch)
    return refseg.load(ckpt, device="cpu")


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def same(a, b):
    assert a.no_target == b.no_target and a.no_target_score == pytest.approx(b.no_target_score)
    assert np.array_equal(a.mask, b.mask)
    assert len(a.instances) == len(b.instances)


def test_path_pil_and_array_inputs_agree(predictor, picture, tmp_path):
    Image.fromarray(picture).save(tmp_path / "a.png")
    by_path = predictor.predict(tmp_path / "a.png", SENTENCE)
    assert by_path.mask.shape == (20, 30) and by_path.mask.dtype == bool
    assert by_path.mask.any()  # the fixture model predicts some foreground
    same(by_path, predictor.predict(str(tmp_path / "a.png"), SENTENCE))
    same(by_path, predictor.predict(Image.fromarray(picture), SENTENCE))
    same(by_path, predictor.predict(picture, SENTENCE))
    for inst in by_path.instances:
        assert inst.mask.shape == (20, 30) and len(inst.box) == 4 and 0 <= inst.score <= 1


def test_exif_rotated_image_gives_masks_in_displayed_orientation(predictor, picture, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20x30, displayed rotated by 90 degrees: 30 high, 20 wide
    Image.fromarray(picture).save(tmp_path / "r.jpg", exif=exif, quality=95)
    result = predictor.predict(tmp_path / "r.jpg", SENTENCE)
    assert result.mask.shape == (30, 20)
    displayed = np.asarray(Image.open(tmp_path / "r.jpg").transpose(Image.Transpose.ROTATE_270))
    same(result, predictor.predict(displayed, SENTENCE))


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "RGBA", "P", "L"])
def test_other_pixel_formats_are_handled(predictor, picture, tmp_path, mode):
    image = Image.fromarray(picture)
    if mode == "I;16":
        image = Image.fromarray((picture[..., 0].astype(np.uint16) * 257))
        assert image.mode.startswith("I;16")
    else:
        image = image.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    result = predictor.predict(path, SENTENCE)
    assert result.mask.shape == (20, 30)
    # the RGB picture each mode stands for: 16-bit grey scaled to 8 bits (not clipped to
    # white), grey repeated over three channels, alpha dropped, the palette looked up
    if mode == "I;16":
        expected = np.repeat(picture[..., :1], 3, axis=2)
    elif mode == "L":
        expected = np.repeat(np.asarray(image)[..., None], 3, axis=2)
    elif mode == "RGBA":
        expected = picture
    else:  # CMYK (lossy JPEG) and P: Pillow's conversion of what the file holds
        expected = np.asarray(Image.open(path).convert("RGB"))
    same(result, predictor.predict(expected, SENTENCE))
    assert not np.array_equal(result.mask, predictor.predict(255 - expected, SENTENCE).mask)


def test_corrupt_and_missing_images_name_the_file(predictor, picture, tmp_path):
    Image.fromarray(picture).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.png"):
        predictor.predict(tmp_path / "cut.png", SENTENCE)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match="text.png"):
        predictor.predict(tmp_path / "text.png", SENTENCE)
    with pytest.raises(DataError, match="nope.png: file not found"):
        predictor.predict(tmp_path / "nope.png", SENTENCE)


@pytest.mark.parametrize("sentence", ["", "   \t\n"])
def test_empty_sentence_is_an_error(predictor, picture, sentence):
    with pytest.raises(DataError, match="empty"):
        predictor.predict(picture, sentence)


def test_over_long_sentence_is_truncated_with_a_warning(predictor, picture):
    long = "the red square " * 4  # 12 words, the tokenizer keeps 4 (and [CLS], [SEP])
    with pytest.warns(UserWarning, match="longer than 6 tokens, truncated"):
        result = predictor.predict(picture, long)
    same(result, predictor.predict(picture, "the red square the"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predictor.predict(picture, SENTENCE)  # short: no warning


def test_saved_thresholds_and_per_call_overrides(predictor, picture):
    assert predictor.thresholds == Thresholds(no_target=0.7, mask=0.5)
    base = predictor.predict(picture, SENTENCE)
    assert base.no_target == (base.no_target_score > 0.7)
    forced = predictor.predict(picture, SENTENCE, thresholds={"no_target": 0.0})
    assert forced.no_target and not forced.mask.any() and forced.instances == []
    kept = predictor.predict(picture, SENTENCE, thresholds={"no_target": 1.0, "mask": 0.0})
    assert not kept.no_target and kept.mask.all()
    full = predictor.predict(picture, SENTENCE, thresholds=Thresholds(no_target=1.0, instance=1.0))
    assert full.instances == [] and full.mask.any()
    with pytest.raises(ConfigError, match="unknown keys"):
        predictor.predict(picture, SENTENCE, thresholds={"nt": 0.5})
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        predictor.predict(picture, SENTENCE, thresholds={"mask": 2})


def test_predict_batch_equals_single_predictions(predictor, picture):
    other = picture[::-1].copy()
    results = predictor.predict_batch([picture, other, picture[:10]], SENTENCE, batch_size=2)
    for image, result in zip([picture, other, picture[:10]], results):
        same(result, predictor.predict(image, SENTENCE))
    two = predictor.predict_batch([picture, other], [SENTENCE, "square"])
    same(two[1], predictor.predict(other, "square"))
    with pytest.raises(DataError, match="2 images but 1 sentences"):
        predictor.predict_batch([picture, other], [SENTENCE])
    with pytest.raises(DataError, match="must be lists, got list and NoneType"):
        predictor.predict_batch([picture], None)
    with pytest.raises(DataError, match="must be lists, got NoneType"):
        predictor.predict_batch(None, SENTENCE)
    with pytest.raises(DataError, match="sentence 1: empty or whitespace-only"):
        predictor.predict_batch([picture, other], [SENTENCE, " "])


def test_thresholds_are_range_checked_in_every_form(predictor, picture):
    for bad in (Thresholds(no_target=5.0), Thresholds(mask=float("nan")),
                {"instance": -0.1}, {"mask": True}, {"no_target": "0.3"}, {"mask": 10**400}):
        with pytest.raises(ConfigError, match=r"thresholds\.\w+=.*: expected a number in \[0, 1\]"):
            predictor.predict(picture, SENTENCE, thresholds=bad)
    numpy_float = predictor.predict(picture, SENTENCE, thresholds={"mask": np.float32(0.25)})
    same(numpy_float, predictor.predict(picture, SENTENCE, thresholds={"mask": 0.25}))


@pytest.mark.parametrize("bad", [0.7, "mask", [("mask", 0.3)], ["mask"]])
def test_thresholds_that_are_not_a_dict_are_an_error(predictor, picture, bad):
    with pytest.raises(ConfigError, match=r"thresholds: expected a dict such as .* got "):
        predictor.predict(picture, SENTENCE, thresholds=bad)


def test_predict_batch_refuses_a_single_image_and_bad_batch_sizes(predictor, picture, tmp_path):
    Image.fromarray(picture).save(tmp_path / "a.png")
    for one in (picture, tmp_path / "a.png", str(tmp_path / "a.png"), Image.fromarray(picture)):
        with pytest.raises(DataError, match="images must be a list of images, got one"):
            predictor.predict_batch(one, SENTENCE)
    for size in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
            predictor.predict_batch([picture], SENTENCE, batch_size=size)
    from_iterator = predictor.predict_batch(iter([picture, picture]), iter([SENTENCE, "square"]))
    same(from_iterator[1], predictor.predict(picture, "square"))
    with pytest.raises(DataError, match=r"image 0 \(Tensor\): expected a path, a PIL image or a "
                                        r"numpy array, got Tensor"):
        predictor.predict(torch.zeros(3, 8, 8), SENTENCE)


def test_a_truncated_checkpoint_is_a_clear_error(ckpt, tmp_path, monkeypatch):
    import shutil

    register(monkeypatch)
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    (bad / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes()[:64])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        refseg.load(bad, device="cpu")


# --- refseg predict --------------------------------------------------------------------


def test_cli_predict_folder_writes_json_and_overlays_and_reports_bad_files(
    ckpt, predictor, picture, tmp_path, capsys
):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(picture).save(folder / "a.png")
    Image.fromarray(picture[:, ::-1]).save(folder / "b.jpg")
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (folder / "notes.txt").write_text("not an image, not listed")
    out = tmp_path / "out"
    code = main(["predict", str(ckpt), "--image", str(folder), "--text", SENTENCE,
                 "--out", str(out), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "c.png" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]
    record = json.loads((out / "a.json").read_text())
    direct = predictor.predict(folder / "a.png", SENTENCE)
    assert record["no_target"] == direct.no_target and record["sentence"] == SENTENCE
    assert record["no_target_score"] == pytest.approx(direct.no_target_score)
    assert np.array_equal(rle_to_mask(record["mask"]), direct.mask)
    assert len(record["instances"]) == len(direct.instances)
    for inst, mine in zip(record["instances"], direct.instances):
        assert np.array_equal(rle_to_mask(inst["mask"]), mine.mask)
        assert inst["box"] == pytest.approx(list(mine.box))
        assert inst["score"] == pytest.approx(mine.score)
    overlay = Image.open(out / "a.png")
    # enlarged by an integer factor to at least 384 wide, with a header above
    assert overlay.width % 30 == 0 and overlay.width >= 384
    assert overlay.height > overlay.width * 20 // 30


def test_cli_predict_overlay_shows_a_no_target_banner(ckpt, picture, tmp_path, monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    for value, banner in (("0", True), ("1", False)):
        out = tmp_path / f"out{value}"
        assert main(["predict", str(ckpt), "--image", str(tmp_path / "a.png"), "--text", SENTENCE,
                     "--out", str(out), "--threshold", f"no_target={value}",
                     "--device", "cpu"]) == 0
        top_left = Image.open(out / "a.png").convert("RGB").getpixel((0, 0))
        assert (top_left == NO_TARGET_RED) == banner
        assert json.loads((out / "a.json").read_text())["no_target"] == banner


@pytest.mark.parametrize("text", ["", "  "])
def test_cli_predict_empty_text_is_an_error(ckpt, picture, tmp_path, capsys, monkeypatch, text):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    code = main(["predict", str(ckpt), "--image", str(tmp_path / "a.png"), "--text", text,
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "sentence --text: empty or whitespace-only" in capsys.readouterr().err


def test_cli_predict_text_of_undecodable_bytes_is_an_error(ckpt, picture, tmp_path, capsys,
                                                           monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    text = b"the red \xff square".decode("utf-8", "surrogateescape")  # as sys.argv holds it
    code = main(["predict", str(ckpt), "--image", str(tmp_path / "a.png"), "--text", text,
                 "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2 and "sentence --text: not valid text" in capsys.readouterr().err


def test_cli_predict_text_without_tokens_names_the_option(ckpt, picture, tmp_path, capsys,
                                                          monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    code = main(["predict", str(ckpt), "--image", str(tmp_path), "--text", "\u200b",
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "sentence --text: no tokens left after normalisation" in err
    assert not (tmp_path / "o").exists()


def test_cli_predict_single_corrupt_image_is_an_error(ckpt, tmp_path, capsys, monkeypatch):
    register(monkeypatch)
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code = main(["predict", str(ckpt), "--image", str(tmp_path / "x.jpg"), "--text", SENTENCE,
                 "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert code == 2 and "x.jpg" in capsys.readouterr().err
    # ... before the checkpoint is read: a damaged checkpoint is not what is reported.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    code = main(["predict", str(tmp_path / "broken"), "--image", str(tmp_path / "x.jpg"),
                 "--text", SENTENCE, "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "x.jpg" in err and "config.json" not in err
    assert not (tmp_path / "o").exists()


def test_cli_predict_rejects_empty_folders_clashing_names_and_bad_thresholds(
    ckpt, picture, tmp_path, capsys, monkeypatch
):
    register(monkeypatch)
    (tmp_path / "empty").mkdir()
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.fromarray(picture).save(clash / "a.png")
    Image.fromarray(picture).save(clash / "a.jpg")
    cases = [
        (["--image", str(tmp_path / "empty")], "no image files in this folder"),
        (["--image", str(clash)], "a.jpg and a.png would write the same a.json"),
        (["--image", str(tmp_path / "missing.png")], "no such image or folder"),
        (["--image", str(clash / "a.png"), "--threshold", "no_target"], "expected KEY=NUMBER"),
        (["--image", str(clash / "a.png"), "--threshold", "nt=0.5"], "unknown keys ['nt']"),
    ]
    for extra, message in cases:
        out = str(tmp_path / "o")
        code = main(["predict", str(ckpt), "--text", SENTENCE, "--out", out, *extra])
        assert code == 2 and message in capsys.readouterr().err


def test_cli_predict_never_overwrites_its_input_images(ckpt, picture, tmp_path, capsys,
                                                       monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    args = ["predict", str(ckpt), "--text", SENTENCE, "--device", "cpu", "--out", str(tmp_path)]
    for image in (tmp_path, tmp_path / "a.png"):  # the folder, or the image in its own folder
        assert main([*args, "--image", str(image)]) == 2
        assert "the output would overwrite the input image" in capsys.readouterr().err
    assert (tmp_path / "a.png").read_bytes() == before and not (tmp_path / "a.json").exists()
    assert main([*args, "--image", str(tmp_path / "a.png"), "--no-overlay"]) == 0
    assert (tmp_path / "a.png").read_bytes() == before and (tmp_path / "a.json").is_file()
    upper = tmp_path / "upper"  # B.PNG and the overlay B.png are one file on macOS / Windows
    upper.mkdir()
    Image.fromarray(picture).save(upper / "B.PNG", format="PNG")
    assert main([*args[:-1], str(upper), "--image", str(upper)]) == 2
    assert "B.png: the output would overwrite the input image" in capsys.readouterr().err


def test_cli_predict_checks_batch_size_and_out(ckpt, picture, tmp_path, capsys, monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("")
    args = ["predict", str(ckpt), "--text", SENTENCE, "--image", str(tmp_path / "a.png")]
    for size in ("0", "-1"):
        with pytest.raises(SystemExit):
            main([*args, "--out", str(tmp_path / "o"), "--batch-size", size])
        assert "expected a positive integer" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "file")]) == 2
    assert "file: exists and is not a folder" in capsys.readouterr().err


def test_load_takes_the_device_by_position(ckpt, monkeypatch):
    register(monkeypatch)
    assert refseg.load(ckpt, "cpu").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="device=mps: refseg runs on cpu or cuda"):
        refseg.load(ckpt, "mps")
    with pytest.raises(ConfigError, match="device=gpu: not a device"):
        refseg.load(ckpt, "gpu")


def test_overlays_show_the_merged_mask_beyond_the_instances():
    from refseg.data.types import Instance, RefResult
    from refseg.visualize import MERGED_ONLY_WHITE, PALETTE, overlay

    image = np.zeros((400, 400, 3), np.uint8)  # wide enough not to be enlarged
    inst = np.zeros((400, 400), bool)
    inst[100:200, 100:200] = True
    merged = inst.copy()
    merged[300:310, 300:310] = True  # merged-mask pixels no instance covers
    result = RefResult(False, 0.1, merged, [Instance((100, 100, 200, 200), 0.9, inst)])
    picture = np.asarray(overlay(image, result, "x"))
    body = picture[picture.shape[0] - 400:]  # below the header
    assert tuple(body[305, 305]) == tuple(round(v / 2) for v in MERGED_ONLY_WHITE)
    assert tuple(body[170, 170]) == tuple(round(v / 2) for v in PALETTE[0])  # inside the box
    assert not body[250, 250].any()
    nothing = np.asarray(overlay(image, RefResult(True, 0.9, merged, []), "x"))
    assert not nothing[nothing.shape[0] - 400:][305, 305].any()  # no-target: nothing tinted


def test_overlays_of_tall_narrow_pictures_stay_small(predictor):
    from refseg.visualize import MAX_ZOOMED_SIDE, overlay

    tall = np.zeros((400, 2, 3), np.uint8)
    picture = overlay(tall, predictor.predict(tall, SENTENCE), SENTENCE)
    assert picture.height <= MAX_ZOOMED_SIDE + 200 and picture.width < 400


def test_the_header_of_a_narrow_picture_is_wide_enough_for_its_text():
    from refseg.data.types import RefResult
    from refseg.visualize import MIN_WIDTH, _font, _wrap, overlay

    tall = np.full((3000, 20, 3), 200, np.uint8)  # too tall to be enlarged: stays 20 wide
    sentence = "the second small square from the left " + "x" * 200
    picture = overlay(tall, RefResult(True, 0.93, np.zeros((3000, 20), bool), []), sentence)
    assert picture.width == MIN_WIDTH and picture.height > 3000
    bottom = np.asarray(picture)[-1]
    left = (MIN_WIDTH - 20) // 2
    assert (bottom[left:left + 20] == 200).all() and (bottom[:left] == 255).all()
    font = _font(12)
    lines = _wrap(sentence, font, MIN_WIDTH - 12)
    assert len(lines) == 3 and lines[-1].endswith(" ...")
    assert all(font.getlength(line) <= MIN_WIDTH - 12 for line in lines[:-1])
    cut = _wrap("x" * 12, font, 50)  # one word wider than a line is cut across lines
    assert len(cut) > 1 and "".join(cut) == "x" * 12
    assert all(font.getlength(line) <= 50 for line in cut)


def test_an_override_the_model_does_not_read_warns():
    from refseg.methods.deris.model import Deris
    from refseg.predictor import merge_thresholds

    assert "no_target" not in Deris.threshold_keys  # no-target iff no instance passes
    with pytest.warns(UserWarning, match="does not use the 'no_target' threshold"):
        chosen = merge_thresholds(Thresholds(), {"no_target": 0.2, "mask": 0.4},
                                  Deris.threshold_keys)
    assert chosen == Thresholds(no_target=0.2, mask=0.4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merge_thresholds(Thresholds(), {"no_target": 0.2}, ("no_target", "instance", "mask"))
        with pytest.raises(ConfigError, match="unknown keys"):  # an error, not also a warning
            merge_thresholds(Thresholds(), {"nt": 0.2}, Deris.threshold_keys)


def test_cli_warnings_are_one_line_and_the_format_is_given_back(ckpt, picture, tmp_path,
                                                                capsys, monkeypatch):
    register(monkeypatch)
    Image.fromarray(picture).save(tmp_path / "a.png")
    before = warnings.formatwarning
    args = ["predict", str(ckpt), "--text", SENTENCE, "--image", str(tmp_path / "a.png"),
            "--out", str(tmp_path / "o"), "--no-overlay", "--threshold", "no_target=0.5"]
    from engine_tinyfilm import TinyFilm

    monkeypatch.setattr(TinyFilm, "threshold_keys", ("instance", "mask"))  # as DeRIS's
    with pytest.warns(UserWarning, match="does not use the 'no_target' threshold"):
        assert main(args) == 0
    with _plain_warnings("predict"):
        line = warnings.formatwarning("thresholds: ...", UserWarning, "x.py", 3)
    assert line == "refseg predict: warning: thresholds: ...\n"
    assert warnings.formatwarning is before


def test_folders_list_every_image_suffix_pillow_reads(tmp_path):
    from refseg.commands.predict import list_images

    for name in ("a.avif", "b.JPG", "c.tiff", "notes.txt", "d.webp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.avif", "b.JPG", "c.tiff", "d.webp"]
    (tmp_path / "e.png").symlink_to(tmp_path / "gone.png")  # broken: listed, then reported
    (tmp_path / "sub.png").mkdir()  # a folder with an image's name is not an image
    assert [p.name for p in list_images(tmp_path)][-2:] == ["d.webp", "e.png"]
