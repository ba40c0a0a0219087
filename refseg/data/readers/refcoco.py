"""RefCOCO / RefCOCO+ / RefCOCOg (``lichengunc/refer``): one referent per ref.

``<data>/refs(<splitBy>).p`` (splitBy ``unc``, ``umd`` or ``google``) + ``instances.json``;
``ann_id`` is one integer.
"""

from __future__ import annotations

from refseg.data.readers.base import RefReader, ann_id_list
from refseg.errors import DataError


def check_single_ann_id(ref: dict, where: str) -> None:
    if isinstance(ref["ann_id"], list):
        raise DataError(
            f"{where}: ann_id is a list, not one id (a gRefCOCO or Ref-ZOM file? "
            "use --format grefcoco or refzom)"
        )


class RefCocoReader(RefReader):
    format = "refcoco"

    def check_ref(self, ref: dict, where: str) -> None:
        check_single_ann_id(ref, where)
        if "source" in ref:
            raise DataError(f"{where}: has a 'source' field (a Ref-ZOM file? use --format refzom)")
        sentences = ref["sentences"]
        if not isinstance(sentences, list):
            return
        for s in sentences:
            # Falsy as R-RefCOCO reads it: False, and 0 as well.
            if isinstance(s, dict) and not s.get("exist", True):
                raise DataError(f"{where}: a sentence has exist={s['exist']!r} "
                                "(an R-RefCOCO file? use --format rrefcoco)")

    def referents(self, ref: dict, where: str) -> tuple[int, ...]:
        return tuple(ann_id_list(ref, where))
