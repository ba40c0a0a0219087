"""Is the synthetic benchmark worth learning? Train a small sentence-conditioned CNN on it
for a few minutes on CPU and compare with the same network that never sees the sentence.

    .venv/bin/python benchmarks/synth_learnability.py [--images 1000] [--steps 800] \
        [--data DIR] [--no-coords] [--no-target-head] [--save-predictions FILE]

Prints gIoU / cIoU / no-target accuracy on val for: the text-conditioned net, the
image-only net (sentence replaced by a constant), two trivial baselines (predict nothing;
predict every object), and the gIoU bound of any answer that ignores the sentence. Both
nets see the same images, steps and schedule. ``--save-predictions`` writes the
sentence-conditioned net's val answers as a refseg predictions file, for `refseg score`
and `benchmarks/no_target_kinds.py`.

Legend: B batch, L words, C channels, S input side.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from refseg.data.load import load_split
from refseg.data.masks import decode_rles, mask_to_rle
from refseg.data.synth import generate
from refseg.data.text import words
from refseg.data.types import Prediction
from refseg.io.predictions import write_predictions


def tensors(ds, vocab: dict[str, int], side: int, max_words: int):
    """Images (N, 3, S, S), word ids (N, L), merged masks (N, S, S), no-target (N,)."""
    cache, imgs, ids, masks, empty = {}, [], [], [], []
    for s in ds.samples:
        if s.image_id not in cache:
            img = Image.open(ds.image_path(s)).convert("RGB").resize((side, side), Image.BILINEAR)
            cache[s.image_id] = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
        imgs.append(cache[s.image_id])
        row = [vocab.setdefault(w, len(vocab) + 1) for w in words(s.sentence)][:max_words]
        ids.append(row + [0] * (max_words - len(row)))
        info = ds.image_info(s)
        m = decode_rles(ds.instance_rles(s), info.height, info.width).any(0) if s.ann_ids else \
            np.zeros((info.height, info.width), bool)
        m = Image.fromarray(m.astype(np.uint8) * 255).resize((side, side), Image.NEAREST)
        masks.append(torch.from_numpy(np.asarray(m) > 127))
        empty.append(s.no_target)
    return (torch.stack(imgs), torch.tensor(ids), torch.stack(masks).float(),
            torch.tensor(empty, dtype=torch.float32))


class FilmNet(nn.Module):
    """Conv encoder with coordinate channels, FiLM by a GRU sentence code at each stage.

    Without a no-target head, a sentence is answered "no target" by an empty mask; with
    one (``no_target_head``), by a logit read off the last features, average- and
    max-pooled, and the sentence code.
    """

    def __init__(self, vocab: int, channels: int = 48, text: int = 64, coords: bool = True,
                 no_target_head: bool = False):
        super().__init__()
        self.coords = coords  # False: the coordinate channels are zeros (an ablation)
        self.embed = nn.Embedding(vocab + 1, text, padding_idx=0)
        self.gru = nn.GRU(text, text, batch_first=True, bidirectional=True)
        c = channels
        self.stages = nn.ModuleList([
            nn.Conv2d(5, c, 3, 2, 1), nn.Conv2d(c + 2, c, 3, 2, 1), nn.Conv2d(c + 2, c, 3, 1, 2, 2),
            nn.Conv2d(c + 2, c, 3, 1, 4, 4), nn.Conv2d(c + 2, c, 3, 1, 1),
        ])
        self.films = nn.ModuleList([nn.Linear(2 * text, 2 * c) for _ in self.stages])
        self.norms = nn.ModuleList([nn.GroupNorm(8, c) for _ in self.stages])
        self.head = nn.Conv2d(c, 1, 1)
        self.no_target = nn.Sequential(nn.Linear(2 * c + 2 * text, c), nn.ReLU(),
                                       nn.Linear(c, 1)) if no_target_head else None

    def forward(self, images, ids):
        """(B, 3, S, S), (B, L) -> mask logits (B, S, S), no-target logits (B,) or None."""
        out, _ = self.gru(self.embed(ids))  # (B, L, 2T)
        keep = (ids != 0).float()[..., None]
        sentence = (out * keep).sum(1) / keep.sum(1).clamp(min=1)  # (B, 2T)
        x = images
        for conv, film, norm in zip(self.stages, self.films, self.norms):
            x = norm(conv(_with_coords(x, self.coords)))
            gamma, beta = film(sentence).chunk(2, dim=1)
            x = F.relu(x * (1 + gamma[..., None, None]) + beta[..., None, None])
        logits = F.interpolate(self.head(x), size=images.shape[-2:], mode="bilinear")[:, 0]
        if self.no_target is None:
            return logits, None
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), sentence], dim=1)  # (B, 2C+2T)
        return logits, self.no_target(pooled)[:, 0]


def _with_coords(x, coords: bool = True):
    b, _, h, w = x.shape
    if not coords:
        return torch.cat([x, x.new_zeros(b, 2, h, w)], dim=1)
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


def scores(pred: torch.Tensor, gt: torch.Tensor, empty: torch.Tensor,
           no_target: torch.Tensor | None = None) -> dict[str, float]:
    """gIoU, cIoU, N-acc and T-acc as `refseg score` counts them (a no-target sentence
    scores 1 when answered no-target). ``no_target`` (N,) bool is the explicit decision;
    None: "the mask is empty"."""
    p, g = pred.flatten(1), gt.flatten(1).bool()
    said_none = ~p.any(1) if no_target is None else no_target
    p = p & ~said_none[:, None]
    inter, union = (p & g).sum(1).float(), (p | g).sum(1).float()
    nt = empty.bool()
    per = torch.where(nt, said_none.float(), inter / union.clamp(min=1))
    return {"gIoU": per.mean().item(), "cIoU": (inter.sum() / union.sum()).item(),
            "N-acc": said_none[nt].float().mean().item() if nt.any() else float("nan"),
            "T-acc": (~said_none[~nt]).float().mean().item() if (~nt).any() else float("nan")}


def train(net, data, *, steps: int, text: bool, batch: int = 32, val=None):
    """AdamW on BCE + Dice for ``steps`` steps; val scores every quarter. Returns seconds."""
    imgs, ids, masks, empty = data
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    start, g = time.time(), torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        idx = torch.randint(len(imgs), (batch,), generator=g)
        words_in = ids[idx] if text else torch.ones_like(ids[idx][:, :1])
        logits, no_target = net(imgs[idx], words_in)
        loss = F.binary_cross_entropy_with_logits(logits, masks[idx]) + _dice(logits, masks[idx])
        if no_target is not None:
            loss = loss + F.binary_cross_entropy_with_logits(no_target, empty[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if val is not None and step % max(1, steps // 4) == 0 and step < steps:
            print(f"  {step:5d} steps, {time.time() - start:5.0f} s:",
                  _fmt(evaluate(net, val, text=text)))
    return time.time() - start


def _dice(logits, gt):
    """Dice loss over the samples with a target (an empty target has no overlap to learn)."""
    p = logits.sigmoid().flatten(1)
    g = gt.flatten(1)
    keep = g.sum(1) > 0
    if not keep.any():
        return logits.sum() * 0
    p, g = p[keep], g[keep]
    return (1 - (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)).mean()


@torch.no_grad()
def answers(net, images, ids, *, text: bool):
    """Masks (N, S, S) bool and no-target decisions (N,) bool, the latter from the
    no-target head when the net has one, else "the mask is empty"; and the no-target
    probability (N,) when the net has a head, else None."""
    net.eval()
    masks, heads = [], []
    for i in range(0, len(images), 128):
        words_in = ids[i:i + 128] if text else torch.ones_like(ids[i:i + 128][:, :1])
        logits, no_target = net(images[i:i + 128], words_in)
        masks.append(logits > 0)
        heads.append(no_target)
    net.train()
    masks = torch.cat(masks)
    if heads[0] is None:
        return masks, ~masks.flatten(1).any(1), None
    prob = torch.cat(heads).sigmoid()
    return masks, prob > 0.5, prob


def evaluate(net, data, *, text: bool):
    imgs, ids, masks, empty = data
    pred, no_target, _ = answers(net, imgs, ids, text=text)
    return scores(pred, masks, empty, no_target)


def save_predictions(path: Path, net, data, ds) -> None:
    """The net's answers to ``ds``'s sentences as a refseg predictions file, masks resized
    (nearest) to each image's original size."""
    imgs, ids, _, _ = data
    pred, no_target, prob = answers(net, imgs, ids, text=True)
    out = []
    for k, sample in enumerate(ds.samples):
        info = ds.image_info(sample)
        mask = np.zeros((info.height, info.width), bool)
        if not no_target[k]:
            image = Image.fromarray(pred[k].numpy().astype(np.uint8) * 255)
            mask = np.asarray(image.resize((info.width, info.height), Image.NEAREST)) > 127
        score = None if prob is None else float(prob[k])
        out.append(Prediction(sample.sent_id, mask_to_rle(mask), bool(no_target[k]),
                              no_target_score=score))
    write_predictions(path, out)


