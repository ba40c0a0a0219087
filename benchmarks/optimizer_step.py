"""Time of one Adam/AdamW update over a model config's parameters: fused kernel against the
multi-tensor (``foreach``) and per-parameter loops (random weights and gradients).

    .venv/bin/python benchmarks/optimizer_step.py CONFIG [key=value ...] [--reps 30]
        [--threads 2]

The optimiser kind, learning rate and weight decay are the config's; the parameter groups
are the model's (``param_groups``), as `refseg train` builds them.
"""

from __future__ import annotations

import argparse
import time

import torch

from model_speed import build


def time_step(optimizer: torch.optim.Optimizer, reps: int) -> float:
    """Median seconds of ``optimizer.step()`` after three warm-up steps."""
    for _ in range(3):
        optimizer.step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config, _, model = build(args.config, args.overrides)
    train = config.train
    kind = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[train.optimizer]
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    tensors = sum(1 for p in model.parameters() if p.requires_grad)
    print(f"{args.config}: {train.optimizer}, {tensors} parameter tensors, "
          f"{args.threads} threads, median of {args.reps}")
    for name, speed in (("fused", {"fused": True}), ("foreach", {"foreach": True}),
                        ("for-loop", {"foreach": False})):
        optimizer = kind(model.param_groups(train.lr), lr=train.lr,
                         weight_decay=train.weight_decay, **speed)
        print(f"  {name:9s} {1000 * time_step(optimizer, args.reps):6.2f} ms")


if __name__ == "__main__":
    main()
