"""`refseg data`: counts per split, image checks, exit codes."""

from __future__ import annotations

import json

import pytest
from builders import IMAGES, tiny_benchmark, write_images

from refseg.cli import main


def _run(capsys, *argv):
    code = main(["data", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table(tmp_path, capsys):
    data = tiny_benchmark("grefcoco", tmp_path)
    code, out, _ = _run(capsys, "--format", "grefcoco", "--data", str(data))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"grefcoco: {data / 'grefs(unc).json'}"
    header = ["split", "images", "refs", "sentences", "no-target", "multi-target", "instances"]
    assert lines[1].split() == header
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:8]}
    # train: refs 1 (2 sentences, anns 11+12) and 2 (no-target), both on image 1.
    assert rows["train"] == ["1", "2", "3", "1", "2", "2"]
    assert rows["val"] == ["2", "2", "2", "0", "0", "2"]
    assert rows["all"] == ["3", "6", "7", "2", "2", "4"]
    assert "val: 1 target sentences whose referents are all crowd (skipped)" in out
    assert "testA: 1 refs without sentences (skipped)" in out


def test_json(tmp_path, capsys):
    data = tiny_benchmark("refzom", tmp_path)
    code, out, _ = _run(capsys, "--format", "refzom", "--data", str(data), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "refzom" and report["refs_file"].endswith("refs(final).p")
    assert list(report["splits"]) == ["train", "test", "all"]
    test = report["splits"]["test"]
    assert test == {
        "images": 1,
        "refs": 3,
        "sentences": 4,
        "no_target": 2,
        "multi_target": 1,
        "instances": 2,
        "skipped": {"refs_without_sentences": 0, "crowd_only_sentences": 0},
    }
    assert "images" not in report


def test_images_all_good(tmp_path, capsys):
    data = tiny_benchmark("refcoco", tmp_path / "refcoco")
    images = write_images(tmp_path / "train2014", IMAGES)
    code, out, _ = _run(capsys, "--format", "refcoco", "--data", str(data), "--images", str(images))
    assert code == 0
    assert out.splitlines()[-1] == f"images: 3 checked in {images}, all open"


def test_images_with_problems_are_all_reported(tmp_path, capsys):
    data = tiny_benchmark("refcoco", tmp_path / "refcoco")
    images = write_images(tmp_path / "train2014", IMAGES[:1])  # image 2 and 3 missing
    (images / IMAGES[2]["file_name"]).write_text("not a picture")
    write_images(tmp_path / "wrong", [dict(IMAGES[1], height=5)])  # 5 rows, 16 expected
    (tmp_path / "wrong" / IMAGES[1]["file_name"]).rename(images / IMAGES[1]["file_name"])
    argv = ["--format", "refcoco", "--data", str(data), "--images", str(images)]
    code, out, _ = _run(capsys, *argv, "--json")
    assert code == 1
    report = json.loads(out)["images"]
    assert report["checked"] == 3
    problems = {p["image_id"]: p["problem"] for p in report["problems"]}
    assert set(problems) == {2, 3}
    assert "is 5x16 (h x w, as displayed), annotations say 16x16" in problems[2]
    assert "not an image file" in problems[3]
    code, out, _ = _run(capsys, *argv)
    assert code == 1
    assert out.splitlines()[-1] == f"images: 3 checked in {images}, 2 with problems"
    assert sum(line.startswith("image ") for line in out.splitlines()) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "refcoco"], "no refs(*).p file (found: grefs(unc).json, instances.json)"),
        (["--format", "grefcoco", "--split-by", "umd"], "no grefs(umd).json or grefs(umd).p"),
        (["--format", "grefcoco", "--images", "/nonexistent/imgs"], "no such image folder"),
    ],
)
def test_user_errors_exit_2(tmp_path, capsys, argv, message):
    data = tiny_benchmark("grefcoco", tmp_path)
    code, out, err = _run(capsys, *argv, "--data", str(data))
    assert code == 2 and out == ""
    assert err.startswith("refseg data: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
