"""`torchrun --nproc_per_node 2 tests/ddp_gradients.py METHOD [OVERRIDE ...]`: three steps
of a method's small test model wrapped as training wraps it (`distributed.wrap`), each
rank on its own batch; every gradient must equal the mean over the ranks of the gradients
an unwrapped copy computes on the same batches. Prints ``ok`` on rank 0, else exits 1."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tiny_methods import METHODS  # noqa: E402

from refseg.engine import distributed  # noqa: E402

# Each rank's batch: no-target, single and multi-target samples, differently mixed.
COUNTS = [(1, 3, 0, 2), (2, 0, 1, 1)]


def gradients(model) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
            for p in model.parameters() if p.requires_grad]


def main(name: str, overrides: list[str]) -> int:
    ctx = distributed.init("cpu")
    torch.set_num_threads(1)
    module = METHODS[name]
    model, tokenizer = module.build(*overrides)
    reference, _ = module.build(*overrides)
    reference.load_state_dict(model.state_dict())
    wrapped = distributed.wrap(model, ctx)
    worst = 0.0
    for step in range(3):
        torch.manual_seed(100 * step + ctx.rank)
        batch = module.make_batch(tokenizer, COUNTS[ctx.rank % 2])
        for net, forward in ((model, wrapped), (reference, reference)):
            torch.manual_seed(step)  # the same points sampled for both copies
            net.zero_grad(set_to_none=True)
            net.loss(forward(batch), batch)["loss"].backward()
        for got, own in zip(gradients(model), gradients(reference)):
            dist.all_reduce(own)
            worst = max(worst, (got - own / ctx.world_size).abs().max().item())
        with torch.no_grad():  # move both copies alike, so the next step differs
            for p, q in zip(model.parameters(), reference.parameters()):
                if p.grad is not None:
                    p -= 1e-3 * p.grad
                q.copy_(p)
    missing = distributed.parameters_without_gradient(model)
    if ctx.is_main:
        print("ok" if worst < 1e-5 and not missing else
              f"gradients differ from the mean over ranks by {worst}; no gradient: {missing}")
    distributed.shutdown()
    return 0 if worst < 1e-5 and not missing else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
