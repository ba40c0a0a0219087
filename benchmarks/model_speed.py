"""Forward latency, training-step time and peak memory of a model config (random weights).

    .venv/bin/python benchmarks/model_speed.py CONFIG [key=value ...] [--batch 1 8]
        [--reps 3] [--device cpu|cuda] [--amp none|bf16]

Each (mode, batch) is measured in a fresh process so that its peak memory is its own:
peak resident memory on CPU (VmHWM, else ru_maxrss), peak allocated memory on CUDA. Pretrained files
are not needed: configs that read a local BERT / BEiT-3 tokenizer are switched to the
same-sized random text encoder with a word vocabulary built from a few sentences (the
vocabulary size changes the parameter count by its embedding rows only).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

SENTENCES = ["the two red squares on the left", "all circles", "the green star",
             "the second square from the left", "the circle above the blue square"]


def offline(config) -> None:
    """Swap text parts that need local files for same-sized random ones."""
    model = config.model
    if getattr(model, "text_encoder", None) == "bert" and not getattr(model, "text_encoder_path", ""):
        model.text_encoder, model.tokenizer = "bert-random", "word"
    if getattr(model, "tokenizer", None) == "beit3" and not getattr(model, "beit3_spm", ""):
        model.tokenizer = "word"


def build(name: str, overrides: list[str]):
    from refseg.config import apply_overrides
    from refseg.methods.registry import get_method, variant

    config = variant(name)
    offline(config)
    apply_overrides(config, overrides)
    method = get_method(config.method)
    tokenizer = method.build_tokenizer(config.model, config.data, SENTENCES * 4)
    model = method.build_model(config.model, tokenizer)
    return config, tokenizer, model


def make_batch(config, tokenizer, batch: int, device):
    import torch

    from refseg.modeling.contracts import Batch, Targets

    size = config.data.image_size
    tokens = tokenizer.encode([SENTENCES[i % len(SENTENCES)] for i in range(batch)])
    targets = []
    for i in range(batch):
        n = i % 3  # no target, one, two referents
        masks = torch.zeros(n, size, size)
        for k in range(n):
            masks[k, size // 4 * k: size // 4 * (k + 1), size // 4: size // 2] = 1
        targets.append(Targets(masks, torch.tensor([[0.25, 0.25 * k, 0.5, 0.25 * (k + 1)]
                                                    for k in range(n)]).reshape(n, 4), n == 0))
    images = torch.randn(batch, 3, size, size)
    return Batch(images, tokens.input_ids, tokens.pad_mask, targets, list(range(batch))).to(device)


def _peak_rss_mib() -> float:
    """This process's own peak resident memory: Linux's VmHWM (a spawned child's ru_maxrss
    can report its parent's peak when that was higher), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name, overrides, mode, batch, reps, device_name, amp, queue):
    import torch

    from refseg.engine.distributed import autocast
    from refseg.engine.schedule import build_optimizer

    torch.manual_seed(0)
    device = torch.device(device_name)
    config, tokenizer, model = build(name, overrides)
    model.to(device)
    data = make_batch(config, tokenizer, batch, device)
    params = sum(p.numel() for p in model.parameters())
    # the trainer's optimiser (its parameter groups, fused update) and gradient clipping
    optimizer = build_optimizer(model.param_groups(config.train.lr), config.train)
    clip = config.train.grad_clip

    def step():
        if mode == "forward":
            model.eval()
            with torch.no_grad(), autocast(device, amp):
                model.infer(model(data))
        else:
            model.train()
            with autocast(device, amp):
                loss = model.loss(model(data), data)["loss"]
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocations, kernel selection)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mib()
    queue.put((params, statistics.median(times), peak))


def _result(queue, proc):
    """The child's figures; exits with its status if it dies first (an error, or killed for
    memory) instead of waiting for ever."""
    import queue as queues
    import sys

    while True:
        try:
            return queue.get(timeout=1.0)
        except queues.Empty:
            if not proc.is_alive() and queue.empty():
                sys.exit(f"model_speed: the measuring process ended with status {proc.exitcode}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--modes", nargs="+", default=["forward", "train"])
    args = parser.parse_args()
    import torch

    ctx = mp.get_context("spawn")
    print(f"{args.config} {' '.join(args.overrides)} on {args.device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, amp {args.amp})")
    print(f"{'mode':<8}{'batch':>6}{'median s':>10}{'per image ms':>14}{'peak MiB':>10}")
    for mode in args.modes:
        for batch in args.batch:
            queue = ctx.Queue()
            proc = ctx.Process(target=measure, args=(args.config, args.overrides, mode, batch,
                                                     args.reps, args.device, args.amp, queue))
            proc.start()
            params, seconds, peak = _result(queue, proc)
            proc.join()
            print(f"{mode:<8}{batch:>6}{seconds:>10.3f}{1000 * seconds / batch:>14.1f}"
                  f"{peak:>10.0f}", flush=True)
    print(f"parameters: {params / 1e6:.1f} M")


if __name__ == "__main__":
    main()
