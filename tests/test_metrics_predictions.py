"""Predictions files: reading (JSON list / JSON Lines), every check, writing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refseg.data.masks import empty_rle, mask_to_rle
from refseg.data.types import Instance, Prediction, RefResult
from refseg.errors import PredictionError
from refseg.io.predictions import (
    prediction_from_result,
    read_predictions,
    write_predictions,
)

BLOCK = np.zeros((4, 5), bool)
BLOCK[1:3, 1:4] = True
RLE = mask_to_rle(BLOCK)  # {"size": [4, 5], "counts": "5220003"}


def _write(tmp_path, records, jsonl=False):
    path = tmp_path / ("p.jsonl" if jsonl else "p.json")
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records))
    return path


def test_roundtrip_json_list_and_json_lines(tmp_path):
    preds = [
        Prediction(3, RLE, False, [Instance((1.0, 1.0, 4.0, 3.0), 0.9, RLE),
                                   Instance((0.0, 0.0, 1.0, 1.0), 0.2)], has_instances=True),
        Prediction(1, empty_rle(4, 5), True, [], has_instances=True),
    ]
    for name in ("out.json", "out.jsonl"):
        write_predictions(tmp_path / name, preds)
        back = read_predictions(tmp_path / name)
        assert back == preds
    assert (tmp_path / "out.json").read_text().startswith("[\n")
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_masks_only_file_and_no_target_default(tmp_path):
    path = _write(tmp_path, [{"sent_id": 1, "mask": RLE}, {"sent_id": 2, "mask": empty_rle(4, 5)},
                             {"sent_id": 3, "mask": RLE, "no_target": True}], jsonl=True)
    preds = read_predictions(path)
    assert [p.no_target for p in preds] == [False, True, True]  # default: the mask is empty
    assert not any(p.has_instances for p in preds)
    write_predictions(tmp_path / "again.json", preds)
    assert "instances" not in (tmp_path / "again.json").read_text()


def test_uncompressed_counts_are_accepted(tmp_path):
    runs = {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    (pred,) = read_predictions(_write(tmp_path, [{"sent_id": 1, "mask": runs}]))
    assert pred.mask["size"] == [4, 5] and isinstance(pred.mask["counts"], str)


def test_prediction_from_result_encodes_masks():
    result = RefResult(False, 0.1, BLOCK, [Instance((1, 1, 4, 3), 0.8, BLOCK)])
    pred = prediction_from_result(7, result)
    assert pred == Prediction(7, RLE, False, [Instance((1.0, 1.0, 4.0, 3.0), 0.8, RLE)], True,
                              no_target_score=0.1)


def test_no_target_score_is_optional_kept_and_checked(tmp_path):
    path = _write(tmp_path, [{"sent_id": 1, "mask": RLE, "no_target_score": 0.25},
                             {"sent_id": 2, "mask": RLE, "no_target_score": 1}])
    preds = read_predictions(path)
    assert [p.no_target_score for p in preds] == [0.25, 1.0]
    write_predictions(tmp_path / "again.jsonl", preds)
    assert read_predictions(tmp_path / "again.jsonl") == preds
    (plain,) = read_predictions(_write(tmp_path, [{"sent_id": 3, "mask": RLE}]))
    assert plain.no_target_score is None
    write_predictions(tmp_path / "plain.json", [plain])
    assert "no_target_score" not in (tmp_path / "plain.json").read_text()


BAD = [
    ("not json", r"p.json: line 1: not valid JSON .*expected a JSON list or JSON Lines"),
    ('[{"sent_id": 1,', r"p.json: not valid JSON"),
    ([5], r"p.json: record 0: expected an object"),
    ([{"mask": RLE}], r"record 0: no 'sent_id'"),
    ([{"sent_id": True, "mask": RLE}], r"'sent_id' must be an integer, got True"),
    ([{"sent_id": 4}], r"sent_id 4: missing field 'mask'"),
    ([{"sent_id": 4, "mask": RLE, "score": 1}], r"sent_id 4: unknown field\(s\) score"),
    ([{"sent_id": 4, "mask": {"size": [4], "counts": "5220003"}}],
     r"sent_id 4: mask: RLE size must be \[height, width\]"),
    ([{"sent_id": 4, "mask": {"size": [4, 5], "counts": 7}}],
     r"sent_id 4: mask: RLE counts must be a string"),
    ([{"sent_id": 4, "mask": {"size": [4, 5]}}], r"sent_id 4: mask: expected an RLE"),
    ([{"sent_id": 4, "mask": {"size": [4, 5], "counts": "52200"}}],
     r"sent_id 4: mask: malformed RLE counts: they do not decode to 4 x 5 pixels"),
    ([{"sent_id": 4, "mask": {"size": [4, 6], "counts": "5220003"}}],
     r"sent_id 4: mask: malformed RLE"),
    ([{"sent_id": 4, "mask": {"size": [4, 5], "counts": [5, 2, 1]}}],
     r"sent_id 4: mask: RLE counts cover 8 pixels"),
    ([{"sent_id": 4, "mask": RLE, "no_target": 1}], r"'no_target' must be true or false"),
    ([{"sent_id": 4, "mask": RLE, "no_target_score": 1.5}],
     r"sent_id 4: 'no_target_score' must be a number in \[0, 1\], got 1.5"),
    ([{"sent_id": 4, "mask": RLE, "no_target_score": "0.3"}],
     r"sent_id 4: 'no_target_score' must be a number in \[0, 1\]"),
    ([{"sent_id": 4, "mask": RLE, "no_target_score": True}],
     r"sent_id 4: 'no_target_score' must be a number in \[0, 1\]"),
    ([{"sent_id": 4, "mask": RLE, "instances": {}}], r"'instances' must be a list"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [0, 0, 1], "score": 1}]}],
     r"sent_id 4: instances\[0\]: 'box' must be \[x1, y1, x2, y2\]"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [2, 0, 1, 1], "score": 1}]}],
     r"instances\[0\]: 'box' \[2, 0, 1, 1\] has x2 < x1"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [0, 0, 1, 1]}]}],
     r"instances\[0\]: 'score' must be a finite number"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [0, 0, 1, 1], "score": 10**400}]}],
     r"instances\[0\]: 'score' must be a finite number"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [0, 0, 10**400, 1], "score": 1}]}],
     r"instances\[0\]: 'box' must be \[x1, y1, x2, y2\] \(finite numbers\)"),
    ([{"sent_id": 4, "mask": RLE, "instances": [{"box": [0, 0, 1, 1], "score": 1,
                                                 "mask": {"size": [4, 5], "counts": "0"}}]}],
     r"sent_id 4: instances\[0\].mask: malformed RLE"),
    ([{"sent_id": 4, "mask": RLE}, {"sent_id": 5, "mask": RLE}, {"sent_id": 4, "mask": RLE}],
     r"sent_id 4: duplicate sent_id \(record 0 and record 2\)"),
    ('[{"sent_id": 4, "sent_id": 5, "mask": {"size": [4, 5], "counts": [20]}}]',
     r"not valid JSON \(key 'sent_id' given twice in one object\)"),
    ('{"predictions": []}', r"line 1: no 'sent_id' \(a predictions file is a JSON list of "
                            r"records, or JSON Lines with one record per line\)"),
    ("[" * 100000 + "]" * 100000, r"not valid JSON \(nested too deeply\)"),
    ([{"sent_id": 4, "mask": {"size": [2**40, 2**40], "counts": "0"}}],
     r"sent_id 4: mask: malformed RLE counts: they do not decode to 1099511627776 x "),
    ([{"sent_id": 4, "mask": {"size": [100000, 100000], "counts": [10**10]}}],
     r"sent_id 4: mask: uncompressed RLE counts must be non-negative integers below 2\^32"),
    ('[{"sent_id": ' + "9" * 5000 + "}]", r"not valid JSON \(Exceeds the limit \(4300 digits\)"),
    ('{"sent_id": ' + "9" * 5000 + "}", r"line 1: not valid JSON \(Exceeds the limit"),
]


@pytest.mark.parametrize("records, message", BAD, ids=range(len(BAD)))
def test_bad_files_are_one_line_errors_naming_file_and_id(tmp_path, records, message):
    path = tmp_path / "p.json"
    path.write_text(records if isinstance(records, str) else json.dumps(records))
    with pytest.raises(PredictionError, match=message) as info:
        read_predictions(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_nan_score_and_json_lines_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"sent_id": 1, "mask": %s, "instances": [{"box": [0,0,1,1], "score": NaN}]}\n'
                    % json.dumps(RLE))
    with pytest.raises(PredictionError, match=r"sent_id 1: instances\[0\]: 'score' must be"):
        read_predictions(path)
    path.write_text(json.dumps({"sent_id": 1, "mask": RLE}) + "\n\n{oops\n")
    with pytest.raises(PredictionError, match="p.jsonl: line 3: not valid JSON"):
        read_predictions(path)
    with pytest.raises(PredictionError, match="nope.json: file not found"):
        read_predictions(tmp_path / "nope.json")


def test_a_utf8_byte_order_mark_is_skipped(tmp_path):
    records = [{"sent_id": 1, "mask": RLE}]
    (tmp_path / "p.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(records).encode())
    (tmp_path / "p.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps(records[0]).encode())
    assert read_predictions(tmp_path / "p.json") == read_predictions(tmp_path / "p.jsonl")
    assert [p.sent_id for p in read_predictions(tmp_path / "p.json")] == [1]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32-be"])
def test_utf16_and_utf32_files_are_read(tmp_path, encoding):
    """PowerShell's `>` writes UTF-16 with a BOM; JSON allows UTF-16/32 with or without."""
    records = [{"sent_id": 1, "mask": RLE}, {"sent_id": 2, "mask": RLE, "no_target": True}]
    (tmp_path / "p.json").write_bytes(json.dumps(records).encode(encoding))
    lines = "".join(json.dumps(r) + "\r\n" for r in records)
    (tmp_path / "p.jsonl").write_bytes(lines.encode(encoding))
    for name in ("p.json", "p.jsonl"):
        preds = read_predictions(tmp_path / name)
        assert [(p.sent_id, p.no_target, p.mask) for p in preds] == [
            (1, False, RLE), (2, True, RLE)]


