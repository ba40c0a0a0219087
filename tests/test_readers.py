"""Readers of the four published layouts, on tiny hand-written benchmarks (tests/builders.py)."""

from __future__ import annotations

import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
from builders import (
    EXPECTED,
    IMAGES,
    RECTS,
    ann_record,
    annotations,
    image_record,
    rect,
    rect_mask,
    ref_record,
    sentence,
    tiny_benchmark,
    write_instances,
    write_refs,
)

from refseg.data.load import load_split, load_splits, refs_file
from refseg.data.masks import rle_area, rle_to_mask
from refseg.errors import DataError

SIZES = {rec["id"]: (rec["height"], rec["width"]) for rec in IMAGES}


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_samples_referents_and_split_order(fmt, tmp_path):
    data = tiny_benchmark(fmt, tmp_path)
    splits = load_splits(fmt, data)
    assert list(splits) == list(EXPECTED[fmt])  # file order
    for name, ds in splits.items():
        assert ds.format == fmt and ds.split == name
        assert {s.sent_id: s.ann_ids for s in ds.samples} == EXPECTED[fmt][name]
        for s in ds.samples:
            assert s.split == name
            assert s.no_target == (s.ann_ids == ())
            assert s.is_multi == (len(s.ann_ids) >= 2)
            assert set(s.ann_ids) <= set(ds.anns) and s.image_id in ds.images
        single = load_split(fmt, data, name)
        assert single.samples == ds.samples


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
def test_masks_and_boxes_match_the_drawn_rectangles(fmt, tmp_path):
    for ds in load_splits(fmt, tiny_benchmark(fmt, tmp_path)).values():
        for s in ds.samples:
            h, w = SIZES[s.image_id]
            rects = [r for a in s.ann_ids for r in RECTS[a]]
            merged = ds.merged_rle(s)
            assert merged["size"] == [h, w]
            np.testing.assert_array_equal(rle_to_mask(merged), rect_mask(h, w, *rects))
            inst = ds.instance_masks(s)
            assert inst.shape == (len(s.ann_ids), h, w)
            for m, a in zip(inst, s.ann_ids):
                np.testing.assert_array_equal(m.astype(bool), rect_mask(h, w, *RECTS[a]))
            boxes = ds.instance_boxes(s)
            assert boxes.shape == (len(s.ann_ids), 4)
            for box, a in zip(boxes, s.ann_ids):
                x0, y0, x1, y1 = zip(*RECTS[a])
                np.testing.assert_array_equal(box, [min(x0), min(y0), max(x1), max(y1)])


def test_overlapping_polygons_are_united(tmp_path):
    ds = load_split("grefcoco", tiny_benchmark("grefcoco", tmp_path), "train")
    s = ds.by_sent_id[1]  # referents 11 and 12; 12 is two overlapping rectangles
    mask = ds.instance_masks(s)[1].astype(bool)
    overlap = rect_mask(20, 30, (16, 8, 20, 12))
    assert mask[overlap].all()
    assert mask.sum() == 8 * 8 + 8 * 8 - 4 * 4


def test_crowd_is_removed_from_masks_and_boxes(tmp_path):
    ds = load_split("grefcoco", tiny_benchmark("grefcoco", tmp_path), "val")
    s = ds.by_sent_id[5]  # ann_id [11, 13]; 13 is crowd
    assert s.ann_ids == (11,)
    np.testing.assert_array_equal(ds.instance_boxes(s), [[2, 2, 10, 8]])
    assert 13 not in ds.anns
    # ann_id [13] only: dropped, neither a target without a mask nor a false no-target.
    assert 6 not in ds.by_sent_id
    assert ds.skipped == {"refs_without_sentences": 0, "crowd_only_sentences": 1}


def test_crowd_rule_is_the_same_for_refcoco(tmp_path):
    ds = load_split("refcoco", tiny_benchmark("refcoco", tmp_path), "val")
    assert 9 not in ds.by_sent_id
    assert ds.skipped == {"refs_without_sentences": 1, "crowd_only_sentences": 1}


