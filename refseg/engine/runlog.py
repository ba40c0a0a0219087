"""A run's logs: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events.

Lines are ``{"iteration", "epoch", "train": {loss terms, lr, samples_per_s}}`` or
``{"iteration", "epoch", "val": {metric: value}}``. A resumed run first drops the lines
the killed run wrote after its last checkpoint, so the log reads as one run.
"""

from __future__ import annotations

import json
from pathlib import Path

from refseg.io.atomic import write_text

METRICS_FILE = "metrics.jsonl"


def read_log(path: str | Path) -> list[dict]:
    """Entries of a metrics.jsonl (a torn last line, from a kill, is skipped)."""
    entries = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return entries
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


class RunLog:
    """Append-only metrics log plus TensorBoard scalars, written by rank 0 only.

    Args:
        run_dir: the run directory.
        resume_from: iteration of the checkpoint a resumed run starts from; later entries
            are dropped. None for a fresh run (the log is emptied).
        tensorboard: also write TensorBoard events under ``<run_dir>/tensorboard``.
    """

    def __init__(
        self, run_dir: str | Path, *, resume_from: int | None = None, tensorboard: bool = True
    ):
        self.path = Path(run_dir) / METRICS_FILE
        kept = []
        if resume_from is not None:
            kept = [e for e in read_log(self.path) if e["iteration"] <= resume_from]
        write_text(self.path, "".join(json.dumps(e) + "\n" for e in kept))
        self._file = open(self.path, "a", buffering=1)
        self._writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(Path(run_dir) / "tensorboard"),
                # drop what a killed run wrote after the checkpoint, keep the checkpoint's step
                purge_step=None if resume_from is None else resume_from + 1,
            )

    def write(self, iteration: int, epoch: int, section: str, values: dict[str, float]) -> None:
        entry = {"iteration": iteration, "epoch": epoch, section: values}
        self._file.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{section}/{key}", value, iteration)

    def close(self) -> None:
        self._file.close()
        if self._writer is not None:
            self._writer.close()
