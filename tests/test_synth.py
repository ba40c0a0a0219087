"""The synthetic benchmark: meaning of the grammar on hand-built scenes, unambiguity and
re-resolution of every emitted sentence, mix of kinds, exact masks, determinism, the
four layouts read back by refseg's readers and by `refseg data`."""

from __future__ import annotations

import json
import pickle
import random
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmark_scripts import load_script

from refseg.cli import main
from refseg.data.load import load_split
from refseg.data.synth import REFS_FILES, SCENES_FILE, assign_splits, generate, read_scenes
from refseg.data.synth import layouts as synth_layouts
from refseg.data.synth.expressions import (Expression, Phrase, Sampler, Thing, no_target_kind,
                                           parse, realize, resolve)
from refseg.data.synth.scenes import COLORS
from refseg.errors import ConfigError

S = 100  # side of the hand-built scenes: MARGIN is 8 px, BAND 10 px


def sq(color, x, y, size="big", shape="square"):
    return Thing(shape, color, size, x, y)


# --------------------------------------------------------------------------- meaning


def test_attributes_counts_and_sets():
    things = [sq("red", 10, 10), sq("red", 80, 20, "small"), sq("blue", 50, 50),
              Thing("circle", "red", "big", 30, 80), Thing("circle", "green", "small", 70, 80)]
    assert resolve(parse("the blue square"), things, S) == {2}
    assert resolve(parse("the small red square"), things, S) == {1}
    assert resolve(parse("the red square"), things, S) is None  # two red squares
    assert resolve(parse("the two red squares"), things, S) == {0, 1}
    assert resolve(parse("the red squares"), things, S) == {0, 1}
    assert resolve(parse("all circles"), things, S) == {3, 4}
    assert resolve(parse("every red shape"), things, S) == {0, 1, 3}
    assert resolve(parse("three squares"), things, S) == {0, 1, 2}
    # no target: near misses and counts that do not match
    assert resolve(parse("the green square"), things, S) == frozenset()
    assert resolve(parse("the big green circle"), things, S) == frozenset()
    assert resolve(parse("the three red squares"), things, S) == frozenset()
    assert resolve(parse("the hexagon"), things, S) == frozenset()
    # ill-formed for this scene: never emitted
    assert resolve(parse("the two squares"), things, S) is None  # which two of three?
    assert resolve(parse("all blue squares"), things, S) is None  # "all" of one


def test_no_target_kinds():
    things = [sq("red", 20, 20), sq("red", 80, 20, "small"),
              Thing("circle", "green", "big", 50, 80)]

    def kind(sentence):
        assert resolve(parse(sentence), things, S) == frozenset()  # each refers to nothing
        return no_target_kind(parse(sentence), things)

    assert kind("the red hexagon") == "absent shape"
    assert kind("the blue square") == "absent colour"
    assert kind("the green square above the yellow circle") == "absent colour"  # landmark
    assert kind("the hexagon above the blue circle") == "absent shape"  # shape checked first
    assert kind("the green square") == "binding"  # green and square exist, not together
    assert kind("the small circle") == "binding"
    assert kind("the three red squares") == "count or position"
    assert kind("the circle at the top") == "count or position"
    assert kind("the third red square from the left") == "count or position"


def test_absolute_positions_and_ordinals():
    things = [Thing("triangle", "red", "big", 20, 35), Thing("triangle", "blue", "big", 45, 20),
              Thing("triangle", "red", "small", 80, 85), Thing("circle", "red", "big", 25, 97)]
    assert resolve(parse("the leftmost triangle"), things, S) == {0}
    assert resolve(parse("the rightmost red shape"), things, S) == {2}
    assert resolve(parse("the top triangle"), things, S) == {1}
    assert resolve(parse("the lowest object"), things, S) == {3}
    assert resolve(parse("the second triangle from the left"), things, S) == {1}
    assert resolve(parse("the third triangle from the top"), things, S) == {2}
    assert resolve(parse("the second red shape from the bottom"), things, S) == {2}
    assert resolve(parse("the triangle at the bottom"), things, S) == {2}
    assert resolve(parse("the objects at the bottom"), things, S) == {2, 3}
    assert resolve(parse("the circle on the right"), things, S) == frozenset()
    assert resolve(parse("the third circle from the left"), things, S) == frozenset()
    # x 20 vs 25: closer than the margin, "leftmost" would be a guess
    assert resolve(parse("the leftmost red shape"), things, S) is None
    # the blue triangle sits 5 px from the middle line: "on the left" is unclear
    assert resolve(parse("the triangles on the left"), things, S) is None
    assert resolve(parse("the leftmost circle"), things, S) is None  # one circle


