"""Both methods' small test models, for tests that put each through the same paces
(mixed precision, the GPU path)."""

from __future__ import annotations

import test_deris_model as deris
import test_instalign_model as instalign
import torch

METHODS = {"instalign": instalign, "deris": deris}


def built(name: str, *, train: bool = True):
    """(model, tokenizer, batch) of a method's small test config; the batch mixes one, many,
    none and two targets. The model is in training mode unless ``train`` is False."""
    module = METHODS[name]
    model, tokenizer = module.build()
    model.train(train)
    return model, tokenizer, module.make_batch(tokenizer)


def bad_gradients(model: torch.nn.Module, device_type: str | None = None) -> list[str]:
    """Names of trained parameters whose gradient is missing or not finite (or, with
    ``device_type``, on another device)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and (
        p.grad is None or not torch.isfinite(p.grad).all()
        or (device_type is not None and p.grad.device.type != device_type))]
