"""Run a function on N gloo processes on this machine (tests of code that all-reduces)."""

import os
import socket
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, fn, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn, world: int, *args) -> list:
    """fn(rank, *args) on ``world`` gloo processes; fn must be importable (a module-level
    function). Returns the ranks' results in rank order."""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(world, _free_port(), fn, args, results), nprocs=world)
    return [results[r] for r in range(world)]