def test_relations():
    blue = sq("blue", 50, 50)
    things = [blue, Thing("circle", "red", "big", 52, 20),  # straight above
              Thing("circle", "red", "big", 90, 55),  # right
              Thing("circle", "green", "big", 20, 80)]  # down-left, more sideways: neither
    assert resolve(parse("the circle above the blue square"), things, S) == {1}
    assert resolve(parse("the circle to the right of the blue square"), things, S) == {2}
    assert resolve(parse("the circle right of the square"), things, S) == {2}
    assert resolve(parse("the circle left of the blue square"), things, S) is None  # 30 vs 30
    assert resolve(parse("the red circles below the square"), things, S) == frozenset()
    assert resolve(parse("the red circle above the hexagon"), things, S) == frozenset()
    things.append(Thing("circle", "red", "big", 45, 90))  # below, slightly left
    assert resolve(parse("the red circle under the square"), things, S) == {4}


def test_parse_inverts_realize():
    rng = random.Random(0)
    sampler = Sampler([sq("red", 10, 10), sq("red", 80, 20, "small"),
                       Thing("star", "blue", "big", 40, 70), Thing("circle", "red", "big", 80, 80)],
                      S, rng)
    exprs = [sampler.single(i) for i in range(4)] + [sampler.multi(set()), sampler.no_target()]
    exprs += [Expression("count", Phrase(color="red"), plural=True, number=3),
              Expression("half", Phrase("star", size="small"), plural=True, direction="top"),
              Expression("relation", Phrase(), plural=True, direction="bottom",
                         landmark=Phrase("star", "blue", "big"))]
    for expr in exprs:
        assert expr is not None
        for _ in range(10):
            assert parse(realize(expr, rng)) == expr
    with pytest.raises(ValueError):
        parse("the red square please")


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> dict[str, Path]:
    """Each layout generated once: 40 images of 96 px."""
    root = tmp_path_factory.mktemp("synth")
    return {layout: generate(root / layout, layout=layout, images=40, size=96, seed=3)
            for layout in REFS_FILES}


def _refs(out: Path, layout: str) -> list[dict]:
    path = out / REFS_FILES[layout]
    if path.suffix == ".json":
        return json.loads(path.read_text())
    from refseg.io.safe_pickle import load_pickle

    return load_pickle(path)


def _targets(ref: dict, layout: str) -> set[int]:
    if layout == "refzom" and ref["source"] == "zero":
        return set()
    ann = ref["ann_id"] if isinstance(ref["ann_id"], list) else [ref["ann_id"]]
    return set() if ann == [-1] else set(ann)


def _sentences(bench, layout):
    """(image_id, sentence, targets) for every sentence of a layout."""
    for ref in _refs(bench[layout], layout):
        for s in ref["sentences"]:
            targets = set() if s.get("exist", True) is False else _targets(ref, layout)
            yield ref["image_id"], s["sent"], targets


@pytest.mark.parametrize("layout", sorted(REFS_FILES))
def test_every_sentence_resolves_to_its_referents(bench, layout):
    """Re-read the scene description from disk, parse each sentence, resolve it: exactly
    the listed annotations, never an ambiguous sentence."""
    scenes = read_scenes(bench[layout])
    count = 0
    for image_id, sent, targets in _sentences(bench, layout):
        ann_ids = list(scenes[image_id])
        expr = parse(sent)
        got = resolve(expr, [scenes[image_id][a] for a in ann_ids], 96)
        assert got is not None, sent
        assert {ann_ids[i] for i in got} == targets, (image_id, sent)
        if targets and expr.plural:
            assert len(targets) >= 2, sent
        count += 1
    assert count >= 40 * 4


def test_share_of_single_multi_no_target(bench):
    for layout in ("grefcoco", "refzom"):
        kinds = Counter("none" if not t else "single" if len(t) == 1 else "multi"
                        for _, _, t in _sentences(bench, layout))
        n = sum(kinds.values())
        assert n == 40 * 6
        assert abs(kinds["single"] / n - 0.6) < 0.03
        assert abs(kinds["multi"] / n - 0.3) < 0.03
        assert abs(kinds["none"] / n - 0.1) < 0.03
    refzom = Counter(r["source"] for r in _refs(bench["refzom"], "refzom"))
    assert set(refzom) == {"zero", "one", "many"}
    assert all(len(t) == 1 for _, _, t in _sentences(bench, "refcoco"))
    negatives = Counter(bool(t) for _, _, t in _sentences(bench, "rrefcoco"))
    assert 0.2 < negatives[False] / sum(negatives.values()) < 0.45