def test_refzom_zero_ignores_ann_id(tmp_path):
    ds = load_split("refzom", tiny_benchmark("refzom", tmp_path), "test")
    assert ds.by_sent_id[3].no_target and ds.by_sent_id[4].no_target  # ann_id [999] is absent
    assert ds.merged_rle(ds.by_sent_id[3])["size"] == [16, 16]
    assert ds.instance_masks(ds.by_sent_id[3]).shape == (0, 16, 16)


def test_rrefcoco_exist_false_is_no_target(tmp_path):
    ds = load_split("rrefcoco", tiny_benchmark("rrefcoco", tmp_path), "train")
    assert ds.by_sent_id[2].no_target and ds.by_sent_id[2].ref_id == 1
    assert ds.by_sent_id[1].ann_ids == (11,) and ds.by_sent_id[3].ann_ids == (12,)
    assert rle_area(ds.merged_rle(ds.by_sent_id[2])) == 0


def test_sentence_text_images_and_file_name_suffix(tmp_path):
    data = tiny_benchmark("grefcoco", tmp_path)
    ds = load_split("grefcoco", data, "train", images=tmp_path)
    assert ds.by_sent_id[1].sentence == "both boxes"
    # refs carry "..._1.jpg"; the image is resolved by image_id through instances.json.
    assert ds.image_path(ds.by_sent_id[1]) == tmp_path / "COCO_train2014_000000000001.jpg"
    assert ds.source == data / "grefs(unc).json"


def test_raw_is_the_sentence_text_and_sent_the_fallback(tmp_path):
    # LAVT, ReLA, DeRIS, DMMI and robust-ref-seg all feed "raw" (as written, with its case
    # and punctuation) to the text encoder; "sent" is the lower-cased, re-tokenised form.
    s = sentence(1, "the man on the left")
    s["raw"] = "The man on the left."
    fallback = sentence(2, "the sent text")
    del fallback["raw"]
    null_raw = sentence(3, "the third")
    null_raw["raw"] = None
    write_instances(tmp_path, IMAGES, annotations())
    write_refs(tmp_path / "refs(unc).p",
               [ref_record(1, 1, 11, "val", [s, fallback, null_raw])])
    samples = load_split("refcoco", tmp_path, "val").samples
    assert [x.sentence for x in samples] == ["The man on the left.", "the sent text",
                                             "the third"]


def test_grefcoco_pickle_and_json(tmp_path):
    pickled = tiny_benchmark("grefcoco", tmp_path / "p", refs_name="grefs(unc).p")
    from_pickle = load_splits("grefcoco", pickled)
    from_json = load_splits("grefcoco", tiny_benchmark("grefcoco", tmp_path / "j"))
    assert list(from_pickle) == list(from_json)
    for name, ds in from_pickle.items():
        assert ds.samples == from_json[name].samples
    (pickled / "grefs(unc).json").write_text("[]")  # JSON wins when both are there
    assert refs_file("grefcoco", pickled).name == "grefs(unc).json"


def test_plain_data_pickles_with_python2_markers_load(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())
    refs = [OrderedDict(ref_record(1, 1, 11, "val", [sentence(1, "a")]))]
    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    assert len(load_split("refcoco", tmp_path, "val")) == 1


# --- which refs file ---------------------------------------------------------------------


