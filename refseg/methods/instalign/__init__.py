"""InstAlign (Phrase-Instance Alignment for GRES): a text-conditioned Mask2Former with
Phrase-Object Alignment, relevance-weighted Instance Aggregation and a no-target predictor.

Exposes ``METHOD`` and ``VARIANTS`` for `refseg.methods.registry`; heavy modules are
imported only when a model or tokenizer is built.
"""

from __future__ import annotations

from refseg.methods.instalign.config import VARIANTS, InstAlignConfig
from refseg.methods.registry import Method


def build_model(model_cfg: InstAlignConfig, tokenizer):
    from refseg.methods.instalign.model import build_instalign

    return build_instalign(model_cfg, tokenizer)


def build_tokenizer(model_cfg: InstAlignConfig, data_cfg, train_sentences: list[str]):
    from refseg.methods.instalign.model import build_tokenizer as _build

    return _build(model_cfg, data_cfg, train_sentences)


def load_tokenizer(model_cfg: InstAlignConfig, directory: str):
    from refseg.methods.instalign.model import load_tokenizer as _load

    return _load(model_cfg, directory)


METHOD = Method(
    name="instalign",
    config_class=InstAlignConfig,
    build_model=build_model,
    build_tokenizer=build_tokenizer,
    load_tokenizer=load_tokenizer,
)

__all__ = ["METHOD", "VARIANTS", "InstAlignConfig"]
