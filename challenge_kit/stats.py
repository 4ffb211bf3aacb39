"""The few statistics the kit reports: means with standard errors, paired differences, a smoothed loss.

Paired differences are what every comparison of sets uses: rounds that share seeds share their noise.
"""

from __future__ import annotations

import math
import statistics

SMOOTHING = 0.9  # weight of the running average in the loss's exponential moving average


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def paired(a: list[float], b: list[float]) -> dict:
    """a - b over rounds that share seeds: mean difference and its standard error."""
    mean, se = mean_se([x - y for x, y in zip(a, b, strict=True)])
    return {"mean": mean, "se": se, "rounds": len(a)}


def ema(average: float | None, value: float, factor: float = SMOOTHING) -> float | None:
    """One step of an exponential moving average; a NaN value leaves it as it was."""
    if value != value:
        return average
    return value if average is None else factor * average + (1 - factor) * value


def smooth(values: list[float], factor: float = SMOOTHING) -> list[float]:
    """The moving average after each value (NaN until the first finite one)."""
    out, average = [], None
    for v in values:
        average = ema(average, v, factor)
        out.append(float("nan") if average is None else average)
    return out
