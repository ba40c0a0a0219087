"""Entry point of the readers: one split, or all splits, of a benchmark folder.

``data`` is the folder holding the refs file and ``instances.json`` (e.g.
``refer/data/refcoco``); ``images`` the folder the COCO images live in. Loading parses the
two files once and decodes no mask (masks are decoded on demand by `RefDataset`).
"""

from __future__ import annotations

from pathlib import Path

from refseg.data.dataset import RefDataset
from refseg.data.readers import READERS, RefReader
from refseg.data.readers.base import read_splits
from refseg.data.types import FORMATS
from refseg.errors import ConfigError, DataError


def reader_for(format: str) -> RefReader:
    try:
        return READERS[format]
    except KeyError:
        raise DataError(f"unknown format '{format}' (one of {', '.join(FORMATS)})") from None


def refs_file(format: str, data: Path | str, split_by: str | None = None) -> Path:
    """The refs file a format reads from ``data``.

    Default splitBy: grefcoco ``unc`` (``grefs(unc).json``, else ``grefs(unc).p``), refzom
    ``final``; refcoco / rrefcoco ``unc`` when present, else the only ``refs(*).p``.

    Raises:
        DataError: no such file (the message lists what the folder holds), or several
            candidates and no ``split_by``.
    """
    return reader_for(format).refs_file(Path(data), split_by)


def default_images(data: Path | str, how_to_give: str) -> Path:
    """``<data>/images``, the image folder of refseg's synthetic benchmark, for a caller
    given no image folder. ``how_to_give`` names the caller's option in the error.

    Raises:
        ConfigError: ``<data>/images`` is not a folder.
    """
    images = Path(data) / "images"
    if not images.is_dir():
        raise ConfigError(f"no image folder given and {images} does not exist; give the "
                          f"image folder with {how_to_give}")
    return images


def load_splits(
    format: str,
    data: Path | str,
    *,
    split_by: str | None = None,
    images: Path | str | None = None,
) -> dict[str, RefDataset]:
    """Every split of a benchmark, in order of first appearance in the refs file."""
    return _load(format, data, None, split_by, images)


def load_split(
    format: str,
    data: Path | str,
    split: str,
    *,
    split_by: str | None = None,
    images: Path | str | None = None,
) -> RefDataset:
    """One split of a benchmark: one `Sample` per sentence, in file order.

    Args:
        format: ``grefcoco``, ``refcoco``, ``refzom`` or ``rrefcoco``.
        data: folder with the refs file and ``instances.json``.
        split: e.g. ``val``; an unknown one is an error listing those available.
        split_by: the ``<splitBy>`` of ``refs(<splitBy>).p`` (see `refs_file`).
        images: folder of the images (``file_name`` of instances.json is relative to it).

    Raises:
        DataError: missing files, records of another format, ids that do not resolve,
            duplicate sent_ids, unknown split, a pickle holding anything but plain data.
    """
    return _load(format, data, [split], split_by, images)[split]


def _load(format, data, splits, split_by, images) -> dict[str, RefDataset]:
    reader = reader_for(format)
    refs_path = reader.refs_file(Path(data), split_by)
    instances = refs_path.parent / "instances.json"
    if not instances.is_file():
        raise DataError(f"{instances}: file not found (COCO annotations of {refs_path.name})")
    image_root = None if images is None else Path(images)
    if image_root is not None and not image_root.is_dir():
        raise DataError(f"{image_root}: no such image folder")
    return read_splits(reader, refs_path, instances, splits, image_root)
