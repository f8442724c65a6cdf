"""Means and spreads for the stages' reports: finite numbers in, a finite number (or None for
no numbers) out, even for values near the float range's ends."""

from __future__ import annotations

import math
import statistics


def finite_mean(values) -> float | None:
    """The mean of finite floats without overflow (±1e308 twice has a mean, not inf); None
    for no values."""
    values = list(values)
    if not values:
        return None
    try:
        return statistics.fmean(values)
    except OverflowError:  # fsum's intermediate overflow: the scaled sum's partials stay below max |v|
        return math.fsum(v / len(values) for v in values)


def finite_pstdev(values) -> float | None:
    """The population standard deviation, computed on values scaled into [-1, 1] so that
    squaring ±1e308 cannot overflow; None for no values."""
    values = list(values)
    if not values:
        return None
    try:
        std = statistics.pstdev(values)
        if math.isfinite(std):
            return std
    except OverflowError:
        pass
    scale = max(abs(v) for v in values)
    return scale * statistics.pstdev([v / scale for v in values])


