"""The few statistics the kit reports: means with standard errors, paired differences and a verdict on them, a
smoothed loss.

Paired differences are what every comparison of sets uses: rounds that share seeds share their noise.
"""

from __future__ import annotations

import math
import statistics

SMOOTHING = 0.9  # weight of the running average in the loss's exponential moving average
TELLS = 2.0  # standard errors a paired difference must clear to count as one
BETTER, WORSE, UNDECIDED = "better", "worse", "not distinguishable at this budget"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    mean = sum(values) / len(values)
    return mean, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0)


def paired(a: list[float], b: list[float]) -> dict:
    """a - b over rounds that share seeds: mean difference and its standard error."""
    mean, se = mean_se([x - y for x, y in zip(a, b, strict=True)])
    return {"mean": mean, "se": se, "rounds": len(a)}


def verdict(diff: dict, tells: float = TELLS) -> str:
    """A paired difference in words: beyond ``tells`` standard errors either way, else undecided (as is one round,
    whose spread is unknown)."""
    if diff["rounds"] < 2 or abs(diff["mean"]) <= tells * diff["se"]:
        return UNDECIDED
    return BETTER if diff["mean"] > 0 else WORSE


def rounds_to_tell(diff: dict, tells: float = TELLS) -> int | None:
    """The fewest rounds n with ``tells * sd / sqrt(n) < |mean|`` at the spread observed (at least 2, so that
    there is a spread); None when there is no difference or no spread to go by."""
    if diff["rounds"] < 2 or diff["mean"] == 0:
        return None
    sd = diff["se"] * math.sqrt(diff["rounds"])
    return max(2, math.floor((tells * sd / abs(diff["mean"])) ** 2) + 1)


def judged(a: list[float], b: list[float], tells: float = TELLS) -> dict:
    """``paired(a, b)`` with how many standard errors it is, the verdict and the rounds it would take to tell."""
    diff = paired(a, b)
    return {**diff, "z": diff["mean"] / diff["se"] if diff["se"] > 0 else None, "verdict": verdict(diff, tells),
            "rounds_to_tell": rounds_to_tell(diff, tells)}


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
