"""From a `RefDataset` to batches: image resize and normalisation, targets at S x S,
tokenisation in the collate, deterministic resumable batch order.

Legend: N instances, H x W original size, S network input side, L tokens.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from refseg.data.dataset import RefDataset
from refseg.data.types import Sample
from refseg.errors import DataError, RefsegError
from refseg.modeling.contracts import Batch, Targets

# ImageNet statistics on 0..1 pixels (every backbone refseg hosts was pretrained with them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(image: np.ndarray, size: int) -> torch.Tensor:
    """Resize to S x S (bilinear, antialiased) and normalise with ImageNet mean/std.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (3, S, S) float32.
    """
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std)[0]


def resize_masks(masks: np.ndarray, size: int) -> torch.Tensor:
    """Binary masks to S x S: area-weighted (antialiased bilinear) then >= 0.5.

    An object that covers no output pixel by half keeps its best-covered pixel(s): a
    referent must not become an empty target, which a matched query would be trained
    to predict.

    Args:
        masks: (N, H, W) uint8 or bool.

    Returns:
        (N, S, S) float32 in {0, 1}.
    """
    if masks.shape[0] == 0:
        return torch.zeros((0, size, size))
    x = torch.from_numpy(np.ascontiguousarray(masks)).float()[:, None]
    cover = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)[:, 0]  # (N, S, S) share of each pixel covered
    binary = cover >= 0.5
    best = cover.flatten(1).amax(1)  # (N,)
    vanished = ~binary.flatten(1).any(1) & (best > 0)
    binary[vanished] = cover[vanished] == best[vanished, None, None]
    return binary.float()


def build_targets(dataset: RefDataset, sample: Sample, size: int) -> Targets:
    """Ground truth of a sample at the network resolution (boxes normalised xyxy)."""
    info = dataset.image_info(sample)
    masks = resize_masks(dataset.instance_masks(sample), size)
    boxes = torch.from_numpy(dataset.instance_boxes(sample))
    boxes = boxes / torch.tensor([info.width, info.height, info.width, info.height])
    return Targets(masks=masks, boxes=boxes.clamp(0, 1), no_target=not sample.ann_ids)


@dataclass
class Item:
    """One sample, network-ready. ``targets`` is None at inference."""

    image: torch.Tensor  # (3, S, S)
    sentence: str
    sent_id: int
    height: int
    width: int
    targets: Targets | None = None
    truncated: bool = False  # the tokenizer cut the sentence (set by `Collate`)


class RefSegData(torch.utils.data.Dataset):
    """Samples of a `RefDataset` as network inputs.

    Args:
        dataset: one split.
        image_size: S.
        with_targets: decode and resize the ground truth (training) or not (inference).
        nsc: optional `refseg.data.nsc.NonReferentConversion`, applied per
            (epoch, index) so a sample's fate is the same in a resumed run.
    """

    def __init__(
        self, dataset: RefDataset, image_size: int, *, with_targets: bool = True, nsc=None
    ):
        self.dataset = dataset
        self.image_size = image_size
        self.with_targets = with_targets
        self.nsc = nsc
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        from refseg.io.images import load_image

        sample = self.dataset.samples[index]
        if self.nsc is not None:
            sample = self.nsc(sample, index, self.epoch)
        path = self.dataset.image_path(sample)
        pixels = load_image(path)
        height, width = pixels.shape[:2]
        info = self.dataset.image_info(sample)
        if (height, width) != (info.height, info.width):
            raise DataError(
                f"{path}: image is {height}x{width} (h x w, as displayed), instances.json says "
                f"{info.height}x{info.width} (image {info.id})"
            )
        targets = None
        if self.with_targets:
            targets = build_targets(self.dataset, sample, self.image_size)
        return Item(
            image=preprocess_image(pixels, self.image_size),
            sentence=sample.sentence,
            sent_id=sample.sent_id,
            height=height,
            width=width,
            targets=targets,
        )


class Collate:
    """Stack items into a `Batch`, tokenising their sentences with the method's tokenizer.

    The tokenizer (``refseg.modeling.text.tokenizers``) owns the length L and returns a
    ``Tokenized`` (input_ids (B, L), pad_mask (B, L), truncated (B,)); an empty sentence is
    a DataError naming its sent_id and ``source`` (the refs file).
    """

    def __init__(self, tokenizer, source=None):
        self.tokenizer = tokenizer
        self.source = source

    def __call__(self, items: list[Item]) -> tuple[Batch, list[Item]]:
        sent_ids = [i.sent_id for i in items]
        names = [f"{i} ({self.source})" for i in sent_ids] if self.source else sent_ids
        tokens = self.tokenizer.encode([i.sentence for i in items], ids=names)
        batch = Batch(
            images=torch.stack([i.image for i in items]),
            input_ids=tokens.input_ids,
            text_pad_mask=tokens.pad_mask,
            targets=[i.targets for i in items if i.targets is not None],
            sent_ids=sent_ids,
        )
        for item, cut in zip(items, tokens.truncated.tolist()):
            item.image = None  # the pixels now live in the batch only
            item.truncated = bool(cut)
        return batch, items


class EpochBatches(torch.utils.data.Sampler):
    """Batches of sample indices: a permutation seeded by (seed, epoch), sharded over ranks.

    The order depends only on (seed, epoch), so a run resumed at batch ``start`` of an
    epoch sees exactly the batches the uninterrupted run would have seen. With R ranks the
    permutation is padded by wrapping to a multiple of R and rank r takes every R-th index;
    every rank then has the same number of batches.

    Args:
        num_samples: size of the split.
        batch_size: samples per batch on this rank.
        seed: base seed of the order.
        rank, world_size: this process's shard.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if num_samples == 0:
            raise DataError("the training split has no samples")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches."""
        self.epoch = epoch
        self.start = start

    def _shard(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g).tolist()
        total = -(-self.num_samples // self.world_size) * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank :: self.world_size]

    def batches_per_epoch(self) -> int:
        per_rank = -(-self.num_samples // self.world_size)  # integer ceilings: exact
        return -(-per_rank // self.batch_size)                 # for any batch size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start

    def __iter__(self):
        shard = self._shard()
        for b in range(self.start, self.batches_per_epoch()):
            yield shard[b * self.batch_size : (b + 1) * self.batch_size]


@contextlib.contextmanager
def worker_errors():
    """Re-raise a refseg error from a DataLoader worker with its own one-line message
    (the DataLoader wraps it into "Caught DataError in DataLoader worker ..." and a traceback)."""
    try:
        yield
    except RefsegError as exc:
        text = str(exc)
        if not text.startswith("Caught "):
            raise
        _, _, message = text.rstrip().splitlines()[-1].partition(": ")
        raise type(exc)(message) from None


def loader(data: RefSegData, batches, collate: Collate, *, num_workers: int, seed: int):
    """A DataLoader over explicit batches; its own generator keeps the global RNG untouched
    (a DataLoader otherwise draws its worker base seed from it)."""
    return torch.utils.data.DataLoader(
        data,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )


def warn_truncated(sentences: list[str], truncated, max_length: int) -> None:
    """Warn for each sentence the tokenizer cut to ``max_length`` tokens."""
    for sentence, cut in zip(sentences, truncated):
        if cut:
            warnings.warn(
                f"sentence longer than {max_length} tokens, truncated: {sentence[:60]!r}",
                stacklevel=3,
            )
