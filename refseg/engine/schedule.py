"""Optimiser and learning-rate schedule from `TrainConfig` (per iteration)."""

from __future__ import annotations

import torch

from refseg.config import TrainConfig
from refseg.errors import ConfigError


def build_optimizer(param_groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (the papers' choice) or Adam over the model's parameter groups.

    The fused update (one kernel over all parameters) is used when every parameter is a
    floating-point tensor on the CPU or a CUDA device: on CPU it takes under a third of the
    time of the multi-tensor (``foreach``) one, which is the fallback elsewhere
    (docs/benchmarks.md, "Optimiser step").
    """
    if cfg.optimizer not in ("adamw", "adam"):
        raise ConfigError(f"train.optimizer={cfg.optimizer}: expected adamw or adam")
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    params = [p for group in param_groups for p in group["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                 for p in params)
    speed = {"fused": True} if fused else {"foreach": True}
    return kind(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **speed)


def lr_factor(iteration: int, cfg: TrainConfig, total_iters: int, iters_per_epoch: int) -> float:
    """Multiplier of the base learning rate before optimiser step ``iteration`` (0-based).

    ``linear`` decays to 0 at ``total_iters`` (InstAlign; the last step, total_iters - 1, runs
    at lr / total_iters, as detectron2's poly schedule of power 1); ``step`` multiplies by
    ``lr_gamma`` at each epoch in ``lr_steps``; ``constant`` keeps it. A linear warm-up
    over ``warmup_iters`` multiplies any of them.
    """
    if cfg.lr_schedule == "linear":
        factor = max(0.0, 1.0 - iteration / max(1, total_iters))
    elif cfg.lr_schedule == "step":
        epoch = iteration // max(1, iters_per_epoch)
        factor = cfg.lr_gamma ** sum(1 for e in cfg.lr_steps if epoch >= e)
    elif cfg.lr_schedule == "constant":
        factor = 1.0
    else:
        raise ConfigError(
            f"train.lr_schedule={cfg.lr_schedule}: expected linear, step or constant"
        )
    if iteration < cfg.warmup_iters:
        factor *= (iteration + 1) / cfg.warmup_iters
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_iters: int, iters_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state is the iteration count only."""
    lr_factor(0, cfg, total_iters, iters_per_epoch)  # validate the schedule name early
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(it, cfg, total_iters, iters_per_epoch)
    )