def test_refs_file_defaults(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())
    write_refs(tmp_path / "refs(umd).p", [])
    assert refs_file("refcoco", tmp_path).name == "refs(umd).p"  # the only one
    write_refs(tmp_path / "refs(google).p", [])
    with pytest.raises(DataError, match=r"several refs files \(refs\(google\)\.p, refs\(umd\)\.p\)"):
        refs_file("rrefcoco", tmp_path)
    assert refs_file("refcoco", tmp_path, "google").name == "refs(google).p"
    write_refs(tmp_path / "refs(unc).p", [])
    assert refs_file("refcoco", tmp_path).name == "refs(unc).p"  # unc when present
    with pytest.raises(DataError, match=r"no refs\(final\)\.p \(found: instances\.json, refs"):
        refs_file("refzom", tmp_path)
    with pytest.raises(DataError, match=r"no grefs\(unc\)\.json or grefs\(unc\)\.p"):
        refs_file("grefcoco", tmp_path)
    with pytest.raises(DataError, match=r"no refs\(umc\)\.p"):
        refs_file("refcoco", tmp_path, "umc")
    with pytest.raises(DataError, match="unknown format 'coco'"):
        refs_file("coco", tmp_path)


# --- errors: one line, naming file and id/field ------------------------------------------


def _write(tmp_path, refs, *, images=None, anns=None, name="refs(unc).p"):
    images = IMAGES if images is None else images
    write_instances(tmp_path, images, annotations() if anns is None else anns)
    write_refs(tmp_path / name, refs)
    return tmp_path