def test_sentences_of_one_image_point_at_different_things(bench):
    per_image = defaultdict(list)
    for image_id, _, targets in _sentences(bench, "grefcoco"):
        per_image[image_id].append(frozenset(targets))
    varied = [len(set(t)) >= 3 for t in per_image.values()]
    assert sum(varied) >= 0.9 * len(varied)
    texts = [s for _, s, _ in _sentences(bench, "grefcoco")]
    assert len(set(texts)) > 0.5 * len(texts)


def test_record_fields_match_the_published_formats(bench):
    gref = _refs(bench["grefcoco"], "grefcoco")
    keys = {"ref_id", "image_id", "ann_id", "category_id", "split", "sent_ids", "sentences",
            "file_name", "no_target"}
    assert all(set(r) == keys for r in gref)
    assert all(isinstance(r["ann_id"], list) and len(r["category_id"]) == len(r["ann_id"])
               for r in gref)
    assert all((r["ann_id"] == [-1]) == r["no_target"] for r in gref)
    assert {r["split"] for r in gref} == {"train", "val", "testA", "testB"}
    sent = gref[0]["sentences"][0]
    assert set(sent) == {"tokens", "raw", "sent", "sent_id"} and sent["tokens"] == sent["sent"].split()
    ref = _refs(bench["refcoco"], "refcoco")[0]
    assert isinstance(ref["ann_id"], int) and isinstance(ref["category_id"], int)
    assert {r["split"] for r in _refs(bench["refzom"], "refzom")} == {"train", "test"}
    rref = _refs(bench["rrefcoco"], "rrefcoco")
    assert all(isinstance(s["exist"], bool) for r in rref for s in r["sentences"])
    # plain builtins only, pickle protocol 2 (readable by the Python 2 era refer code)
    raw = (bench["refcoco"] / "refs(unc).p").read_bytes()
    assert raw[:2] == b"\x80\x02"
    assert b"numpy" not in raw
    assert pickle.loads(raw) == _refs(bench["refcoco"], "refcoco")
    sent_ids = [s["sent_id"] for r in gref for s in r["sentences"]]
    assert len(sent_ids) == len(set(sent_ids))


def test_masks_are_the_painted_pixels(bench):
    """Decoded segmentations (polygons and RLE both occur) are disjoint, cover exactly
    pixels of their object's colour, and bbox/area agree with them."""
    from PIL import Image

    from refseg.data.masks import rle_to_box, rle_to_mask, segmentation_to_rle

    out = bench["grefcoco"]
    inst = json.loads((out / "instances.json").read_text())
    scenes = json.loads((out / SCENES_FILE).read_text())["scenes"]
    colour = {o["ann_id"]: o["color"] for s in scenes for o in s["objects"]}
    kinds = Counter(type(a["segmentation"]).__name__ for a in inst["annotations"])
    assert kinds["list"] > 0 and kinds["dict"] > 0
    by_image = defaultdict(list)
    for a in inst["annotations"]:
        by_image[a["image_id"]].append(a)
    for img in inst["images"][:12]:
        pixels = np.asarray(Image.open(out / "images" / img["file_name"])).astype(float)
        masks = {}
        for a in by_image[img["id"]]:
            rle = segmentation_to_rle(a["segmentation"], img["height"], img["width"])
            masks[a["id"]] = rle_to_mask(rle)
            x1, y1, x2, y2 = rle_to_box(rle)
            assert a["bbox"] == [x1, y1, x2 - x1, y2 - y1] and a["area"] == masks[a["id"]].sum() > 0
        covered = sum(m.astype(int) for m in masks.values())
        assert covered.max() == 1
        for ann_id, mask in masks.items():
            rgb = COLORS[colour[ann_id]]
            assert np.abs(pixels[mask].mean(0) - rgb).max() < 20
            # the one-pixel ring around the mask is background or another colour
            ring = _dilate(mask) & (covered == 0)
            if ring.any():
                assert np.abs(pixels[ring].mean(0) - rgb).max() > 25


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def test_testA_is_crowded_and_testB_sparse(bench):
    scenes = json.loads((bench["grefcoco"] / SCENES_FILE).read_text())["scenes"]
    counts = defaultdict(list)
    for s in scenes:
        counts[s["split"]].append(len(s["objects"]))
    assert min(counts["testA"]) >= 4 and max(counts["testB"]) <= 4
    assert Counter(assign_splits(1000, 0)) == {"train": 700, "val": 100, "testA": 100,
                                                "testB": 100}


