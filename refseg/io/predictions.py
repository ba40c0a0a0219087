"""Predictions files: what any system writes for `refseg score`, and what refseg writes.

A JSON list, or JSON Lines (one object per line), of records::

    {"sent_id": int,
     "mask": {"size": [h, w], "counts": str},        # merged mask, COCO RLE, image size
     "no_target": bool,                              # optional: default "mask is empty"
     "no_target_score": float,                       # optional, in [0, 1]; not scored
     "instances": [{"box": [x1, y1, x2, y2],         # optional (GREC / REC need it)
                    "score": float,
                    "mask": RLE}]}                   # instance mask optional

Reading checks every field and every RLE (see `refseg.metrics.rle.invalid_rle_counts`)
and names the file and the sent_id at fault; sizes against the images are checked when
the predictions are scored.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from refseg.data.types import Instance, Prediction, RefResult
from refseg.errors import DataError, PredictionError
from refseg.io.atomic import atomic_path
from refseg.io.values import is_finite, is_int, is_number

FIELDS = {"sent_id", "mask", "no_target", "no_target_score", "instances"}
INSTANCE_FIELDS = {"box", "score", "mask"}


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read and check a predictions file (JSON list or JSON Lines).

    Raises:
        PredictionError: unreadable file, invalid JSON, a record with a missing or
            malformed field, a malformed RLE, or a sent_id given twice.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise PredictionError(f"{path}: file not found") from None
    except OSError as exc:
        raise PredictionError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_predictions(_load_records(text, path), str(path))


def _load_records(data: bytes, path: Path) -> list[tuple[str, Any]]:
    """(location, decoded object) per record; location is 'line N' or 'record N'."""
    text = _decode(data, path)
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text, object_pairs_hook=_no_repeated_keys)
        except (ValueError, RecursionError) as exc:  # ValueError: an int over the digit limit
            raise PredictionError(f"{path}: not valid JSON ({_why(exc)})") from None
        return [(f"record {i}", r) for i, r in enumerate(records)]
    out = []
    # Line breaks only (JSON strings cannot hold them raw): str.splitlines would also split
    # at U+2028, which JSON strings may hold.
    for number, line in enumerate(re.split(r"\r\n|\r|\n", text), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {number}", json.loads(line, object_pairs_hook=_no_repeated_keys)))
        except (ValueError, RecursionError) as exc:
            raise PredictionError(
                f"{path}: line {number}: not valid JSON ({_why(exc)}); expected a JSON list or "
                "JSON Lines"
            ) from None
    return out


def _decode(data: bytes, path: Path) -> str:
    """The file's text: UTF-8, or UTF-16/32 as JSON allows (told by a BOM or the null
    bytes around the first ASCII characters, json.detect_encoding); a BOM is dropped."""
    encoding = json.detect_encoding(data)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise PredictionError(
            f"{path}: not valid {encoding.upper()} text ({exc.reason} at byte {exc.start})"
        ) from None
    return text.removeprefix("\ufeff")


class _RepeatedKey(json.JSONDecodeError):
    pass


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict, refusing a key given twice (json keeps the last silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        repeated = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise _RepeatedKey(f"key {repeated!r} given twice in one object", "", 0)
    return out


def _why(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, _RepeatedKey):
        return exc.msg
    return str(exc)


def parse_predictions(records: list[tuple[str, Any]], source: str) -> list[Prediction]:
    """Check decoded records and build `Prediction` objects.

    Args:
        records: (location, object) pairs, e.g. ``("line 3", {...})``.
        source: the file name, for error messages.
    """
    from refseg.data.masks import rle_area

    predictions: list[Prediction] = []
    seen: dict[int, str] = {}
    rles: list[tuple[str, dict]] = []  # (where, rle) to check in one batch
    for location, record in records:
        pred, record_rles = _parse_record(record, source, location)
        where = f"{source}: sent_id {pred.sent_id}"
        if pred.sent_id in seen:
            raise PredictionError(
                f"{where}: duplicate sent_id ({seen[pred.sent_id]} and {location})"
            )
        seen[pred.sent_id] = location
        rles += [(f"{where}: {name}", rle) for name, rle in record_rles]
        predictions.append(pred)
    _check_rles(rles)
    for pred in predictions:
        if pred.no_target is None:
            pred.no_target = rle_area(pred.mask) == 0
    return predictions


def _parse_record(record: Any, source: str,
                  location: str) -> tuple[Prediction, list[tuple[str, dict]]]:
    at = f"{source}: {location}"
    if not isinstance(record, dict):
        raise PredictionError(f"{at}: expected an object, got {type(record).__name__}")
    if "sent_id" not in record:
        raise PredictionError(f"{at}: no 'sent_id' (a predictions file is a JSON list of "
                              "records, or JSON Lines with one record per line)")
    sent_id = record["sent_id"]
    if not is_int(sent_id):
        raise PredictionError(f"{at}: 'sent_id' must be an integer, got {sent_id!r}")
    where = f"{source}: sent_id {sent_id}"
    unknown = set(record) - FIELDS
    if unknown:
        raise PredictionError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    if "mask" not in record:
        raise PredictionError(f"{where}: missing field 'mask'")
    mask = _rle_fields(record["mask"], f"{where}: mask")
    rles = [("mask", mask)]
    no_target = record.get("no_target")
    if no_target is not None and not isinstance(no_target, bool):
        raise PredictionError(f"{where}: 'no_target' must be true or false, got {no_target!r}")
    score = record.get("no_target_score")
    if score is not None and not (is_number(score) and 0.0 <= score <= 1.0):
        raise PredictionError(
            f"{where}: 'no_target_score' must be a number in [0, 1], got {score!r}")
    instances = []
    has_instances = "instances" in record
    if has_instances:
        if not isinstance(record["instances"], list):
            raise PredictionError(f"{where}: 'instances' must be a list")
        for k, inst in enumerate(record["instances"]):
            instance, rle = _parse_instance(inst, f"{where}: instances[{k}]")
            instances.append(instance)
            if rle is not None:
                rles.append((f"instances[{k}].mask", rle))
    # no_target None is resolved once the masks are checked (parse_predictions).
    score = None if score is None else float(score)
    return Prediction(int(sent_id), mask, no_target, instances, has_instances, score), rles


def _parse_instance(inst: Any, where: str) -> tuple[Instance, dict | None]:
    if not isinstance(inst, dict):
        raise PredictionError(f"{where}: expected an object")
    unknown = set(inst) - INSTANCE_FIELDS
    if unknown:
        raise PredictionError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    box = inst.get("box")
    # type() rather than isinstance: bool is an int subclass, and this runs per instance.
    if (
        type(box) is not list
        or len(box) != 4
        or not all(type(v) in (int, float) for v in box)
        or not all(map(is_finite, box))
    ):
        raise PredictionError(
            f"{where}: 'box' must be [x1, y1, x2, y2] (finite numbers), got {box!r}"
        )
    if box[2] < box[0] or box[3] < box[1]:
        raise PredictionError(
            f"{where}: 'box' {box} has x2 < x1 or y2 < y1 (expected x1, y1, x2, y2)"
        )
    score = inst.get("score")
    if not is_number(score) or not is_finite(score):
        raise PredictionError(f"{where}: 'score' must be a finite number, got {score!r}")
    rle = None if inst.get("mask") is None else _rle_fields(inst["mask"], f"{where}: mask")
    return Instance(tuple(float(v) for v in box), float(score), rle), rle


def _rle_fields(rle: Any, where: str) -> dict:
    """Check the shape of an RLE dict (its counts are checked in a batch later)."""
    if not isinstance(rle, dict) or set(rle) != {"size", "counts"}:
        raise PredictionError(f"{where}: expected an RLE {{'size': [h, w], 'counts': str}}")
    size = rle["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(is_int(v) and v > 0 for v in size):
        raise PredictionError(f"{where}: RLE size must be [height, width] (positive), got {size!r}")
    counts = rle["counts"]
    if isinstance(counts, list):
        from refseg.data.masks import validate_rle

        try:  # uncompressed counts (rare): checked and compressed right away
            return validate_rle(rle, size[0], size[1], where=where)
        except DataError as exc:
            raise PredictionError(str(exc)) from None
    if not isinstance(counts, str):
        raise PredictionError(f"{where}: RLE counts must be a string, got {type(counts).__name__}")
    return rle


def _check_rles(rles: list[tuple[str, dict]]) -> None:
    from refseg.metrics.rle import invalid_rle_counts

    sizes = [rle["size"][0] * rle["size"][1] for _, rle in rles]
    bad = invalid_rle_counts([rle["counts"] for _, rle in rles], sizes)
    if bad:
        where, rle = rles[bad[0]]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise PredictionError(
            f"{where}: malformed RLE counts: they do not decode to {rle['size'][0]} x "
            f"{rle['size'][1]} pixels{more}"
        )




# --- writing ----------------------------------------------------------------------------


def prediction_to_json(pred: Prediction) -> dict:
    """The file record of a prediction (masks as RLE with str counts)."""
    record: dict[str, Any] = {
        "sent_id": int(pred.sent_id),
        "mask": _rle_json(pred.mask),
        "no_target": bool(pred.no_target),
    }
    if pred.no_target_score is not None:
        record["no_target_score"] = float(pred.no_target_score)
    if pred.has_instances or pred.instances:
        record["instances"] = []
        for inst in pred.instances:
            item: dict[str, Any] = {"box": [float(v) for v in inst.box], "score": float(inst.score)}
            if inst.mask is not None:
                item["mask"] = _rle_json(inst.mask)
            record["instances"].append(item)
    return record


def _rle_json(mask) -> dict:
    """An RLE dict with str counts; an (H, W) array is encoded."""
    if isinstance(mask, dict):
        counts = mask["counts"]
        return {"size": [int(v) for v in mask["size"]],
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    from refseg.data.masks import mask_to_rle

    return mask_to_rle(mask)


def prediction_from_result(sent_id: int, result: RefResult) -> Prediction:
    """A `Prediction` (RLE masks) of a model's `RefResult` ((H, W) masks)."""
    instances = [
        Instance(tuple(float(v) for v in inst.box), float(inst.score),
                 None if inst.mask is None else _rle_json(inst.mask))
        for inst in result.instances
    ]
    return Prediction(int(sent_id), _rle_json(result.mask), bool(result.no_target), instances,
                      has_instances=True, no_target_score=float(result.no_target_score))


def write_predictions(path: str | Path, predictions: list[Prediction]) -> None:
    """Write predictions atomically: JSON Lines when ``path`` ends in ``.jsonl``, else a
    JSON list (one record per line, so large files stay readable and diffable)."""
    path = Path(path)
    lines = [json.dumps(prediction_to_json(p), separators=(",", ":")) for p in predictions]
    if path.suffix == ".jsonl":
        text = "".join(line + "\n" for line in lines)
    else:
        text = "[\n" + ",\n".join(lines) + "\n]\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
