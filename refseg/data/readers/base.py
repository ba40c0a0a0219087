"""What every benchmark reader shares: reading the files, checking records, building splits.

A format differs only in where its refs file lives and in how a ref and its sentences
name their referents; subclasses of `RefReader` say that, `read_splits` does the rest.
"""

from __future__ import annotations

import contextlib
import gc
import glob
import json
from pathlib import Path
from typing import Any

from refseg.data.dataset import RefDataset
from refseg.data.types import Annotation, ImageInfo, Sample
from refseg.errors import DataError
from refseg.io.safe_pickle import load_pickle
from refseg.io.values import is_finite, is_int, is_number

REQUIRED_REF_FIELDS = ("ref_id", "image_id", "ann_id", "split", "sentences")


class RefReader:
    """A benchmark format: its refs file and its rule for a sentence's referents.

    Subclasses set ``format`` and ``refs_names`` and override `referents`.
    """

    format: str = ""
    #: refs file names to look for, first found wins; ``{}`` is the splitBy.
    refs_names: tuple[str, ...] = ("refs({}).p",)
    #: splitBy used when the user names none; None: 'unc' if present, else the only one.
    default_split_by: str | None = None

    def refs_file(self, data: Path, split_by: str | None) -> Path:
        """The refs file of ``data`` for ``split_by`` (see `refseg.data.load.refs_file`)."""
        data = _folder(data)
        if split_by is None and self.default_split_by is not None:
            split_by = self.default_split_by
        if split_by is not None:
            for name in self.refs_names:
                path = data / name.format(split_by)
                if path.is_file():
                    return path
            wanted = " or ".join(name.format(split_by) for name in self.refs_names)
            raise DataError(f"{data}: no {wanted} ({_listing(data)})")
        found = self._candidates(data)
        unc = [p for p in found if p.name in {n.format("unc") for n in self.refs_names}]
        if unc:
            return unc[0]
        if len(found) == 1:
            return found[0]
        pattern = " / ".join(name.format("*") for name in self.refs_names)
        if not found:
            raise DataError(f"{data}: no {pattern} file ({_listing(data)})")
        names = ", ".join(p.name for p in found)
        raise DataError(f"{data}: several refs files ({names}); choose one with --split-by")

    def _candidates(self, data: Path) -> list[Path]:
        found = []
        for name in self.refs_names:
            prefix, suffix = name.split("{}")
            found += sorted(data.glob(f"{glob.escape(prefix)}*{glob.escape(suffix)}"))
        return found

    def check_ref(self, ref: dict, where: str) -> None:
        """Reject records of another format (called once per ref of a loaded split)."""

    def referents(self, ref: dict, where: str) -> tuple[int, ...] | None:
        """Annotation ids a ref refers to, or None when the ref refers to nothing."""
        raise NotImplementedError

    def sentence_has_target(self, sentence: dict, where: str) -> bool:
        """False when this one sentence refers to nothing (R-RefCOCO's ``exist``)."""
        return True


def read_refs(path: Path) -> list[dict]:
    """The list of ref records of a refs file (restricted pickle or JSON)."""
    if path.suffix == ".json":
        refs = read_json(path)
    else:
        refs = load_pickle(path)
    if not isinstance(refs, list):
        raise DataError(f"{path}: expected a list of refs, got {type(refs).__name__}")
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise DataError(f"{path}: ref #{i} is a {type(ref).__name__}, not a record")
    return refs


def read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int over the digit limit
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: not usable JSON (nested too deeply)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def ref_splits(refs: list[dict], path: Path) -> list[str]:
    """Split names in order of first appearance in the file."""
    seen: dict[str, None] = {}
    for ref in refs:
        if "split" not in ref:
            raise DataError(f"{path}: ref {ref.get('ref_id', '?')}: missing field 'split'")
        seen.setdefault(str(ref["split"]), None)
    return list(seen)


def read_splits(
    reader: RefReader,
    refs_path: Path,
    instances_path: Path,
    splits: list[str] | None,
    image_root: Path | None,
) -> dict[str, RefDataset]:
    """Build the requested splits (all when None), in file order.

    Raises:
        DataError: unknown split, missing or malformed fields, ids that do not resolve,
            duplicate sent_ids within a split.
    """
    with _gc_paused():
        return _read_splits(reader, refs_path, instances_path, splits, image_root)


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic collector: parsing builds millions of acyclic objects, and its
    passes over them cost a third of the load time on gRefCOCO-sized files."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_splits(reader, refs_path, instances_path, splits, image_root) -> dict[str, RefDataset]:
    refs = read_refs(refs_path)
    available = ref_splits(refs, refs_path)
    wanted = available if splits is None else splits
    for split in wanted:
        if split not in available:
            names = ", ".join(available) or "none"
            raise DataError(f"{refs_path}: no split '{split}' (available: {names})")
    images, anns = _index_instances(instances_path)
    builders = {
        s: _SplitBuilder(reader, refs_path, instances_path, s, images, anns) for s in wanted
    }
    for ref in refs:
        builder = builders.get(str(ref["split"]))
        if builder is not None:
            builder.add(ref)
    return {s: b.build(image_root) for s, b in builders.items()}


