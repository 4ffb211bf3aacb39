"""A user's own part, named in a recipe or ``--set`` by its dotted path: ``my_pkg.parts:MyInit``.

The convention: a user part is a class importable in the user's environment. Its call shape is its kind's
protocol (``parts.kinds``). If it is a dataclass, its fields are its parameters (each with a default, an int,
float, bool or str, optionally declared with a constraint of ``parts.params``: ``scale: float = positive(0.5)``)
and the instance built from them is the bound part; otherwise it takes no parameters and is built without
arguments. A labels part says with its class attribute ``challenge`` whether the scorer reads what it makes.
Everything is checked when the recipe loads, and a KitValueError says what is wrong.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, fields, is_dataclass, replace
from functools import cache
from typing import Any

from challenge_kit.core.errors import KitValueError
from challenge_kit.parts.catalogue import Part
from challenge_kit.parts.kinds import misfit

TYPES = {int: "int", float: "float", bool: "bool", str: "str"}  # a parameter's type, as recipes coerce it


@dataclass(frozen=True)
class UserPart(Part):
    """A part that is a user's class: the class is the implementation and, when a dataclass, its parameters."""

    cls: type | None = None

    @property
    def impl(self) -> Any:
        return self.cls

    def bind(self, params: Any) -> Any:
        """A fresh instance: the parameters' copy (a dataclass part), else the class built without arguments."""
        return self.cls() if params is None else replace(params)


def _an(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def parameter_type(f: Any) -> str | None:
    """The recipe type of a dataclass field (``int``, ``float``, ``bool``, ``str``), or None for any other."""
    return f.type if f.type in TYPES.values() else TYPES.get(f.type)


@cache
def resolve(kind: str, path: str) -> UserPart:
    """The class ``path`` (``module:Class``) names, checked as a part of ``kind``; a KitValueError (no place: the
    loader adds it) says what is wrong."""
    module, _, attribute = path.partition(":")
    if not module or not attribute.isidentifier():
        raise KitValueError(f"{path!r}: a user part is named module:Class, e.g. my_pkg.parts:MyInit")
    try:
        found = importlib.import_module(module)
    except Exception as e:  # the user's module: any failure to import it is theirs to fix
        raise KitValueError(f"{path}: cannot import {module} ({type(e).__name__}: {e})") from None
    cls = getattr(found, attribute, None)
    if cls is None:
        raise KitValueError(f"{path}: module {module} has no {attribute}")
    if not isinstance(cls, type):
        raise KitValueError(f"{path}: is not a class ({type(cls).__name__}); a part is a class")
    wrong = misfit(kind, cls)
    if wrong:
        raise KitValueError(f"{path}: not {_an(kind)} part: {wrong}")
    if is_dataclass(cls):
        for f in fields(cls):
            if not f.init:
                continue
            if parameter_type(f) is None:
                raise KitValueError(f"{path}: parameter {f.name} is {getattr(f.type, '__name__', f.type)}; a "
                                    "part's parameters are int, float, bool or str")
            if f.default is f.default_factory:  # both MISSING: no default
                raise KitValueError(f"{path}: parameter {f.name} has no default")
    lines = (cls.__doc__ or "").strip().splitlines()  # a dataclass without one gets "Name(fields...)"
    summary = lines[0] if lines and not lines[0].startswith(f"{cls.__name__}(") else "(no docstring)"
    return UserPart(kind=kind, name=path, summary=summary, source=f"user ({module})", where=path,
                    params=cls if is_dataclass(cls) else None, challenge=bool(getattr(cls, "challenge", False)),
                    cls=cls)
