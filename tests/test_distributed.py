"""Training under torchrun wraps the model in DistributedDataParallel without a search for
unused parameters (`refseg.engine.distributed.wrap`): every trained parameter of every
configuration must get a gradient in every step, and the wrapped gradients are the mean of
the ranks' own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_methods import METHODS

from refseg.engine import distributed

TESTS = Path(__file__).resolve().parent

# The ablation tests of both methods check every setting with a mixed batch; here, the
# default models on a batch without a referent, and a setting the ablations lack.
@pytest.mark.parametrize("name,override,counts", [
    ("instalign", "", (0, 0, 0, 0)),
    ("deris", "", (0, 0, 0, 0)),
    ("instalign", "model.poa_weight=0", (1, 3, 0, 2)),
])
def test_every_trained_parameter_gets_a_gradient(name, override, counts):
    module = METHODS[name]
    model, tokenizer = module.build(*[o for o in [override] if o])
    batch = module.make_batch(tokenizer, counts)
    model.loss(model(batch), batch)["loss"].backward()
    assert distributed.parameters_without_gradient(model) == []


def test_instalign_leaves_out_what_its_setting_does_not_read():
    """The last block's word update feeds POA alone; the pooler gives t_s alone."""
    build = METHODS["instalign"].build
    for override, words, pooler in [("", True, True),
                                    ("model.instance_supervision=mask2former", False, True),
                                    ("model.poa_weight=0", False, True),
                                    ("model.no_target_input=global", True, False),
                                    ("model.no_target_input=mean", True, False)]:
        model, _ = build(*[o for o in [override] if o])
        layers = model.decoder.object_text_layers
        assert (layers[-1].text_from_query is not None) == words, override
        assert all(layer.text_from_query is not None for layer in layers[:-1])
        trained = [p.requires_grad for p in model.text_encoder.bert.pooler.parameters()]
        assert all(trained) == pooler and any(trained) == pooler, override


def torchrun(script: str, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(TESTS / script), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name,override", [("instalign", ""),
                                           ("instalign", "model.instance_supervision=mask2former"),
                                           ("deris", ""),
                                           ("deris", "model.freeze_backbone=true")])
def test_wrapped_gradients_are_the_mean_over_ranks(name, override):
    done = torchrun("ddp_gradients.py", name, *[o for o in [override] if o])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr[-3000:]


@pytest.mark.slow
def test_a_parameter_without_gradient_under_torchrun_is_named(tmp_path):
    from engine_tinyfilm import synth

    data = synth(tmp_path / "data")
    done = torchrun("engine_launch.py", "train", "tinyfilm-test", f"data.root={data}",
                    "data.val_split=", "train.batch_size=4", "train.max_iters=2",
                    "model.spare_head=true", "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode != 0
    assert ("tinyfilm: 2 trained parameters got no gradient in the first step "
            "(spare.weight, spare.bias)") in done.stderr
