"""Named parts: everything that differs between the seed methods, listed by name, chosen by the recipe.

A method is a recipe naming one part of each kind (``submissions/research/*.toml``); the distillation loop
and expert training call the chosen parts through one call shape per kind (``parts.kinds``) and never branch
on a method's name. ``ddkit methods`` lists what is here. The kit's own parts are declared once in
``parts.catalogue``: kind, name, implementation and the dataclass of their parameters. A recipe sets them in a
table beside the part's name (``[distill.mask]``, ``name = "deep"``, ``discard_ratio = 0.25``); a config holds
the chosen part as a ``Choice``, its name and its own parameters, which is all a store or checkpoint records of
that kind. A user's own part is named by its dotted path instead (``my_pkg.parts:MyInit``, ``parts.user``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import MISSING, fields
from typing import Any

from challenge_kit.parts.catalogue import (
    ARITHMETICS,
    FIELDS,
    GRAD_MODES,
    KINDS,
    PARTS,
    REGISTRY,
    AssignedSoftParams,
    BalancedParams,
    Choice,
    DeepParams,
    EasyFirstParams,
    FilterNoiseParams,
    GsamParams,
    LearnedSoftParams,
    Part,
    SmoothParams,
    catalogue,
    check,
    parameters,
)
from challenge_kit.parts.user import resolve

__all__ = ["ARITHMETICS", "FIELDS", "GRAD_MODES", "KINDS", "PARTS", "REGISTRY", "AssignedSoftParams",
           "BalancedParams", "Choice", "DeepParams", "EasyFirstParams", "FilterNoiseParams", "GsamParams",
           "LearnedSoftParams", "Part", "SmoothParams", "build", "catalogue", "check", "choose", "get", "is_user",
           "listing", "parameters", "part"]


def is_user(name: str) -> bool:
    """Whether ``name`` is a user's part (``module:Class``) rather than a catalogue name."""
    return ":" in name


def part(kind: str, name: str) -> Part:
    """The catalogue's part ``name`` of ``kind``, or a user's part named by its dotted path (``module:Class``,
    imported and checked against the kind's protocol); a KitValueError says what is wrong."""
    if is_user(name):
        return resolve(kind, name)
    check(kind, name)
    return REGISTRY[kind][name]


def get(kind: str, name: str) -> Any:
    """The implementation of ``kind``/``name``; a KitValueError names the known ones."""
    return part(kind, name).impl


def choose(kind: str, name: str, **values: Any) -> Choice:
    """Part ``name`` of ``kind`` with its parameters: ``values``, the defaults for the others."""
    params = part(kind, name).params
    return Choice(name, None if params is None else params(**values))


def build(kind: str, config: Any) -> Any:
    """The part of ``kind`` that ``config`` (a recipe section) chose, bound to its own parameters."""
    choice = getattr(config, kind)
    return part(kind, choice.name).bind(choice.params)


def listing(chosen: Iterable[tuple[str, str]] = ()) -> list[dict]:
    """What ``ddkit methods`` lists, by kind: the catalogue's parts, then the user parts among ``chosen`` (kind,
    name), each with its parameters' defaults (a user part's also in its summary)."""
    chosen = list(chosen)
    out = []
    for kind in KINDS:
        users = [part(kind, name) for name in sorted({n for k, n in chosen if k == kind and is_user(n)})]
        for p in [*REGISTRY[kind].values(), *users]:
            defaults = {f.name: f.default_factory() if f.default is MISSING else f.default
                        for f in (fields(p.params) if p.params else ()) if f.init}
            given = ", ".join(f"{k} = {v!r}" for k, v in defaults.items())
            summary = f"{p.summary} (parameters: {given})" if p in users and given else p.summary
            out.append({"kind": kind, "name": p.name, "summary": summary, "source": p.source, "params": defaults})
    return out
