"""Settings that carry their own constraint: every number (and every choice by name) of a recipe field or a part's
parameter is declared with the check its value must pass, ``epochs: int = positive(30)``, so the check cannot
drift from the declaration. Plain data, no torch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import Field, dataclass, field
from typing import Any

from challenge_kit.core.errors import KitValueError
from challenge_kit.core.seeds import MAX_SEED


@dataclass(frozen=True)
class Check:
    """A constraint by name; ``wrong(key, value)`` says what is wrong with ``value`` for the field ``key``, or
    None. Called with a default, it declares a field that carries it."""

    name: str
    wrong: Callable[[str, Any], str | None]

    def __call__(self, default: Any) -> Any:
        return field(default=default, metadata={"check": self})


def _number(says: str, test: Callable[[Any], bool], zero_floor: bool = True) -> Callable[[str, Any], str | None]:
    """A number's check: nothing when ``test`` passes, else "KEY says, got -1" (with ``zero_floor``, a negative
    value is told "must not be negative" first)."""
    def wrong(key: str, value: Any) -> str | None:
        if test(value):
            return None
        return f"{key} {'must not be negative' if zero_floor and value < 0 else says}, got {value!r}"
    return wrong


non_negative = Check("non_negative", _number("must not be negative", lambda v: v >= 0))  # counts, epochs, rates
positive = Check("positive", _number("must be positive", lambda v: v > 0, False))  # sizes and rates, never 0
signed = Check("signed", lambda key, value: None)  # any value, negative included (-1 for "the last")
fraction = Check("fraction", _number("is a fraction", lambda v: 0 <= v <= 1))  # a share, in [0, 1]
below_one = Check("below_one", _number("must be below 1", lambda v: 0 <= v < 1))  # an SGD momentum, in [0, 1)
# A random stream's seed: each seed in 0..MAX_SEED draws its own stream (a negative one would wrap onto another).
random_seed = Check("seed", _number(f"must be a seed in 0..{MAX_SEED}", lambda v: 0 <= v <= MAX_SEED, False))


def one_of(default: str, choices: tuple[str, ...], noun: str | None = None) -> Any:
    """A choice by name among ``choices``: refused as "KEY: unknown NOUN 'x'; known: a, b" (or, without a noun,
    "KEY must be one of a, b, got 'x'")."""
    known = ", ".join(choices)

    def wrong(key: str, value: Any) -> str | None:
        if value in choices:
            return None
        return f"{key}: unknown {noun} {value!r}; known: {known}" if noun else \
            f"{key} must be one of {known}, got {value!r}"
    return Check(f"one_of {known}", wrong)(default)


def problem(f: Field, key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``f``, called ``key`` in the message, or None."""
    check = f.metadata.get("check")
    return None if check is None else check.wrong(key, value)


def coerce(kind: str, key: str, value: Any, where: str) -> Any:
    """Check a TOML value's type, ``kind`` being the field's annotation (ints are accepted for floats);
    ``--set`` strings are parsed first."""
    if isinstance(value, str) and kind != "str":
        text = value.strip().lower()
        try:
            value = {"bool": lambda: {"true": True, "false": False, "1": True, "0": False}[text],
                     "int": lambda: int(text), "float": lambda: float(text)}[kind]()
        except (KeyError, ValueError):
            raise KitValueError(f"{where}: {key} must be {kind}, got {value!r}") from None
    ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool),
          "str": isinstance(value, str)}[kind]
    if not ok or (kind == "float" and not math.isfinite(value)):
        raise KitValueError(f"{where}: {key} must be {kind}, got {value!r}")
    return float(value) if kind == "float" else value
