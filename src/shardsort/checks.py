"""Argument checks shared by the kernels: errors name the parameter and value."""

from __future__ import annotations

import math

import numpy as np


def check_int(name: str, value: int, minimum: int) -> int:
    """``value`` as an int, or ValueError naming ``name`` unless an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or ValueError naming ``name`` unless finite and > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def as_index_array(values) -> np.ndarray:
    """An integer array as given (an int32 column stays int32: no copy of a long
    recording's spike table), anything else converted to int64."""
    array = np.asarray(values)
    return array if array.dtype.kind in "iu" else array.astype(np.int64)
