"""Mixed precision: both methods' forward, loss, backward and decision under autocast.

The trainer and `refseg eval` run the model and its loss inside `torch.autocast` on GPU
(`train.amp`). CPU autocast applies the same casting rules to the same ops, so these tests
catch dtype mismatches (a bf16 activation meeting an fp32 one outside an autocast op, a
bf16 cost matrix handed to scipy) without a GPU.
"""

import pytest
import torch
from test_instalign_model import one_thread  # noqa: F401  (autouse: tiny tensors, one thread)
from tiny_methods import METHODS, bad_gradients, built

from refseg.engine.postprocess import to_result
from refseg.modeling.base import Thresholds

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def losses_of(model, batch, dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same sampled points for matching and losses in every call
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        return model.loss(model(batch), batch)


@pytest.mark.parametrize("amp", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_autocast_trains_like_fp32(name, amp):
    model, _, batch = built(name)
    reference = losses_of(model, batch, None)
    losses = losses_of(model, batch, DTYPES[amp])
    assert losses["loss"].dtype == torch.float32
    # same sampled points; bf16 keeps 8 bits of mantissa, fp16 11 (measured: <= 0.11 %)
    assert losses["loss"].item() == pytest.approx(reference["loss"].item(), rel=0.01)
    losses["loss"].backward()
    bad = bad_gradients(model)
    assert not bad, bad


@pytest.mark.parametrize("amp", sorted(DTYPES))
@pytest.mark.parametrize("name", sorted(METHODS))
def test_autocast_decisions_reach_the_image(name, amp):
    model, _, batch = built(name, train=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=DTYPES[amp]):
        decisions = model.decide(model.infer(model(batch)), Thresholds(instance=0.0))
    for decision in decisions:
        result = to_result(decision, 48, 80, Thresholds(instance=0.0))
        assert result.mask.shape == (48, 80) and result.mask.dtype == bool
        assert all(inst.mask.shape == (48, 80) for inst in result.instances)
