"""One process or `torchrun --nproc_per_node N`: process group, ranks, gathering.

Under torchrun the environment names the rank and world size; the backend is NCCL on GPU
and gloo on CPU. Outside torchrun everything here degrades to the single-process case, so
the trainer and the evaluator are written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands.

    Attributes:
        rank: global rank, 0 is the one that writes files and prints.
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        device: the device this process computes on.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:K`` -> a device (auto picks CUDA if present)."""
    from refseg.errors import ConfigError

    if preference in ("", "auto"):
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={preference}: CUDA is not available on this machine")
        if preference == "cuda":
            return torch.device("cuda", local_rank)
    try:
        device = torch.device(preference)
    except RuntimeError:
        raise ConfigError(f"device={preference}: not a device (auto, cpu, cuda)") from None
    if device.type not in ("cpu", "cuda"):  # e.g. mps, xpu: refseg runs on CPU and CUDA
        raise ConfigError(f"device={preference}: refseg runs on cpu or cuda")
    return device


def init(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun; else one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    where = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group(backend="nccl" if where.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, where)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over ranks (itself in one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over ranks (one small all-reduce)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(flags)
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """``model`` as a DistributedDataParallel replica under torchrun, else ``model``.

    Every trained parameter must get a gradient in every step: the models build only what
    their config uses (tested per ablation), so DDP does not search the graph for unused
    parameters each step. (That search marks what the forward outputs reach, not what the
    loss does: an output left out of the loss stalls its bucket and leaves the gradients
    sharing it unaveraged.)
    """
    if not ctx.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        find_unused_parameters=False,
    )


def parameters_without_gradient(model: torch.nn.Module) -> list[str]:
    """Names of the parameters that require a gradient and have none after a backward."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on GPU (``amp`` = none | bf16 | fp16); a no-op elsewhere."""
    import contextlib

    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if dtype is None:
        from refseg.errors import ConfigError

        raise ConfigError(f"train.amp={amp}: expected none, bf16 or fp16")
    return torch.autocast(device_type="cuda", dtype=dtype)
