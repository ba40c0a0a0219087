"""The accumulator contract shared by every benchmark's metrics.

An accumulator keeps one small record of plain numbers per sentence, keyed by sent_id, and
computes every total in `summary()`: integer sums are exact, float sums use `math.fsum`
(correctly rounded, so independent of order). Evaluation split over any number of
processes, in any order, therefore merges to bit-identical results::

    states = all_gather_object(acc.state_dict())          # torch.distributed, any backend
    total = GRESAccumulator.from_state(states[0])
    for state in states[1:]:
        total.merge(GRESAccumulator.from_state(state))
    total.summary()
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

Self = TypeVar("Self", bound="Accumulator")


def percent(numerator: float, denominator: float) -> float | None:
    """100 * numerator / denominator; None (JSON null) when there is nothing to count."""
    return None if denominator == 0 else 100.0 * numerator / denominator


def mean_percent(values: list[float]) -> float | None:
    """100 * mean of ``values`` (exact sum); None when empty."""
    return None if not values else 100.0 * math.fsum(values) / len(values)


def sample_iou(intersection: int, union: int) -> float:
    """I / U of one sample; 0 when U == 0 (LAVT's and ReLA's convention)."""
    return intersection / union if union else 0.0


def threshold_key(threshold: float) -> str:
    """'Pr@0.7' for 0.7."""
    return f"Pr@{threshold:g}"


class Accumulator:
    """Base class: per-sentence records, merge, plain-data state.

    Subclasses add ``update(...)`` (from masks/boxes) and ``add(...)`` (from counts), and
    implement `summary` (metrics in percent) and `counts`.
    """

    def __init__(self) -> None:
        self._records: dict[int, tuple] = {}

    def params(self) -> dict[str, Any]:
        """Constructor arguments (thresholds); accumulators merge only with equal params."""
        return {}

    def _record(self, sent_id: int, record: tuple) -> None:
        sent_id = int(sent_id)
        previous = self._records.get(sent_id)
        # DistributedSampler pads a split by repeating samples: the same result twice is fine.
        if previous is not None and previous != record:
            raise ValueError(
                f"{type(self).__name__}: sent_id {sent_id} recorded twice with different "
                f"results ({previous} vs {record})"
            )
        self._records[sent_id] = record

    def records(self) -> list[tuple]:
        """Per-sentence records in sent_id order."""
        return [self._records[k] for k in sorted(self._records)]

    def __len__(self) -> int:
        return len(self._records)

    def merge(self: Self, other: Self) -> Self:
        """Add another accumulator's sentences to this one (in place); returns self."""
        if type(other) is not type(self) or other.params() != self.params():
            raise ValueError(
                f"cannot merge {type(other).__name__}({other.params()}) into "
                f"{type(self).__name__}({self.params()})"
            )
        for sent_id, record in other._records.items():
            self._record(sent_id, record)
        return self

    def __add__(self: Self, other: Self) -> Self:
        return type(self).from_state(self.state_dict()).merge(other)

    def state_dict(self) -> dict[str, Any]:
        """Plain picklable data: ``{"type", "params", "records": {sent_id: tuple}}``."""
        return {"type": type(self).__name__, "params": self.params(),
                "records": dict(self._records)}

    @classmethod
    def from_state(cls: type[Self], state: dict[str, Any]) -> Self:
        if state.get("type") != cls.__name__:
            raise ValueError(f"state of {state.get('type')!r} given to {cls.__name__}")
        acc = cls(**state["params"])
        for sent_id, record in state["records"].items():
            acc._record(sent_id, tuple(record))
        return acc

    def summary(self) -> dict[str, float | None]:
        """Metrics in percent; None where undefined (0 / 0)."""
        raise NotImplementedError

    def counts(self) -> dict[str, int]:
        """How many sentences of each kind were scored."""
        raise NotImplementedError
