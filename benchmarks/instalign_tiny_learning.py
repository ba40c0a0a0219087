"""How fast does instalign-tiny learn? Train it on the synthetic benchmark with the data held
in memory and a CPU-time budget (so a busy shared machine gives the same number of steps),
then print GRES figures on val at network resolution and diagnostics of where it fails.

    refseg synth --out /tmp/synth
    .venv/bin/python benchmarks/instalign_tiny_learning.py --data /tmp/synth \
        [--cpu-seconds 480] [--threads 1] [--eval-every 500] [--forms] [key=value ...]

Overrides are the usual ``model.*`` / ``train.*`` / ``data.*`` keys (e.g.
``data.image_size=64 train.batch_size=8``); ``train.max_iters`` caps the steps.

Figures (val, network resolution S x S, thresholds 0.5): gIoU, cIoU, N-acc, T-acc as the
gRefCOCO rules define them (one difference from ``refseg eval``: a target sentence the
model calls no-target keeps its merged mask in cIoU's sums, where ``refseg eval`` empties
it; kept so that every round of docs/instalign-tiny.md reads alike), and
- ``oracle``: mean IoU of the best query for each referent (instance mask quality), a
  mean over sentences of their referents' mean;
- ``select``: of the k referents, the share of the k most relevant queries that are some
  referent's best query, a mean over sentences (does relevance pick the right instances?
  a query that is the best for two referents counts once: one mask over two objects
  falls short);
- ``p_max t/nt``: mean highest relevance on target / no-target sentences;
- ``z t/nt``: mean no-target probability on target / no-target sentences;
- ``z auc``: how well that probability separates the two kinds, whatever the threshold
  (0.5: not at all, 1: perfectly);
- ``topk``: mean IoU of the union of the k most relevant queries' masks (k = the number of
  referents) with the target: the merged mask if relevance separated the referents cleanly;
- ``p_next``: mean relevance of the (k+1)-th most relevant query on target sentences (how
  much the first distractor leaks into the merged mask).

Legend: B batch, N instances, S input side.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from refseg.config import apply_overrides
from refseg.data.synth.expressions import no_target_kind, parse
from refseg.engine.schedule import build_optimizer, build_scheduler
from refseg.methods.registry import variant
from refseg.metrics.gres import GRESAccumulator
from refseg.metrics.separation import roc_auc
from refseg.modeling.contracts import Batch, Targets


def load_split_tensors(data: Path, split: str, size: int, cache: Path) -> dict:
    """Images (normalised, float16), sentences, instance masks and no-target flags,
    cached per data folder (its resolved path and the refs file's time stamp: a benchmark
    drawn again into the same folder is read afresh)."""
    import hashlib

    refs = data / "grefs(unc).json"
    stamp = f"{data.resolve()}:{refs.stat().st_mtime_ns if refs.exists() else 0}"
    key = hashlib.sha1(stamp.encode()).hexdigest()[:12]
    file = cache / f"{data.name}_{key}_{split}_{size}.pt"
    if file.exists():
        return torch.load(file, weights_only=True)
    from refseg.data.load import load_split
    from refseg.engine.data import RefSegData

    items = RefSegData(load_split("grefcoco", data, split, images=data / "images"), size)
    items = [items[i] for i in range(len(items))]
    out = {"images": torch.stack([it.image for it in items]).half(),
           "sentences": [it.sentence for it in items],
           "masks": [it.targets.masks.bool() for it in items],
           "no_target": [it.targets.no_target for it in items]}
    from refseg.io.atomic import atomic_path

    with atomic_path(file) as tmp:  # two runs side by side may both write it
        torch.save(out, tmp)
    return out


def make_batch(split: dict, tokenizer, idx: list[int]) -> Batch:
    enc = tokenizer.encode([split["sentences"][i] for i in idx])
    targets = [Targets(split["masks"][i].float(), torch.zeros(split["masks"][i].shape[0], 4),
                       split["no_target"][i]) for i in idx]
    return Batch(split["images"][idx].float(), enc.input_ids, enc.pad_mask, targets, list(idx))


@torch.no_grad()
def evaluate(model, tokenizer, split: dict, size: int, limit: int = 0,
             forms: dict | None = None, scenes: list | None = None) -> dict[str, float]:
    """GRES figures at S x S and the diagnostics of the module docstring; with ``forms``
    (an empty dict), also each sentence form's sample IoU and ``select`` (filled in), and
    with ``scenes`` (each sentence's objects, `Thing` lists) the share of no-target
    sentences said none per `no_target_kind`."""
    model.eval()
    total = len(split["sentences"]) if limit <= 0 else min(limit, len(split["sentences"]))
    gres = GRESAccumulator()
    oracle, select, p_max, z = [], [], {"t": [], "nt": []}, {"t": [], "nt": []}
    topk, p_next = [], []
    for start in range(0, total, 50):
        idx = list(range(start, min(total, start + 50)))
        inference = model.infer(model(make_batch(split, tokenizer, idx)))
        merged = F.interpolate(inference.merged_logits[:, None], size=(size, size),
                               mode="bilinear", align_corners=False)[:, 0] > 0
        instances = F.interpolate(inference.instance_logits, size=(size, size), mode="bilinear",
                                  align_corners=False) > 0
        for k, i in enumerate(idx):
            gt_inst = split["masks"][i]
            gt = gt_inst.any(0) if gt_inst.shape[0] else torch.zeros(size, size, dtype=torch.bool)
            said_none = bool(inference.no_target_prob[k] > 0.5)
            kind = "nt" if split["no_target"][i] else "t"
            p_max[kind].append(float(inference.instance_scores[k].max()))
            z[kind].append(float(inference.no_target_prob[k]))
            inter, union = int((merged[k] & gt).sum()), int((merged[k] | gt).sum())
            gres.add(i, intersection=inter, union=union, pred_no_target=said_none,
                     gt_no_target=kind == "nt")
            expr = parse(split["sentences"][i]) if forms is not None else None
            form = ("NT-" if kind == "nt" else "") + expr.form if expr else None
            if form:
                score = float(said_none) if kind == "nt" else 0.0 if said_none else \
                    inter / max(union, 1)
                groups = [form]
                if kind == "nt" and scenes is not None:
                    groups.append("NT: " + no_target_kind(expr, scenes[i]))
                for group in groups:
                    record = forms.setdefault(group, {"iou": [], "select": [], "none": [],
                                                      "oracle": []})
                    record["iou"].append(score)
                    record["none"].append(float(said_none))
            if kind == "nt":
                continue
            both = (instances[k][:, None] & gt_inst[None]).flatten(2).sum(-1).float()
            either = (instances[k][:, None] | gt_inst[None]).flatten(2).sum(-1).float()
            iou = both / either.clamp(min=1)  # (Q, N)
            oracle.append(float(iou.max(0).values.mean()))
            ranked = inference.instance_scores[k].sort(descending=True)
            n = gt_inst.shape[0]
            top = set(ranked.indices[:n].tolist())
            union_top = instances[k][ranked.indices[:n]].any(0)
            topk.append(float((union_top & gt).sum() / (union_top | gt).sum().clamp(min=1)))
            if n < len(ranked.values):
                p_next.append(float(ranked.values[n]))
            select.append(len(set(iou.argmax(0).tolist()) & top) / n)
            if form:
                forms[form]["select"].append(select[-1])
                forms[form]["oracle"].append(oracle[-1])
    model.train()

    def mean(v):
        return sum(v) / max(len(v), 1)

    figures = gres.summary()
    return {**{k: figures[k] for k in ("gIoU", "cIoU", "N-acc", "T-acc")},
            "oracle": 100 * mean(oracle), "select": 100 * mean(select),
            "topk": 100 * mean(topk), "p_next": mean(p_next),
            "p_max t": mean(p_max["t"]), "p_max nt": mean(p_max["nt"]),
            "z t": mean(z["t"]), "z nt": mean(z["nt"]), "z auc": roc_auc(z["nt"], z["t"])}


def sentence_scenes(data: Path, split: str) -> list:
    """The objects (`Thing` lists) of each sentence's image, in `load_split_tensors` order."""
    from refseg.data.load import load_split
    from refseg.data.synth import read_scenes

    scenes = read_scenes(data)
    samples = load_split("grefcoco", data, split, images=data / "images").samples
    return [list(scenes[s.image_id].values()) for s in samples]


def _print_forms(forms: dict) -> None:
    for form, v in sorted(forms.items()):
        select = "" if not v["select"] else (
            f"  select {100 * sum(v['select']) / len(v['select']):5.1f}"
            f"  oracle {100 * sum(v['oracle']) / len(v['oracle']):5.1f}")
        print(f"  {form:22s} n {len(v['iou']):4d}  IoU {100 * sum(v['iou']) / len(v['iou']):5.1f}"
              f"  said none {100 * sum(v['none']) / len(v['none']):5.1f}" + select)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="a `refseg synth` folder")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/refseg_instalign_cache"))
    parser.add_argument("--cpu-seconds", type=float, default=480.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--forms", action="store_true",
                        help="finally, IoU, share said none, select and oracle per sentence "
                             "form, and the share said none per kind of no-target sentence")
    parser.add_argument("--train-eval", type=int, default=0, metavar="N",
                        help="finally, also the figures on the first N training sentences "
                             "(the gap to val shows memorisation)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = apply_overrides(variant("instalign-tiny"), args.overrides)
    size, cfg = run.data.image_size, run.train
    train = load_split_tensors(args.data, "train", size, args.cache)
    val = load_split_tensors(args.data, "val", size, args.cache)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    from refseg.methods.registry import get_method

    method = get_method("instalign")
    tokenizer = method.build_tokenizer(run.model, run.data, train["sentences"])
    model = method.build_model(run.model, tokenizer)
    optimizer = build_optimizer(model.param_groups(cfg.lr), cfg)
    total = cfg.max_iters or 10**9
    scheduler = build_scheduler(optimizer, cfg, total, 1)
    wall, cpu = time.time(), time.process_time()
    order: list[int] = []
    step = 0
    while step < total and time.process_time() - cpu < args.cpu_seconds:
        if len(order) < cfg.batch_size:
            order = list(range(len(train["sentences"])))
            rng.shuffle(order)
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = make_batch(train, tokenizer, idx)
        losses = model.loss(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        if args.eval_every and step % args.eval_every == 0:
            print(f"{step:6d} steps, cpu {time.process_time() - cpu:5.0f} s:",
                  _fmt(evaluate(model, tokenizer, val, size, limit=200)), flush=True)
    cpu_used, wall_used = time.process_time() - cpu, time.time() - wall
    forms = {} if args.forms else None
    print(f"final ({step} steps, cpu {cpu_used:.0f} s, wall {wall_used:.0f} s, "
          f"{cpu_used / max(step, 1):.3f} cpu s/step):",
          _fmt(evaluate(model, tokenizer, val, size, forms=forms,
                        scenes=sentence_scenes(args.data, "val") if args.forms else None)),
          flush=True)
    if forms:
        _print_forms(forms)
    if args.train_eval:
        print(f"train (first {args.train_eval} sentences):",
              _fmt(evaluate(model, tokenizer, train, size, limit=args.train_eval)), flush=True)


def _fmt(figures: dict[str, float]) -> str:
    return "  ".join(f"{k} -" if v is None else f"{k} {v:.1f}" if abs(v) >= 1 or v == 0
                     else f"{k} {v:.2f}" for k, v in figures.items())


if __name__ == "__main__":
    main()
