"""Paired comparisons for the benchmarks. Two sides are run alternately (A B A B ...),
so that slow spells of a shared machine fall on both; each figure is then the median
of the pairs' ratios, printed with their range. A figure that is not a positive finite
number means the measurement failed, and stops the benchmark instead of being printed."""
from __future__ import annotations

import math
import sys

import numpy as np


class BrokenMeasurement(ValueError):
    """A benchmark figure came out negative, zero or not finite."""


def run(main) -> int:
    """A benchmark's exit code: 1, with the reason on one line, when a figure is broken."""
    try:
        return main()
    except BrokenMeasurement as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def checked(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise BrokenMeasurement(
            f"{name} came out as {value!r}: timings this noisy or this short measure nothing; "
            "run more iterations or pairs, on a quieter machine")
    return value


def ratios(name: str, values: list[float]) -> str:
    """'median (min-max, n pairs)' of the pairs' ratios, each checked."""
    for i, value in enumerate(values):
        checked(f"{name}, pair {i + 1}", value)
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, {len(values)} pairs)"


def slope(xs: list[float], ys: list[float], name: str) -> tuple[float, float, float]:
    """(slope, intercept, RMS residual) of the least-squares line through (xs, ys):
    per-iteration cost from fits of several lengths, not from a difference of two."""
    if len(set(xs)) < 2:
        raise ValueError(f"{name}: a slope needs at least two different lengths")
    a, b = np.polyfit(xs, ys, 1)
    residual = float(np.sqrt(np.mean((np.polyval([a, b], xs) - np.asarray(ys)) ** 2)))
    return checked(f"{name}, seconds per iteration", float(a)), float(b), residual