def test_deterministic_bytes(tmp_path, bench):
    again = generate(tmp_path / "again", layout="grefcoco", images=40, size=96, seed=3)
    first = bench["grefcoco"]
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (first / rel).read_bytes() == (again / rel).read_bytes(), rel
    other = generate(tmp_path / "other", layout="grefcoco", images=40, size=96, seed=4)
    assert (other / "grefs(unc).json").read_bytes() != (first / "grefs(unc).json").read_bytes()


def test_interrupted_run_leaves_no_refs_file(tmp_path, monkeypatch):
    out = generate(tmp_path, layout="refcoco", images=4, size=48)
    assert (out / "refs(unc).p").is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("refseg.data.synth.write_refs", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, layout="grefcoco", images=4, size=48)
    assert not (out / "refs(unc).p").exists()  # stale refs of the previous run are gone
    assert not (out / "grefs(unc).json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    generate(tmp_path, layout="grefcoco", images=4, size=48)  # what it left is its own
    assert (out / "grefs(unc).json").is_file()


def test_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="--images 3"):
        generate(tmp_path, images=3)
    with pytest.raises(ConfigError, match="layout"):
        generate(tmp_path, layout="refclef")
    with pytest.raises(ConfigError, match="--size"):
        generate(tmp_path, size=8)
    with pytest.raises(ConfigError, match=r"--size 16385: at most 16384 pixels"):
        generate(tmp_path, size=16385)
    assert not (tmp_path / "images").exists()  # refused before anything is written
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="--out"):
        generate(tmp_path / "file", images=4)
    assert main(["synth", "--out", str(tmp_path), "--images", "2"]) == 2
    with pytest.raises(ConfigError, match="--out is empty"):
        generate("", images=4)


def test_a_benchmark_synth_did_not_write_is_not_overwritten(tmp_path):
    real = tmp_path / "refcoco"
    real.mkdir()
    for name in ("refs(unc).p", "refs(google).p", "instances.json"):
        (real / name).write_text("the user's own")
    with pytest.raises(ConfigError, match=r"holds instances\.json, refs\(google\)\.p, "
                                          r"refs\(unc\)\.p that refseg synth did not write"):
        generate(real, layout="refcoco", images=4, size=48)
    assert all((real / n).read_text() == "the user's own"
               for n in ("refs(unc).p", "refs(google).p", "instances.json"))
    coco = tmp_path / "coco"  # annotations alone, the refs file kept elsewhere
    coco.mkdir()
    (coco / "instances.json").write_text("the user's own")
    with pytest.raises(ConfigError, match=r"holds instances\.json that refseg synth did not"):
        generate(coco, layout="refcoco", images=4, size=48)
    assert (coco / "instances.json").read_text() == "the user's own"
    again = generate(tmp_path / "mine", layout="refcoco", images=4, size=48)
    generate(again, layout="grefcoco", images=4, size=48)  # its own output: rewritten
    assert (again / "grefs(unc).json").is_file() and not (again / "refs(unc).p").exists()


def test_layout_tables_are_consistent():
    assert set(synth_layouts.REFS_FILES) == set(synth_layouts.SPLITS)


# --------------------------------------------------------------------------- readers


@pytest.mark.parametrize("layout", sorted(REFS_FILES))
def test_round_trip_through_the_readers(bench, layout):
    out = bench[layout]
    expected = defaultdict(dict)
    for ref in _refs(out, layout):
        for s in ref["sentences"]:
            no = s.get("exist", True) is False
            expected[ref["split"]][s["sent_id"]] = (s["sent"], set() if no else _targets(ref, layout))
    for split, sents in expected.items():
        ds = load_split(layout, out, split, images=out / "images")
        assert {s.sent_id: (s.sentence, set(s.ann_ids)) for s in ds.samples} == sents
        for sample in ds.samples[:20]:
            assert sample.no_target == (not sample.ann_ids)
            assert ds.image_path(sample).is_file()
            masks = ds.instance_masks(sample)
            assert masks.shape[0] == len(sample.ann_ids)
            assert all(m.any() for m in masks)