def _error(fmt, data, split="val", **kw) -> str:
    with pytest.raises(DataError) as info:
        load_split(fmt, data, split, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_files(tmp_path):
    assert "no such folder" in _error("refcoco", tmp_path / "nowhere")
    write_refs(tmp_path / "refs(unc).p", [])
    msg = _error("refcoco", tmp_path)
    assert msg.endswith("instances.json: file not found (COCO annotations of refs(unc).p)")
    tiny_benchmark("refcoco", tmp_path)
    assert "no such image folder" in _error("refcoco", tmp_path, images=tmp_path / "imgs")


def test_unknown_split_lists_the_available_ones(tmp_path):
    data = tiny_benchmark("refzom", tmp_path)
    assert "no split 'val' (available: train, test)" in _error("refzom", data, "val")


def test_refs_file_of_another_format(tmp_path):
    # gRefCOCO records (ann_id lists) saved under RefCOCO's name.
    tiny_benchmark("grefcoco", tmp_path, refs_name="refs(unc).p")
    msg = _error("refcoco", tmp_path, "train")
    assert "refs(unc).p: ref 1: ann_id is a list" in msg and "--format grefcoco" in msg
    tiny_benchmark("rrefcoco", tmp_path)
    assert "a sentence has exist=False" in _error("refcoco", tmp_path, "train")
    # R-RefCOCO reads exist=0 as False too: not a target sentence for RefCOCO either.
    zero = [ref_record(3, 1, 11, "val", [sentence(1, "a"), sentence(2, "a cat", exist=0)])]
    assert load_split("rrefcoco", _write(tmp_path, zero), "val").by_sent_id[2].no_target
    msg = _error("refcoco", _write(tmp_path, zero))
    assert "ref 3: a sentence has exist=0 (an R-RefCOCO file? use --format rrefcoco)" in msg
    tiny_benchmark("refzom", tmp_path, refs_name="refs(unc).p")
    assert "ref 1: has a 'source' field" in _error("refcoco", tmp_path, "train")
    assert "ref 1: has a 'source' field" in _error("rrefcoco", tmp_path, "train")
    tiny_benchmark("refcoco", tmp_path, refs_name="refs(final).p")
    assert "ref 1: missing field 'source'" in _error("refzom", tmp_path, "train")


@pytest.mark.parametrize("field", ["ref_id", "image_id", "ann_id", "split", "sentences"])
def test_missing_ref_field_names_field_and_ref(field, tmp_path):
    ref = ref_record(17, 1, 11, "val", [sentence(1, "a")])
    del ref[field]
    msg = _error("refcoco", _write(tmp_path, [ref]))
    assert f"missing field '{field}'" in msg
    if field != "ref_id":
        assert "ref 17" in msg


def test_ids_that_do_not_resolve(tmp_path):
    msg = _error("refcoco", _write(tmp_path, [ref_record(4, 1, 55, "val", [sentence(1, "a")])]))
    assert "refs(unc).p: ref 4: ann_id 55 not in" in msg and "instances.json" in msg
    msg = _error("refcoco", _write(tmp_path, [ref_record(4, 9, 11, "val", [sentence(1, "a")])]))
    assert "ref 4: image_id 9 not in" in msg
    msg = _error("refcoco", _write(tmp_path, [ref_record(4, 2, 11, "val", [sentence(1, "a")])]))
    assert "ref 4: ann_id 11 lies on image 1, the ref on 2" in msg
    orphan = annotations() + [ann_record(70, 99, [rect(0, 0, 2, 2)])]
    data = _write(tmp_path, [ref_record(4, 1, 70, "val", [sentence(1, "a")])], anns=orphan)
    assert "instances.json: annotation 70: image_id 99 not in 'images'" in _error("refcoco", data)
    bad_image = [image_record(1, 20, 30), {"id": 2, "file_name": "x.jpg", "width": 4}]
    data = _write(tmp_path, [ref_record(4, 2, 21, "val", [sentence(1, "a")])], images=bad_image)
    assert "instances.json: image 2: missing field 'height'" in _error("refcoco", data)


def test_ids_must_be_integers(tmp_path):
    ref = ref_record(4, 1, 11, "val", [sentence(1, "a")])
    ref["image_id"] = "1"
    assert "ref 4: image_id '1' is not an integer" in _error("refcoco", _write(tmp_path, [ref]))


def test_instances_records_are_checked_where_they_are_indexed(tmp_path):
    ref = [ref_record(4, 1, 11, "val", [sentence(1, "a")])]
    twice = annotations() + [dict(annotations()[0])]
    assert f"annotations[{len(twice) - 1}]: duplicate id 11 (also annotations[0])" in _error(
        "refcoco", _write(tmp_path, ref, anns=twice))
    assert "images[3]: duplicate id 1 (also images[0])" in _error(
        "refcoco", _write(tmp_path, ref, images=IMAGES + [image_record(1, 8, 8)]))
    assert "images[3]: id [5] is not an integer" in _error(
        "refcoco", _write(tmp_path, ref, images=IMAGES + [dict(image_record(2, 8, 8), id=[5])]))
    for height in (-4, 0, 4.7, "20"):
        images = [dict(IMAGES[0], height=height)] + IMAGES[1:]
        msg = _error("refcoco", _write(tmp_path, ref, images=images))
        assert f"instances.json: image 1: height and width must be positive integers, got " \
               f"{height!r} x 30" in msg
    images = [dict(IMAGES[0], height=20.0)] + IMAGES[1:]  # a whole float is a size
    assert load_split("refcoco", _write(tmp_path, ref, images=images), "val").images[1].height == 20
    for bbox in ([2, 2, None, 6], [2, 2, "8", 6], [2, 2, float("inf"), 6], [2, 2, 10**400, 6]):
        anns = [dict(a, bbox=bbox) if a["id"] == 11 else a for a in annotations()]
        msg = _error("refcoco", _write(tmp_path, ref, anns=anns))
        assert "instances.json: annotation 11: bbox must be [x, y, w, h] of finite numbers" in msg
    (tmp_path / "instances.json").write_text("[" * 100000 + "]" * 100000)
    assert "instances.json: not usable JSON (nested too deeply)" in _error("refcoco", tmp_path)
    (tmp_path / "instances.json").write_text('{"images": [{"id": ' + "9" * 5000 + "}]}")
    assert "instances.json: not valid JSON (Exceeds the limit" in _error("refcoco", tmp_path)


def test_segmentation_errors_name_instances_json(tmp_path):
    anns = [dict(a, segmentation=[[0, 0, 2, 0, 2]]) if a["id"] == 11 else a
            for a in annotations()]
    split = load_split("refcoco", _write(tmp_path, [ref_record(4, 1, 11, "val",
                                                               [sentence(1, "a")])], anns=anns),
                       "val")
    with pytest.raises(DataError, match=r"instances\.json: annotation 11: polygon 0 has 5"):
        split.instance_masks(split.samples[0])


def test_python2_strings_in_refs_pickles_are_utf8(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())
    # Protocol 2 as Python 2 writes a str: SHORT_BINSTRING of the UTF-8 bytes of "café".
    body = pickle.dumps([ref_record(1, 1, 11, "val", [sentence(1, "PLACEHOLDER")])], protocol=2)
    text = "café".encode()
    py2 = body.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", b"U" + bytes([len(text)]) + text)
    assert py2 != body
    (tmp_path / "refs(unc).p").write_bytes(py2)
    assert [s.sentence for s in load_split("refcoco", tmp_path, "val").samples] == ["café"]
    latin = b"U" + bytes([4]) + "café".encode("latin1")
    (tmp_path / "refs(unc).p").write_bytes(body.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", latin))
    assert "a Python 2 string in the pickle is not UTF-8" in _error("refcoco", tmp_path)
    (tmp_path / "refs(unc).p").write_bytes(b"")
    assert "not a readable pickle (truncated or empty)" in _error("refcoco", tmp_path)


def test_duplicate_sent_ids(tmp_path):
    refs = [
        ref_record(1, 1, 11, "val", [sentence(5, "a")]),
        ref_record(2, 1, 12, "val", [sentence(5, "b")]),
    ]
    msg = _error("refcoco", _write(tmp_path, refs))
    assert "ref 2: sent_id 5: duplicate sent_id (also in ref 1" in msg
    refs[1]["split"] = "train"  # ids are unique per split: scoring keys predictions by them
    assert len(load_split("refcoco", _write(tmp_path, refs), "val")) == 1


@pytest.mark.parametrize("order", [1, -1])
def test_duplicate_sent_ids_count_sentences_left_out_for_crowd(order, tmp_path):
    # Ann 13 is crowd: its sentence is left out, yet its sent_id is taken. Were it not,
    # scoring would set aside the prediction for the kept sentence 5 as "left out".
    refs = [
        ref_record(1, 1, 13, "val", [sentence(5, "the crowd")]),
        ref_record(2, 1, 11, "val", [sentence(5, "left box")]),
    ][::order]
    first, second = (1, 2) if order == 1 else (2, 1)
    msg = _error("refcoco", _write(tmp_path, refs))
    assert f"ref {second}: sent_id 5: duplicate sent_id (also in ref {first}, split val)" in msg


def test_malformed_sentences_and_ann_ids(tmp_path):
    s = sentence(1, "a")
    del s["sent"], s["raw"]
    msg = _error("refcoco", _write(tmp_path, [ref_record(3, 1, 11, "val", [s])]))
    assert "sent_id 1: no text in field 'raw' (or 'sent')" in msg
    s = sentence(1, "a")
    del s["sent_id"]
    ref = ref_record(3, 1, 11, "val", [s])
    ref["sent_ids"] = [44]  # the ref's sent_ids stand in
    assert load_split("refcoco", _write(tmp_path, [ref]), "val").samples[0].sent_id == 44
    del ref["sent_ids"]
    assert "ref 3: sentence 0 has no 'sent_id'" in _error("refcoco", _write(tmp_path, [ref]))
    mixed = [ref_record(3, 1, [-1, 11], "val", [sentence(1, "a")])]
    msg = _error("grefcoco", _write(tmp_path, mixed, name="grefs(unc).json"))
    assert "ref 3: ann_id [-1, 11]: expected [-1]" in msg
    text_id = [ref_record(3, 1, ["11"], "val", [sentence(1, "a")])]
    msg = _error("grefcoco", _write(tmp_path, text_id, name="grefs(unc).json"))
    assert "holds a non-integer" in msg
    zom = [ref_record(3, 1, 11, "val", [sentence(1, "a")], source="few")]
    assert "source 'few' is not one of" in _error("refzom", _write(tmp_path, zom, name="refs(final).p"))
    exist = [ref_record(3, 1, 11, "val", [sentence(1, "a", exist="no")])]
    assert "'exist' must be a bool" in _error("rrefcoco", _write(tmp_path, exist))


def test_pickle_with_code_is_refused(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "refs(unc).p").write_bytes(pickle.dumps([Evil()]))
    assert "pickle references builtins.print" in _error("refcoco", tmp_path)
    (tmp_path / "refs(unc).p").write_bytes(b"\x80\x02]q\x00(")  # truncated
    assert "not a readable pickle" in _error("refcoco", tmp_path)


def test_refs_file_that_is_not_a_list_of_records(tmp_path):
    write_instances(tmp_path, IMAGES, annotations())
    (tmp_path / "grefs(unc).json").write_text(json.dumps({"refs": []}))
    assert "expected a list of refs, got dict" in _error("grefcoco", tmp_path)
    (tmp_path / "grefs(unc).json").write_text("[1, 2]")
    assert "ref #0 is a int, not a record" in _error("grefcoco", tmp_path)
    (tmp_path / "grefs(unc).json").write_text("[{")
    assert "not valid JSON" in _error("grefcoco", tmp_path)


def test_corrupt_pickles_are_clear_errors_without_huge_allocations(tmp_path):
    from refseg.io.safe_pickle import load_pickle

    path = tmp_path / "refs(unc).p"
    # Memoises 1 at index 2^31 - 1: pickle's C unpickler would size its memo table for 2^32
    # entries (32 GB); the pure-Python one refseg runs keeps a dict and just loads it.
    path.write_bytes(b"\x80\x02K\x01r\xff\xff\xff\x7f.")
    assert load_pickle(path) == 1
    path.write_bytes(b"\x80\x04\x957\x00")  # a frame header cut short
    with pytest.raises(DataError, match=r"refs\(unc\).p: not a readable pickle"):
        load_pickle(path)
    path.write_bytes(b"\x80\x02(J\x00\x00\x00\x7fh\x00")  # a memo index never stored
    with pytest.raises(DataError, match="not a readable pickle"):
        load_pickle(path)


def test_bytearray_longer_than_the_file_is_refused_before_it_is_allocated(tmp_path):
    import struct
    import tracemalloc

    from refseg.io.safe_pickle import load_pickle

    path = tmp_path / "refs(unc).p"
    # 12 bytes declaring a 64 MiB bytearray (BYTEARRAY8 zero-fills what it declares).
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 64 * 2**20) + b".")
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"refs\(unc\).p: not a readable pickle \(a bytearray "
                                            r"of 67108864 bytes in a file of 12 bytes\)"):
            load_pickle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    # Protocol 5 stores numpy's array bytes as such a bytearray: within the file, it loads.
    path.write_bytes(pickle.dumps({"w": np.arange(6, dtype=np.int32)}, protocol=5))
    np.testing.assert_array_equal(load_pickle(path, allow_numpy=True)["w"], np.arange(6))


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.jpg", "sub/../../x.jpg",
                                  "C:\\images\\x.jpg", "..\\x.jpg", "", None])
def test_an_image_file_name_outside_the_image_folder_is_refused(name, tmp_path):
    images = [dict(IMAGES[0], file_name=name), *IMAGES[1:]]
    write_instances(tmp_path, images, annotations())
    write_refs(tmp_path / "refs(unc).p", [ref_record(1, 1, 11, "val", [sentence(1, "a")])])
    assert "image 1: file_name" in _error("refcoco", tmp_path)
    images[0]["file_name"] = "train2014/x.jpg"  # a subfolder stays inside
    write_instances(tmp_path, images, annotations())
    assert load_split("refcoco", tmp_path, "val").samples[0].image_id == 1
