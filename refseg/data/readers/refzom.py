"""Ref-ZOM (``toggle1995/RIS-DMMI``): ``source`` says zero, one or many referents.

``<data>/refs(final).p`` + ``instances.json``; splits ``train`` and ``test``. ``ann_id``
is an integer or a list; a ref with ``source == 'zero'`` refers to nothing whatever its
``ann_id`` says (those ids are not looked up).
"""

from __future__ import annotations

from refseg.data.readers.base import RefReader, ann_id_list
from refseg.errors import DataError

SOURCES = ("zero", "one", "many")


class RefZomReader(RefReader):
    format = "refzom"
    default_split_by = "final"

    def check_ref(self, ref: dict, where: str) -> None:
        if "source" not in ref:
            raise DataError(f"{where}: missing field 'source' (zero / one / many)")
        if ref["source"] not in SOURCES:
            raise DataError(f"{where}: source {ref['source']!r} is not one of {', '.join(SOURCES)}")

    def referents(self, ref: dict, where: str) -> tuple[int, ...] | None:
        if ref["source"] == "zero":
            return None
        ids = ann_id_list(ref, where)
        if not ids:
            raise DataError(f"{where}: source is '{ref['source']}' but ann_id is empty")
        return tuple(ids)
