"""Checks of single values decoded from JSON or pickles, shared by every file reader."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any) -> bool:
    """An int, not a bool (JSON's true is no id or count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value: int | float) -> bool:
    """math.isfinite, False (not OverflowError) for an integer too large for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