def test_a_line_separator_inside_a_string_does_not_split_a_json_line(tmp_path):
    """JSON strings may hold U+2028 raw; the record must reach the field checks whole."""
    text = '{"sent_id": 1, "mask": %s, "note\u2028": 1}\n' % json.dumps(RLE)
    (tmp_path / "p.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(PredictionError, match="sent_id 1: unknown field"):
        read_predictions(tmp_path / "p.jsonl")
    # ... while old Mac line ends (CR alone) still separate records.
    records = [{"sent_id": 1, "mask": RLE}, {"sent_id": 2, "mask": RLE}]
    (tmp_path / "cr.jsonl").write_text("\r".join(json.dumps(r) for r in records))
    assert [p.sent_id for p in read_predictions(tmp_path / "cr.jsonl")] == [1, 2]


def test_undecodable_bytes_are_a_one_line_error(tmp_path):
    (tmp_path / "p.jsonl").write_bytes(b'{"sent_id": 1, "mask": "\xff\xfe\xfd"}\n')
    with pytest.raises(PredictionError, match=r"p.jsonl: not valid UTF-8 text"):
        read_predictions(tmp_path / "p.jsonl")


def test_empty_list_is_no_predictions(tmp_path):
    assert read_predictions(_write(tmp_path, [])) == []
