"""The GPU path, skipped on a machine without CUDA.

The rest of the suite proves the models, the trainer and the predictor on CPU; these tests
check what only a GPU exercises: tensors a model creates itself (sampled points, matching
costs, masks) landing on the model's device, CUDA autocast in bf16 and fp16 with the fp16
gradient scaler, the same forward on GPU as on CPU, and a model trained on the GPU
loading on either device. Run them where a GPU is present:

    .venv/bin/python -m pytest -q tests/test_cuda.py
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_methods import METHODS, bad_gradients, built

from refseg.config import apply_overrides
from refseg.data.synth import generate
from refseg.engine.distributed import autocast
from refseg.engine.trainer import train
from refseg.methods.registry import variant
from refseg.modeling.ops import ms_deform_attn
from refseg.predictor import load

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture
def exact_fp32():
    """Full fp32 matmuls and convolutions, so that GPU and CPU differ by rounding only."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def test_ms_deform_attn_on_gpu_equals_cpu():
    """The CPU path equals transformers' reference (test_ms_deform_attn); the GPU one the CPU."""
    shapes = [(7, 3), (4, 2), (2, 1), (1, 1)]
    gen = torch.Generator().manual_seed(0)
    tokens = sum(h * w for h, w in shapes)
    cpu = [torch.randn(2, tokens, 4, 8, generator=gen, dtype=torch.float64),
           torch.rand(2, 9, 4, len(shapes), 3, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3,
           torch.rand(2, 9, 4, len(shapes), 3, generator=gen, dtype=torch.float64)]
    gpu = [t.to(CUDA) for t in cpu]
    for t in (*cpu, *gpu):
        t.requires_grad_(True)
    out_cpu = ms_deform_attn(cpu[0], shapes, *cpu[1:])
    out_gpu = ms_deform_attn(gpu[0], shapes, *gpu[1:])
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, atol=1e-10, rtol=1e-10)
    upstream = torch.randn_like(out_cpu)
    (out_cpu * upstream).sum().backward()
    (out_gpu * upstream.to(CUDA)).sum().backward()
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.grad.cpu(), a.grad, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_inference_on_gpu_equals_cpu(name, exact_fp32):
    model, _, batch = built(name, train=False)
    gpu_model = copy.deepcopy(model).to(CUDA)
    with torch.no_grad():
        on_cpu = model.infer(model(batch))
        on_gpu = gpu_model.infer(gpu_model(batch.to(CUDA)))
    for field in ("merged_logits", "no_target_prob", "instance_logits", "instance_scores"):
        torch.testing.assert_close(getattr(on_gpu, field).cpu(), getattr(on_cpu, field),
                                   atol=1e-3, rtol=1e-3, msg=field)


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_gpu_training_step_under_autocast(name, amp):
    """The trainer's autocast on CUDA: a finite fp32 loss close to the fp32 one (the same
    sampled points), finite gradients on the GPU for every trained parameter."""
    model, _, batch = built(name)
    model.to(CUDA)
    batch = batch.to(CUDA)

    def losses(mode):
        torch.manual_seed(0)  # seeds CUDA too: the same points in every call
        with autocast(CUDA, mode):
            return model.loss(model(batch), batch)

    reference, loss = losses("none")["loss"], losses(amp)["loss"]
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
    assert loss.item() == pytest.approx(reference.item(), rel=0.02)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    scaler.scale(loss).backward()
    bad = bad_gradients(model, device_type="cuda")
    assert not bad, bad


def test_model_trained_on_gpu_predicts_alike_on_either_device(tmp_path, exact_fp32):
    data = generate(tmp_path / "synth", images=12, size=64, seed=1)
    config = variant("instalign-tiny")
    apply_overrides(config, [
        f"data.root={data}", f"data.images={data / 'images'}", "train.batch_size=4",
        "train.max_iters=6", "train.max_minutes=0", "train.warmup_iters=2",
        "train.eval_every=3", "train.eval_max_samples=8", "train.checkpoint_every=3",
        "train.device=cuda", "train.amp=bf16",
    ])
    result = train(config, tmp_path / "run", progress=False)
    image = next((data / "images").iterdir())
    on_cpu = load(result.checkpoint, device="cpu").predict(image, "the red circle")
    on_gpu = load(result.checkpoint, device="cuda").predict(image, "the red circle")
    assert on_gpu.no_target_score == pytest.approx(on_cpu.no_target_score, abs=1e-3)
    assert on_gpu.mask.shape == on_cpu.mask.shape == np.asarray(Image.open(image)).shape[:2]
    assert (on_gpu.mask == on_cpu.mask).mean() > 0.99
