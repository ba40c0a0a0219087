"""Does a trained instalign-tiny represent what its referents look like? Linear probes read
an object's shape and colour off two of the model's representations of it.

    .venv/bin/python benchmarks/attribute_probe.py CHECKPOINT --data DIR \
        [--cache DIR] [--sentences 3000] [--random]

DIR is a synthetic benchmark (`refseg synth`; `refseg demo` leaves one in OUT/synth).
Only target sentences that name neither a shape nor a colour nor a landmark ("the
leftmost object", "all objects") are used, up to ``--sentences`` per split (train and
val), so the text cannot carry either attribute. For each referent whose centre lies in
its mask:

- ``pixel``: the pixel decoder's mask features (B, D, S/4, S/4) averaged over the
  referent's ground-truth mask, pooled to that grid;
- ``query``: the last decoder stage's query (the heads' input) whose mask overlaps the
  referent best.

Each probe is a multinomial logistic regression on standardised features (Adam 1e-2, 500
full-batch steps), fitted on two thirds of the objects and scored on the rest, next to
the majority class. ``--random`` re-initialises every layer first: the control for what
the architecture alone gives.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from instalign_tiny_learning import load_split_tensors, make_batch, sentence_scenes

import refseg
from refseg.data.synth import scene_size
from refseg.data.synth.expressions import parse
from refseg.data.synth.scenes import COLORS, SHAPES

ATTRIBUTES = {"shape": list(SHAPES), "colour": sorted(COLORS)}


def unnamed(sentence: str) -> bool:
    """True when the sentence names no shape, no colour and no landmark."""
    expr = parse(sentence)
    return expr.head.shape is None and expr.head.color is None and expr.landmark is None


@torch.no_grad()
def collect(model, tokenizer, data: Path, cache: Path, split: str, side: int, limit: int):
    """Features {"pixel", "query"} (N, D) and labels {"shape", "colour"} (N,) of referents,
    the images resized to the model's input ``side``."""
    captured = {}
    hook = model.pixel_decoder.register_forward_hook(
        lambda module, args, out: captured.__setitem__("mask_features", out.mask_features))
    tensors = load_split_tensors(data, split, side, cache)
    scenes = sentence_scenes(data, split)
    scale = side / scene_size(data)  # scene pixels -> input pixels
    chosen = [i for i, s in enumerate(tensors["sentences"])
              if not tensors["no_target"][i] and unnamed(s)][:limit]
    feats, labels = {"pixel": [], "query": []}, {k: [] for k in ATTRIBUTES}
    for start in range(0, len(chosen), 50):
        idx = chosen[start:start + 50]
        last = model(make_batch(tensors, tokenizer, idx)).stages[-1]
        grid = captured["mask_features"]  # (B, D, h, w)
        masks = F.interpolate(last.mask_logits, size=side, mode="bilinear") > 0  # (B, Q, S, S)
        for k, i in enumerate(idx):
            for gt in tensors["masks"][i]:
                inside = [t for t in scenes[i] if gt[min(side - 1, int(t.y * scale)),
                                                      min(side - 1, int(t.x * scale))]]
                if len(inside) != 1:
                    continue
                weight = F.adaptive_avg_pool2d(gt[None, None].float(), grid.shape[-2:])[0, 0]
                feats["pixel"].append((grid[k] * weight).sum((1, 2)) / weight.sum())
                both = (masks[k] & gt).flatten(1).sum(1)
                iou = both / (masks[k] | gt).flatten(1).sum(1).clamp(min=1)
                feats["query"].append(last.queries[k, int(iou.argmax())])
                labels["shape"].append(ATTRIBUTES["shape"].index(inside[0].shape))
                labels["colour"].append(ATTRIBUTES["colour"].index(inside[0].color))
    hook.remove()
    return feats, labels


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
          classes: int) -> float:
    """Test accuracy of a logistic regression fitted on ``train`` rows of x (N, D)."""
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    torch.manual_seed(0)  # the same initial probe on every run
    linear = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(500):
        optimizer.zero_grad()
        F.cross_entropy(linear(x[train]), y[train]).backward()
        optimizer.step()
    return float((linear(x[test]).argmax(1) == y[test]).float().mean())


def reinitialise(model: torch.nn.Module) -> None:
    """Every weight drawn afresh (the control): each module's own initialisation, then the
    parameters no ``reset_parameters`` reaches (attention in-projections, Swin's
    position-bias tables, bare parameters) from N(0, 0.02) or zero (biases, 1-d)."""
    torch.manual_seed(0)
    reached = set()
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None) or getattr(
            module, "_reset_parameters", None)
        if reset is not None:
            reset()
            reached.update(id(p) for p in module.parameters(recurse=False))
    with torch.no_grad():
        for param in model.parameters():
            if id(param) in reached:
                continue
            if param.dim() > 1:
                param.normal_(0.0, 0.02)
            else:
                param.zero_()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/refseg-probe-cache"))
    parser.add_argument("--sentences", type=int, default=3000)
    parser.add_argument("--random", action="store_true")
    args = parser.parse_args()
    predictor = refseg.load(args.checkpoint, device="cpu")
    model, tokenizer = predictor.model.eval(), predictor.tokenizer
    if args.random:
        reinitialise(model)
    feats, labels = {"pixel": [], "query": []}, {k: [] for k in ATTRIBUTES}
    for split in ("train", "val"):
        f, lab = collect(model, tokenizer, args.data, args.cache, split,
                         predictor.image_size, args.sentences)
        for k in feats:
            feats[k] += f[k]
        for k in labels:
            labels[k] += lab[k]
    n = len(labels["shape"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    train, test = order[: 2 * n // 3], order[2 * n // 3:]
    print(f"{n} objects ({len(train)} to fit, {len(test)} to score)"
          f"{', weights re-initialised' if args.random else ''}")
    for name, values in feats.items():
        x = torch.stack(values)
        for attribute, classes in ATTRIBUTES.items():
            y = torch.tensor(labels[attribute])
            majority = torch.bincount(y[train], minlength=len(classes)).max() / len(train)
            accuracy = probe(x, y, train, test, len(classes))
            print(f"{name:6s} -> {attribute:7s} accuracy {100 * accuracy:5.1f} %"
                  f"   (majority class {100 * float(majority):5.1f} %)")


if __name__ == "__main__":
    main()
