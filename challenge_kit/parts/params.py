"""Settings that carry their own constraint: a recipe field or a part's parameter is declared with the check its
value must pass, so the check cannot drift from the declaration. Plain data, no torch."""

from __future__ import annotations

import math
from dataclasses import Field, field
from typing import Any

from challenge_kit.core.errors import KitValueError

# A number is checked to be >= 0 unless its field is declared with one of these.


def _checked(default: Any, check: str) -> Any:
    return field(default=default, metadata={"check": check})


def positive(default: Any) -> Any:
    """Counts, sizes and rates: > 0."""
    return _checked(default, "positive")


def signed(default: Any) -> Any:
    """Any value, negative included (seeds; -1 for "the last")."""
    return _checked(default, "signed")


def fraction(default: Any) -> Any:
    """A share, in [0, 1]."""
    return _checked(default, "fraction")


def below_one(default: Any) -> Any:
    """An SGD momentum, in [0, 1)."""
    return _checked(default, "below_one")


def problem(f: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for the field ``f`` ("must be positive, got 0"), or None."""
    check = f.metadata.get("check")
    if f.type not in ("int", "float") or check == "signed":
        return None
    if check == "positive" and not value > 0:
        return f"must be positive, got {value}"
    if value < 0:
        return f"must not be negative, got {value}"
    if check == "fraction" and value > 1:
        return f"is a fraction, got {value}"
    if check == "below_one" and value >= 1:
        return f"must be below 1, got {value}"
    return None


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
