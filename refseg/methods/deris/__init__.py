"""DeRIS (Decoupling Perception and Cognition with Loopback Synergy): a Mask2Former
perception branch and a BEiT-3 cognition branch exchanging object queries after every
decoder layer; the refer probability of each instance decides the output.

Exposes ``METHOD`` and ``VARIANTS`` for `refseg.methods.registry`; heavy modules are
imported only when a model or tokenizer is built.
"""

from __future__ import annotations

from refseg.methods.deris.config import VARIANTS, DerisConfig
from refseg.methods.registry import Method


def build_model(model_cfg: DerisConfig, tokenizer):
    from refseg.methods.deris.model import build_deris

    return build_deris(model_cfg, tokenizer)


def build_tokenizer(model_cfg: DerisConfig, data_cfg, train_sentences: list[str]):
    from refseg.methods.deris.model import build_tokenizer as _build

    return _build(model_cfg, data_cfg, train_sentences)


def load_tokenizer(model_cfg: DerisConfig, directory: str):
    from refseg.methods.deris.model import load_tokenizer as _load

    return _load(model_cfg, directory)


METHOD = Method(
    name="deris",
    config_class=DerisConfig,
    build_model=build_model,
    build_tokenizer=build_tokenizer,
    load_tokenizer=load_tokenizer,
)

__all__ = ["METHOD", "VARIANTS", "DerisConfig"]
