"""Names at the edge: method name -> `Method`, variant name -> run-config factory.

Filled in one visible place; each method module exposes ``METHOD`` and ``VARIANTS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from refseg.errors import ConfigError

# method name -> module defining METHOD and VARIANTS
_MODULES = {
    "instalign": "refseg.methods.instalign",
    "deris": "refseg.methods.deris",
}


@dataclass(frozen=True)
class Method:
    """How to build one method.

    Attributes:
        name: e.g. "instalign".
        config_class: the method's model config dataclass.
        build_model: (model_config, tokenizer) -> RefSegModel.
        build_tokenizer: (model_config, data_config, train_sentences) -> tokenizer with
            ``encode``/``save``; sentences let offline variants build a vocabulary.
        load_tokenizer: (model_config, directory) -> the tokenizer saved by ``save``.
    """

    name: str
    config_class: type
    build_model: Callable[[Any, Any], Any]
    build_tokenizer: Callable[[Any, Any, list[str]], Any]
    load_tokenizer: Callable[[Any, str], Any]


def _module(method: str):
    if method not in _MODULES:
        raise ConfigError(f"unknown method {method!r} (known: {', '.join(sorted(_MODULES))})")
    try:
        return importlib.import_module(_MODULES[method])
    except ModuleNotFoundError as exc:
        if exc.name == _MODULES[method]:
            raise ConfigError(f"method {method!r} is not available in this build") from None
        raise


def get_method(name: str) -> Method:
    return _module(name).METHOD


def variants() -> dict[str, Callable]:
    """All named run configs, e.g. {"instalign-tiny": fn, ...}."""
    out = {}
    for method in _MODULES:
        try:
            out.update(getattr(_module(method), "VARIANTS", {}))
        except ConfigError:
            continue
    return out


def variant(name: str):
    """A fresh RunConfig for a named variant (its method is the name's first word)."""
    method = name.split("-", 1)[0]
    if method in _MODULES:
        table = getattr(_module(method), "VARIANTS", {})
        if name in table:
            return table[name]()
    table = variants()
    if name not in table:
        raise ConfigError(f"unknown config {name!r} (known: {', '.join(sorted(table))})")
    return table[name]()
