"""Readers of the published benchmark formats, one module per format.

`READERS` maps a ``--format`` name to its reader; `refseg.data.load` is the entry point.
"""

from __future__ import annotations

from refseg.data.readers.base import RefReader
from refseg.data.readers.grefcoco import GRefCocoReader
from refseg.data.readers.refcoco import RefCocoReader
from refseg.data.readers.refzom import RefZomReader
from refseg.data.readers.rrefcoco import RRefCocoReader

READERS: dict[str, RefReader] = {
    "grefcoco": GRefCocoReader(),
    "refcoco": RefCocoReader(),
    "refzom": RefZomReader(),
    "rrefcoco": RRefCocoReader(),
}