def test_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "rz"
    assert main(["synth", "--out", str(out), "--layout", "refzom", "--images", "8",
                 "--size", "64", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "refs(final).p" in printed and "no-target" in printed
    assert main(["data", "--format", "refzom", "--data", str(out),
                 "--images", str(out / "images")]) == 0


def test_no_target_kinds_benchmark_counts_saved_decisions(bench, tmp_path):
    from refseg.data.types import Prediction
    from refseg.io.predictions import write_predictions

    out = bench["grefcoco"]
    samples = load_split("grefcoco", out, "val", images=out / "images").samples
    empty = {"size": [96, 96], "counts": "PP9"}  # COCO RLE of an empty 96 x 96 mask
    script = load_script("no_target_kinds")
    for said_none in (True, False):
        preds = tmp_path / f"{said_none}.jsonl"
        write_predictions(preds, [Prediction(s.sent_id, empty, said_none and s.no_target)
                                  for s in samples])
        rows, targets = script.no_target_rows(out, preds, "val")
        total, none = script.said_none_by_kind(rows)
        n = sum(s.no_target for s in samples)
        assert n > 0 and total["all (N-acc)"] == n
        kinds = ("absent shape", "absent colour", "absent size", "binding", "count or position")
        assert sum(total[k] for k in kinds) == n
        assert dict(none) == (dict(total) if said_none else dict.fromkeys(total, 0))
        assert script.auc_by_kind(rows, targets) == {}  # no scores saved
    # scores: every no-target sentence above every target one but one target tied at the top
    scored = tmp_path / "scored.jsonl"
    tied = next(s for s in samples if not s.no_target)
    write_predictions(scored, [
        Prediction(s.sent_id, empty, False,
                   no_target_score=0.9 if s.no_target or s is tied else 0.1)
        for s in samples])
    auc = script.auc_by_kind(*script.no_target_rows(out, scored, "val"))
    targets = sum(not s.no_target for s in samples)
    assert set(auc) == set(total)
    assert all(v == pytest.approx(1 - 0.5 / targets) for v in auc.values())
    missing = tmp_path / "missing.jsonl"
    first = next(s for s in samples if s.no_target)
    write_predictions(missing, [Prediction(s.sent_id, empty, True) for s in samples
                                if s is not first])
    with pytest.raises(SystemExit, match=f"no prediction for sent_id {first.sent_id}"):
        script.no_target_rows(out, missing, "val")


def test_film_reference_scores_as_refseg_score(bench, tmp_path):
    """The FiLM reference's own figures equal `refseg score` on the predictions it saves,
    with its no-target head deciding (some sentences said none, some not)."""
    script = load_script("synth_learnability")
    out = bench["grefcoco"]
    vocab: dict[str, int] = {}
    val = load_split("grefcoco", out, "val", images=out / "images")
    data = script.tensors(val, vocab, 96, 16)
    torch.manual_seed(0)
    net = script.FilmNet(len(vocab), no_target_head=True)
    _, said_none, _ = script.answers(net, data[0], data[1], text=True)
    assert 0 < int(said_none.sum()) < len(said_none)
    preds, metrics = tmp_path / "film.jsonl", tmp_path / "metrics.json"
    script.save_predictions(preds, net, data, val)
    assert main(["score", "--format", "grefcoco", "--data", str(out), "--split", "val",
                 "--predictions", str(preds), "--out", str(metrics)]) == 0
    scored = json.loads(metrics.read_text())
    own = script.evaluate(net, data, text=True)
    for key in ("gIoU", "cIoU", "N-acc", "T-acc"):
        assert 100 * own[key] == pytest.approx(scored[key], abs=1e-4)


def test_film_reference_scores_hand_count():
    script = load_script("synth_learnability")
    gt = torch.zeros(3, 2, 2)
    gt[0, 0] = 1  # target: 2 pixels; the prediction covers 1 of them and 1 more
    gt[1, :, 0] = 1  # target, answered no-target by the head
    pred = torch.zeros(3, 2, 2, dtype=torch.bool)
    pred[0, 0, 0] = pred[0, 1, 1] = True
    pred[1] = True  # ignored: said none
    empty = torch.tensor([0.0, 0.0, 1.0])  # the third sentence has no target
    got = script.scores(pred, gt, empty, torch.tensor([False, True, True]))
    assert got == pytest.approx({"gIoU": (1 / 3 + 0 + 1) / 3, "cIoU": 1 / (3 + 2),
                                 "N-acc": 1.0, "T-acc": 0.5})
    # without a head, an empty mask is the no-target answer
    got = script.scores(pred, gt, empty)
    assert got == pytest.approx({"gIoU": (1 / 3 + 2 / 4 + 1) / 3, "cIoU": 3 / 7,
                                 "N-acc": 1.0, "T-acc": 1.0})
