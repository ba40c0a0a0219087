"""The benchmarks' exact metrics (torch-free): one accumulator per benchmark family.

Every accumulator has ``update(...)`` (masks as RLE dicts or (H, W) arrays, boxes as xyxy
arrays), ``add(...)`` (from pixel counts), ``merge``/``+``, ``state_dict``/``from_state``
(plain data, for ``torch.distributed.all_gather_object``) and ``summary()`` (percent).
`Scorer` maps a benchmark format to its accumulators. Definitions: docs/metrics.md.
"""

from refseg.metrics.gres import GRESAccumulator
from refseg.metrics.grec import GRECAccumulator
from refseg.metrics.refzom import RefZomAccumulator
from refseg.metrics.res import RECAccumulator, RESAccumulator
from refseg.metrics.rrefcoco import RRefCOCOAccumulator
from refseg.metrics.scorer import Scorer, score_predictions

__all__ = [
    "GRESAccumulator",
    "GRECAccumulator",
    "RESAccumulator",
    "RECAccumulator",
    "RefZomAccumulator",
    "RRefCOCOAccumulator",
    "Scorer",
    "score_predictions",
]
