"""Forward + backward time of refseg's MSDeformAttn against transformers' pure-PyTorch path.

Shapes of the paper setting: d_model 256, 8 heads (32 channels each), 4 points, 3 levels
of a 480x480 input (60x60, 30x30, 15x15 tokens), every token a query (the pixel
decoder's encoder self-attention), batch 1 and 2. Runs of ours and the reference
alternate so that load on a shared machine hits both alike; medians are printed, of wall
time and of process CPU time (CPU time is steadier on a loaded machine: waiting for a
core does not count; with one thread it is the op time itself).

    .venv/bin/python benchmarks/msdeform_speed.py [--reps 10] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import (
    MultiScaleDeformableAttention,
)

from refseg.modeling.ops import ms_deform_attn
from refseg.modeling.ops.ms_deform_attn import level_starts

SHAPES = [(60, 60), (30, 30), (15, 15)]
HEADS, HEAD_DIM, POINTS = 8, 32, 4


def make_inputs(batch: int, device: str):
    tokens = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, tokens, HEADS, HEAD_DIM, device=device, requires_grad=True)
    locations = torch.rand(batch, tokens, HEADS, len(SHAPES), POINTS, 2, device=device,
                           requires_grad=True)
    weights = torch.rand(batch, tokens, HEADS, len(SHAPES), POINTS, device=device)
    weights = weights.softmax(-1).detach().requires_grad_(True)
    return value, locations, weights


def ours(value, locations, weights):
    return ms_deform_attn(value, SHAPES, locations, weights)


def reference(value, locations, weights, _attn=MultiScaleDeformableAttention()):
    shapes = torch.tensor(SHAPES, device=value.device)
    starts = torch.tensor(level_starts(SHAPES), device=value.device)
    return _attn(value, shapes, SHAPES, starts, locations, weights, 64)


def time_once(fn, inputs, upstream, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward.

    `upstream` is a dense (B, Q, C) gradient, as output_proj's backward delivers.
    """
    for t in inputs:
        t.grad = None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*inputs).backward(upstream)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"levels {SHAPES}, heads {HEADS}x{HEAD_DIM}, points {POINTS}, reps {args.reps}")
    print(f"{'batch':>5} {'queries':>7} {'clock':>5} {'reference ms':>13} {'ours ms':>8} "
          f"{'ref/ours':>8}")
    for batch in (1, 2):
        inputs = make_inputs(batch, args.device)
        upstream = torch.randn(batch, inputs[0].shape[1], HEADS * HEAD_DIM, device=args.device)
        with torch.no_grad():
            diff = (ours(*inputs) - reference(*inputs)).abs().max().item()
        times = {"ref": [], "ours": []}
        for rep in range(args.warmup + args.reps):
            order = [("ref", reference), ("ours", ours)]
            for name, fn in order if rep % 2 else order[::-1]:
                elapsed = time_once(fn, inputs, upstream, args.device)
                if rep >= args.warmup:
                    times[name].append(elapsed)
        for clock in (0, 1):
            ref_ms = statistics.median(t[clock] for t in times["ref"]) * 1e3
            ours_ms = statistics.median(t[clock] for t in times["ours"]) * 1e3
            print(f"{batch:>5} {inputs[0].shape[1]:>7} {('wall', 'cpu')[clock]:>5} "
                  f"{ref_ms:>13.1f} {ours_ms:>8.1f} {ref_ms / ours_ms:>8.2f}"
                  f"   (max |diff| {diff:.1e})")


if __name__ == "__main__":
    main()
