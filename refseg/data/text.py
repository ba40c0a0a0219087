"""Text normalisation of referring expressions shared by tokenizers and augmentations."""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"[.,'!?\"()*#:;]")


def clean_expression(text: str) -> str:
    """Lower-case, drop punctuation, split hyphenated and slashed words.

    The normalisation DeRIS and InstanceVG apply before BEiT-3 tokenisation
    (``clean_string`` in their loading pipelines): "Man's red-shirt." -> "mans red shirt".
    """
    return _PUNCTUATION.sub("", text.lower()).replace("-", " ").replace("/", " ")


def words(text: str) -> list[str]:
    """Words of an expression after `clean_expression`, split on whitespace."""
    return clean_expression(text).split()
