"""R-RefCOCO / R-RefCOCO+ / R-RefCOCOg (``jianzongwu/robust-ref-seg``).

The RefCOCO layout plus a per-sentence bool ``exist`` (missing means True); a sentence
with ``exist == False`` describes nothing in its image, so its target is empty.
"""

from __future__ import annotations

from refseg.data.readers.refcoco import RefCocoReader, check_single_ann_id
from refseg.errors import DataError


class RRefCocoReader(RefCocoReader):
    format = "rrefcoco"

    def check_ref(self, ref: dict, where: str) -> None:
        check_single_ann_id(ref, where)
        if "source" in ref:
            raise DataError(f"{where}: has a 'source' field (a Ref-ZOM file? use --format refzom)")

    def sentence_has_target(self, sentence: dict, where: str) -> bool:
        exist = sentence.get("exist", True)
        if exist not in (True, False):  # 0 and 1 pass (0 == False)
            raise DataError(f"{where}: 'exist' must be a bool, got {exist!r}")
        return bool(exist)
