"""Run a model over a split: predictions at the original image size, then the metrics.

Evaluation batches are cut from the split in file order and dealt round-robin to the
ranks, so every sample is computed in the same batch as in one process; the predictions
are gathered on every rank and scored once with the scorer `refseg score` uses. The
metrics under torchrun are therefore those of one process, and those of `refseg score`
on the saved predictions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from refseg.data.dataset import RefDataset
from refseg.data.masks import mask_to_rle
from refseg.data.types import Instance, Prediction, RefResult
from refseg.engine import distributed
from refseg.engine.data import Collate, RefSegData
from refseg.engine.postprocess import to_result
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


def to_prediction(result: RefResult, sent_id: int) -> Prediction:
    """A `RefResult` as a predictions-file record (masks as compressed RLE)."""
    instances = [
        Instance(box=inst.box, score=inst.score, mask=mask_to_rle(inst.mask))
        for inst in result.instances
    ]
    return Prediction(
        sent_id=sent_id,
        mask=mask_to_rle(result.mask),
        no_target=result.no_target,
        instances=instances,
        has_instances=True,
    )


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
        collate_fn=Collate(tokenizer),
        num_workers=num_workers,
        generator=torch.Generator(),
    )
    was_training = model.training
    model.eval()
    predictions = []
    bar = _progress(len(mine), progress and ctx.is_main, f"eval {dataset.split}")
    try:
        for batch, items in loader:
            sizes = [(item.height, item.width) for item in items]
            results = run_model(model, batch.to(ctx.device), sizes, thresholds, amp=amp)
            predictions += [to_prediction(r, i.sent_id) for r, i in zip(results, items)]
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    by_id = {p.sent_id: p for part in distributed.all_gather_object(predictions) for p in part}
    return [by_id[s.sent_id] for s in dataset.samples]


def score(dataset: RefDataset, predictions: list[Prediction], **options) -> dict:
    """The metrics `refseg score` reports for these predictions on this split."""
    from refseg.metrics import score as score_split

    return score_split(dataset.format, dataset, predictions, **options)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="batch", leave=False, dynamic_ncols=True)