def image_only_oracle(ds) -> float:
    """gIoU of the best single answer per image, chosen knowing every sentence's target:
    an upper bound for any model that ignores the sentence (object-level IoU by area)."""
    from refseg.data.masks import rle_area

    area = {a: rle_area(ds.ann_rle(a)) for a in ds.anns}
    per_image = defaultdict(list)
    for s in ds.samples:
        per_image[s.image_id].append(frozenset(s.ann_ids))
    total = 0.0
    for targets in per_image.values():
        anns = sorted(set().union(*targets))
        best = 0.0
        for n in range(len(anns) + 1):
            for answer in map(frozenset, combinations(anns, n)):
                got = sum(_object_iou(answer, t, area) for t in targets)
                best = max(best, got)
        total += best
    return total / len(ds.samples)


def _object_iou(answer, target, area) -> float:
    if not target:
        return float(not answer)
    return sum(area[a] for a in answer & target) / sum(area[a] for a in answer | target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=64, help="network input side")
    parser.add_argument("--steps", type=int, default=800, help="training steps (batch 32) per net")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("text", "image"), help="train only one of the nets")
    parser.add_argument("--data", type=Path,
                        help="an existing `refseg synth` folder instead of a fresh one")
    parser.add_argument("--no-coords", action="store_true", help="zero the coordinate channels")
    parser.add_argument("--no-target-head", action="store_true",
                        help="decide no-target with a head of its own, not by an empty mask")
    parser.add_argument("--save-predictions", type=Path, metavar="FILE",
                        help="write the sentence-conditioned net's val predictions here")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        out = args.data or generate(Path(tmp), layout="grefcoco", images=args.images, seed=0)
        if not args.data:
            print(f"generated {args.images} images in {time.time() - t0:.1f} s")
        vocab: dict[str, int] = {}
        train_data = tensors(load_split("grefcoco", out, "train", images=out / "images"), vocab,
                             args.side, 16)
        val = load_split("grefcoco", out, "val", images=out / "images")
        val_data = tensors(val, vocab, args.side, 16)
        oracle = image_only_oracle(val)
    _, _, val_masks, val_empty = val_data
    print(f"train {len(train_data[0])} sentences, val {len(val_masks)}")
    print(f"{'predict nothing':28s}", _fmt(scores(torch.zeros_like(val_masks, dtype=torch.bool),
                                                  val_masks, val_empty)))
    # Every object: pixels far from the image's median (background) colour.
    background = val_data[0].flatten(2).median(dim=2).values[..., None, None]  # (N, 3, 1, 1)
    objects = (val_data[0] - background).abs().sum(1) > 0.35
    print(f"{'predict every object':28s}", _fmt(scores(objects, val_masks, val_empty)))
    print(f"{'image-only oracle bound':28s} gIoU {oracle:6.3f}")
    for text in [t for t in (True, False) if args.only in (None, "text" if t else "image")]:
        torch.manual_seed(0)
        net = FilmNet(len(vocab), coords=not args.no_coords, no_target_head=args.no_target_head)
        seconds = train(net, train_data, steps=args.steps, text=text, val=val_data)
        name = "sentence-conditioned CNN" if text else "image-only CNN"
        print(f"{name:28s}", _fmt(evaluate(net, val_data, text=text)),
              f"({args.steps} steps, {seconds:.0f} s)")
        if text and args.save_predictions:
            save_predictions(args.save_predictions, net, val_data, val)
            print(f"val predictions written to {args.save_predictions}")


def _fmt(s: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:6.3f}" for k, v in s.items())


if __name__ == "__main__":
    main()