def _index_instances(path: Path) -> tuple[dict[int, dict], dict[int, dict]]:
    """Image and annotation records of instances.json by id (kept raw; typed on use)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a COCO object with 'images' and 'annotations'")
    index = []
    for key in ("images", "annotations"):
        records = data.get(key)
        if not isinstance(records, list):
            raise DataError(f"{path}: missing list '{key}'")
        by_id, position = {}, {}
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or "id" not in rec:
                raise DataError(f"{path}: {key}[{i}] has no 'id'")
            rec_id = rec["id"]
            if not is_int(rec_id):
                raise DataError(f"{path}: {key}[{i}]: id {rec_id!r} is not an integer")
            if rec_id in by_id:
                raise DataError(f"{path}: {key}[{i}]: duplicate id {rec_id} "
                                f"(also {key}[{position[rec_id]}])")
            by_id[rec_id], position[rec_id] = rec, i
        index.append(by_id)
    return index[0], index[1]


class _SplitBuilder:
    """Collects one split's samples, images and annotations while refs stream by."""

    def __init__(self, reader, refs_path, instances_path, split, images, anns):
        self.reader = reader
        self.refs_path = refs_path
        self.instances_path = instances_path
        self.split = split
        self.raw_images = images
        self.raw_anns = anns
        self.samples: list[Sample] = []
        self.images: dict[int, ImageInfo] = {}
        self.anns: dict[int, Annotation] = {}
        self.sent_refs: dict[int, Any] = {}
        self.skipped = {"refs_without_sentences": 0, "crowd_only_sentences": 0}
        self.left_out: dict[int, str] = {}

    def add(self, ref: dict) -> None:
        ref_id = ref.get("ref_id", "?")
        where = f"{self.refs_path}: ref {ref_id}"
        for name in REQUIRED_REF_FIELDS:
            if name not in ref:
                raise DataError(f"{where}: missing field '{name}'")
        for name in ("ref_id", "image_id"):
            if not is_int(ref[name]):
                raise DataError(f"{where}: {name} {ref[name]!r} is not an integer")
        self.reader.check_ref(ref, where)
        sentences = ref["sentences"]
        if not isinstance(sentences, list):
            raise DataError(f"{where}: 'sentences' is not a list")
        if not sentences:
            self.skipped["refs_without_sentences"] += 1
            return
        image_id = ref["image_id"]
        info = self._image(image_id, where)
        referents = self.reader.referents(ref, where)
        kept = None if referents is None else self._drop_crowd(referents, image_id, where)
        for i, sent in enumerate(sentences):
            self._add_sentence(ref, i, sent, kept, info, where)

    def _add_sentence(self, ref, i, sent, kept, info, where) -> None:
        if not isinstance(sent, dict):
            raise DataError(f"{where}: sentence {i} is not a record")
        sent_id = _sent_id(ref, i, sent, where)
        where_s = f"{where}: sent_id {sent_id}"
        text = sent.get("raw")  # the official loaders read "raw"
        if not isinstance(text, str):
            text = sent.get("sent")
        if not isinstance(text, str):
            raise DataError(f"{where_s}: no text in field 'raw' (or 'sent')")
        # Left-out sentences count too: scoring looks a sent_id up in samples and left_out.
        if sent_id in self.sent_refs:
            raise DataError(
                f"{where_s}: duplicate sent_id (also in ref {self.sent_refs[sent_id]}, "
                f"split {self.split})"
            )
        self.sent_refs[sent_id] = ref["ref_id"]
        if kept is None or not self.reader.sentence_has_target(sent, where_s):
            ann_ids: tuple[int, ...] = ()
        elif not kept:
            # Every referent is a crowd region: no usable mask, and "no target" would be false.
            self.skipped["crowd_only_sentences"] += 1
            self.left_out[sent_id] = "its referents are all crowd regions"
            return
        else:
            ann_ids = kept
        self.samples.append(
            Sample(
                sent_id=sent_id,
                ref_id=ref["ref_id"],
                image_id=info.id,
                sentence=text,
                ann_ids=ann_ids,
                split=self.split,
                no_target=not ann_ids,
            )
        )
        self.images[info.id] = info

    def _image(self, image_id, where: str) -> ImageInfo:
        info = self.images.get(image_id)
        if info is not None:
            return info
        rec = self._record("image", image_id, ("file_name", "height", "width"), where)
        h, w = rec["height"], rec["width"]
        if not (_is_whole(h) and _is_whole(w) and h > 0 and w > 0):
            raise DataError(f"{self.instances_path}: image {image_id}: height and width must be "
                            f"positive integers, got {h!r} x {w!r}")
        name = rec["file_name"]
        if not isinstance(name, str) or not name or _escapes(name):
            raise DataError(f"{self.instances_path}: image {image_id}: file_name {name!r} must "
                            "be a path inside the image folder")
        return ImageInfo(int(image_id), name, int(h), int(w))

    def _record(self, kind: str, record_id, fields: tuple[str, ...], where: str) -> dict:
        """The raw image or annotation record of instances.json, its fields checked."""
        if kind == "image":
            index, id_name = self.raw_images, "image_id"
        else:
            index, id_name = self.raw_anns, "ann_id"
        rec = index.get(record_id)
        if rec is None:
            raise DataError(f"{where}: {id_name} {record_id} not in {self.instances_path}")
        for name in fields:
            if name not in rec:
                where_r = f"{self.instances_path}: {kind} {record_id}"
                raise DataError(f"{where_r}: missing field '{name}'")
        return rec

    def _drop_crowd(self, ann_ids: tuple[int, ...], image_id, where: str) -> tuple[int, ...]:
        """The non-crowd referents, each checked to exist and to lie on the ref's image."""
        kept = []
        for ann_id in ann_ids:
            ann = self._annotation(ann_id, where)
            if ann.image_id != image_id:
                raise DataError(
                    f"{where}: ann_id {ann_id} lies on image {ann.image_id}, the ref on {image_id}"
                )
            if not ann.iscrowd:
                kept.append(ann_id)
        return tuple(kept)

    def _annotation(self, ann_id: int, where: str) -> Annotation:
        ann = self.anns.get(ann_id)
        if ann is not None:
            return ann
        rec = self._record("annotation", ann_id, ("image_id", "segmentation", "bbox"), where)
        where_a = f"{self.instances_path}: annotation {ann_id}"
        if rec["image_id"] not in self.raw_images:
            raise DataError(f"{where_a}: image_id {rec['image_id']} not in 'images'")
        bbox = rec["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(is_number(v) and is_finite(v) for v in bbox)):
            raise DataError(f"{where_a}: bbox must be [x, y, w, h] of finite numbers, "
                            f"got {bbox!r}")
        ann = Annotation(
            id=ann_id,
            image_id=rec["image_id"],
            category_id=rec.get("category_id", 0),
            segmentation=rec["segmentation"],
            bbox=tuple(float(v) for v in bbox),
            iscrowd=bool(rec.get("iscrowd", 0)),
        )
        if not ann.iscrowd:
            self.anns[ann_id] = ann
        return ann

    def build(self, image_root: Path | None) -> RefDataset:
        return RefDataset(
            format=self.reader.format,
            split=self.split,
            samples=self.samples,
            images=self.images,
            anns=self.anns,
            image_root=image_root,
            source=self.refs_path,
            instances=self.instances_path,
            skipped=self.skipped,
            left_out=self.left_out,
        )


def _sent_id(ref: dict, i: int, sent: dict, where: str) -> int:
    sent_id = sent.get("sent_id")
    if sent_id is None:
        ids = ref.get("sent_ids")
        if not isinstance(ids, list) or i >= len(ids):
            raise DataError(f"{where}: sentence {i} has no 'sent_id'")
        sent_id = ids[i]
    if not is_int(sent_id):
        raise DataError(f"{where}: sent_id {sent_id!r} is not an integer")
    return int(sent_id)


def ann_id_list(ref: dict, where: str) -> list[int]:
    """A ref's ``ann_id`` as a list (int -> [int]), every entry an integer."""
    value = ref["ann_id"]
    ids = value if isinstance(value, list) else [value]
    for a in ids:
        if not is_int(a):
            raise DataError(f"{where}: ann_id {value!r} holds a non-integer")
    return [int(a) for a in ids]


def _escapes(name: str) -> bool:
    """Whether an image's file_name leaves the image folder: absolute, or through '..'
    (COCO's are bare names; a subfolder such as ``train2014/x.jpg`` stays inside)."""
    from pathlib import PurePosixPath, PureWindowsPath

    parts = PurePosixPath(name.replace("\\", "/"))
    return parts.is_absolute() or PureWindowsPath(name).drive != "" or ".." in parts.parts


def _is_whole(value: Any) -> bool:
    """An int, or a float with no fraction (480.0, as some JSON writers store sizes)."""
    return is_int(value) or (isinstance(value, float) and value.is_integer())


def _folder(data: Path) -> Path:
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: no such folder")
    return data


def _listing(data: Path) -> str:
    names = sorted(p.name for p in data.iterdir())
    if not names:
        return "the folder is empty"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"found: {shown}"
