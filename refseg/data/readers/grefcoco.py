"""gRefCOCO (``henghuiding/gRefCOCO``, loader ``henghuiding/ReLA``): 0, 1 or many referents.

``<data>/grefs(unc).json`` (or ``grefs(unc).p``) + ``instances.json``. ``ann_id`` is an
integer or a list; **no-target is ``ann_id == [-1]``** (the record's ``no_target`` bool is
not consulted: the ids are the truth).
"""

from __future__ import annotations

from refseg.data.readers.base import RefReader, ann_id_list
from refseg.errors import DataError


class GRefCocoReader(RefReader):
    format = "grefcoco"
    # The JSON of the current release first: it needs no unpickling.
    refs_names = ("grefs({}).json", "grefs({}).p")
    default_split_by = "unc"

    def referents(self, ref: dict, where: str) -> tuple[int, ...] | None:
        ids = ann_id_list(ref, where)
        if ids == [-1]:
            return None
        if not ids or -1 in ids:
            raise DataError(f"{where}: ann_id {ref['ann_id']!r}: expected [-1] or annotation ids")
        return tuple(ids)
