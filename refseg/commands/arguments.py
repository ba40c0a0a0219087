"""Argument types shared by the commands: each rejects a bad value with argparse's usual
one-line usage error, naming the value."""

from __future__ import annotations

import argparse
from typing import Callable


def _checked(convert: Callable[[str], float], accept: Callable[[float], bool], expected: str,
             name: str) -> Callable[[str], float]:
    """An argparse type: ``convert`` the text, then keep it only if ``accept`` holds (a
    comparison, so nan is refused)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    parse.__name__ = name
    return parse


positive_int = _checked(int, lambda v: v >= 1, "a positive integer", "positive_int")
non_negative_int = _checked(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _checked(float, lambda v: v > 0, "a positive number", "positive_float")
unit_float = _checked(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]", "unit_float")
# A scoring side: masks are resized to S x S each, so a typo of 48000 would ask for GBs.
eval_size = _checked(int, lambda v: 1 <= v <= 8192, "a side of 1 to 8192 pixels", "eval_size")
