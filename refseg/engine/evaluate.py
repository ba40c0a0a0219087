"""Run a model over a split: predictions at the original image size, then the metrics.

Evaluation batches are cut from the split in file order and dealt round-robin to the
ranks, so every sample is computed in the same batch as in one process; the predictions
are gathered on every rank and scored once with the scorer `refseg score` uses. The
metrics under torchrun are therefore those of one process, and those of `refseg score`
on the saved predictions.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch

from refseg.data.dataset import RefDataset
from refseg.data.types import Prediction, RefResult
from refseg.engine import distributed
from refseg.engine.data import Collate, RefSegData, worker_errors
from refseg.engine.postprocess import to_result
from refseg.io.predictions import prediction_from_result
from refseg.modeling.base import Thresholds
from refseg.modeling.contracts import Batch


@torch.no_grad()
def run_model(
    model,
    batch: Batch,
    sizes: list[tuple[int, int]],
    thresholds: Thresholds,
    *,
    amp: str = "none",
) -> list[RefResult]:
    """Forward, infer, decide and post-process one batch.

    Args:
        model: a `RefSegModel` in eval mode (not DDP-wrapped).
        batch: inputs on the model's device.
        sizes: (H, W) original size of each sample.
    """
    with distributed.autocast(batch.images.device, amp):
        outputs = model(batch)
        inference = model.infer(outputs)
    decisions = model.decide(inference, thresholds)
    return [to_result(d, h, w, thresholds) for d, (h, w) in zip(decisions, sizes)]


def subset(dataset: RefDataset, max_samples: int) -> RefDataset:
    """At most ``max_samples`` samples spread evenly over the split (0 = all)."""
    if max_samples <= 0 or max_samples >= len(dataset):
        return dataset
    keep = np.linspace(0, len(dataset) - 1, max_samples).round().astype(int)
    samples = [dataset.samples[i] for i in sorted(set(keep.tolist()))]
    return dataclasses.replace(dataset, samples=samples)


def predict_split(
    model,
    tokenizer,
    dataset: RefDataset,
    *,
    image_size: int,
    thresholds: Thresholds,
    ctx: distributed.DistContext,
    batch_size: int = 8,
    num_workers: int = 0,
    amp: str = "none",
    progress: bool = False,
) -> list[Prediction]:
    """Predictions for every sample of ``dataset``, in its order, on every rank."""
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = batches[ctx.rank :: ctx.world_size]
    data = RefSegData(dataset, image_size, with_targets=False)
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=mine,
        collate_fn=Collate(tokenizer, dataset.source),
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    was_training = model.training
    model.eval()
    predictions, truncated = [], 0
    bar = _progress(len(mine), progress and ctx.is_main, f"eval {dataset.split}")
    try:
        with worker_errors():
            for batch, items in loader:
                sizes = [(item.height, item.width) for item in items]
                results = run_model(model, batch.to(ctx.device), sizes, thresholds, amp=amp)
                predictions += [
                    prediction_from_result(i.sent_id, r) for r, i in zip(results, items)
                ]
                truncated += sum(item.truncated for item in items)
                bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    parts = distributed.all_gather_object((predictions, truncated))
    truncated = sum(cut for _, cut in parts)
    if truncated and ctx.is_main:
        warnings.warn(
            f"{dataset.source}: {truncated} of {n} sentences of split '{dataset.split}' are longer "
            f"than {tokenizer.max_length} tokens and were truncated",
            stacklevel=2,
        )
    by_id = {p.sent_id: p for part, _ in parts for p in part}
    return [by_id[s.sent_id] for s in dataset.samples]


def score(dataset: RefDataset, predictions: list[Prediction], **options) -> dict:
    """What `refseg score` reports for these predictions on this split (same scorer;
    ``options``: ``eval_size``, ``grec_score_thr``)."""
    from refseg.metrics.scorer import score_predictions

    return score_predictions(dataset, predictions, **options)


def numbers(metrics: dict) -> dict[str, float]:
    """The numeric metrics of a scorer result, nested ones as ``"GREC/F1"``, for logs."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, dict) and key not in ("protocol", "counts"):
            nested = {k: v for k, v in value.items() if isinstance(v, (int, float))}
            out.update({f"{key}/{k}": float(v) for k, v in nested.items()})
    return out


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total, desc=desc, disable=not enabled, unit="batch", leave=False, dynamic_ncols=True
    )
