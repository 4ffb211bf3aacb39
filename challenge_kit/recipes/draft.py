"""A recipe while its layers are laid one over another: plain values per section and, per kind, the part chosen
so far with every parameter value given so far; ``finish`` turns it into the typed ``Recipe``, checked.

A part table with ``name`` starts a new choice of part and is checked against that part at once. A parameter
given without a name (a table without ``name``, ``--set distill.mask.discard_ratio=0.3``, or the flat spelling
``[distill] discard_ratio = 0.3``) is meant for the part chosen in the end, which only the last layer knows: it
is checked against it in ``finish``. A value given for one part stays for a later choice of another part of the
same kind that takes a parameter of that name.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field, fields
from typing import Any

from challenge_kit import parts
from challenge_kit.core.errors import KitValueError
from challenge_kit.parts import Choice
from challenge_kit.parts.params import coerce, problem
from challenge_kit.parts.user import parameter_type
from challenge_kit.recipes.configs import SECTIONS, Recipe

Declared = dict[str, tuple[str, list[str]]]  # a kind's parameters: name -> (type, the parts that take it)


def _not_of(key: str, owners: list[str], kind: str, name: str) -> str:
    return f"{key} is a parameter of {' and '.join(owners)}, not of the {kind} part {name!r}"


def _known(declared: Declared, name: str | None) -> str:
    """The parameters of part ``name`` (None: of every part of the kind, with their parts), for a message."""
    if name is not None:
        return ", ".join(k for k, (_, owners) in declared.items() if name in owners) or "none"
    return ", ".join(f"{k} ({' and '.join(owners)})" for k, (_, owners) in declared.items()) or "none"


def _own(part: parts.Part) -> Declared:
    """The parameters of one part (a catalogue part's or a user's)."""
    return {f.name: (parameter_type(f), [part.name]) for f in fields(part.params) if f.init} if part.params else {}


def _declared(kind: str, users: list[parts.Part]) -> Declared:
    """Every parameter of the catalogue's parts of ``kind`` and of the user parts named for it so far."""
    out = {name: (f.type, list(owners)) for name, (f, owners) in parts.parameters(kind).items()}
    for part in users:
        for name, (type_, owners) in _own(part).items():
            out.setdefault(name, (type_, []))[1].extend(owners)
    return out


@dataclass
class PartDraft:
    """One kind: the part chosen so far, every parameter value given (for whichever part), the parameters given
    without a name since the last choice, and the user parts named (resolved when named)."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    loose: list[str] = field(default_factory=list)
    users: list[parts.Part] = field(default_factory=list)

    def user(self) -> parts.Part | None:
        """The user part chosen now, if that is one."""
        return next((p for p in self.users if p.name == self.name), None)


@dataclass
class Draft:
    """The recipe so far: ``apply`` lays a layer over it, ``finish`` makes the typed recipe."""

    dataset: str
    profile: str
    plain: dict[str, dict[str, Any]]  # section -> field -> value, the parts' fields aside
    chosen: dict[str, PartDraft]  # kind -> its part so far
    top: dict[str, str] = field(default_factory=dict)  # method, description

    @classmethod
    def start(cls, dataset: str, profile: str) -> Draft:
        """The configs' defaults, before any layer."""
        plain, chosen = {}, {}
        for section, config in ((s, c()) for s, c in SECTIONS.items()):
            for f in fields(config):
                if f.name in parts.KINDS:
                    chosen[f.name] = PartDraft(getattr(config, f.name).name)
                else:
                    plain.setdefault(section, {})[f.name] = getattr(config, f.name)
        return cls(dataset, profile, plain, chosen)

    def copy(self) -> Draft:
        return deepcopy(self)

    def apply(self, tables: dict, where: str) -> Draft:
        """This draft with one layer's tables (``section -> {key: value}``) laid over it."""
        out = self.copy()
        for section, values in tables.items():
            if section not in SECTIONS:
                raise KitValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
            if not isinstance(values, dict):
                raise KitValueError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
            known = {f.name: f.type for f in fields(SECTIONS[section])}
            kinds = [key for key in values if key in parts.KINDS and key in known]
            for kind in kinds:  # the parts first: a parameter beside its part's name (flat style) comes after it
                value = values[kind]
                table = value if isinstance(value, dict) else {"name": coerce("str", kind, value,
                                                                               f"{where} [{section}]")}
                out._part_table(kind, table, f"{where} [{section}.{kind}]")
            flat = {name: kind for kind in known if kind in parts.KINDS for name in parts.parameters(kind)}
            for key, value in values.items():
                if key in kinds:
                    continue
                if key in flat:  # the flat spelling of a part's parameter
                    draft = out.chosen[flat[key]]
                    draft.values[key] = coerce(parts.parameters(flat[key])[key][0].type, key, value,
                                               f"{where} [{section}]")
                    draft.loose.append(key)
                elif key not in known:
                    raise KitValueError(f"{where} [{section}]: unknown key {key!r}; known: {', '.join(known)}")
                else:
                    out.plain[section][key] = coerce(known[key], key, value, f"{where} [{section}]")
        return out

    def _part_table(self, kind: str, table: dict, at: str) -> None:
        """One part table: the part's name (which starts a new choice, checked at once) and parameters."""
        draft = self.chosen[kind]
        name = None if "name" not in table else coerce("str", "name", table["name"], at)
        chosen = None  # the part this table names, when it is one
        if name is not None:
            if parts.is_user(name):
                try:
                    chosen = parts.part(kind, name)
                except KitValueError as e:
                    raise KitValueError(f"{at}: {e}") from None
                if chosen not in draft.users:
                    draft.users.append(chosen)
            else:
                chosen = parts.REGISTRY[kind].get(name)  # an unknown name is refused in ``finish``
            draft.name, draft.loose = name, []
        user = draft.user()
        own = _own(user) if user else {}
        declared = _declared(kind, [user] if user else [])
        for key, value in table.items():
            if key == "name":
                continue
            if chosen is not None and chosen == user:  # a table naming a user part: its own parameters only
                if key not in own:
                    raise KitValueError(f"{at}: unknown parameter {key!r}; known: {_known(own, name)}")
            elif key not in declared:
                raise KitValueError(f"{at}: unknown parameter {key!r}; known: {_known(declared, chosen and name)}")
            elif chosen is not None and name not in declared[key][1]:
                raise KitValueError(f"{at}: {_not_of(key, declared[key][1], kind, name)}")
            draft.values[key] = coerce((own.get(key) or declared[key])[0], key, value, at)
            if name is None:
                draft.loose.append(key)

    def finish(self, where: str) -> Recipe:
        """The typed recipe, every value checked: no run can use a wrong one now, not hours into a run."""
        sections = {}
        for section, cls in SECTIONS.items():
            values = {}
            for f in fields(cls):
                if f.name in parts.KINDS:
                    values[f.name] = self._choice(section, f.name, where)
                else:
                    values[f.name] = self.plain[section][f.name]
                    wrong = problem(f, f"{section}.{f.name}", values[f.name])
                    if wrong:
                        raise KitValueError(f"{where}: {wrong}")
            sections[section] = cls(**values)
        recipe = Recipe(dataset=self.dataset, profile=self.profile, **self.top, **sections)
        _check_together(recipe, where)
        for kind, draft in self.chosen.items():  # parameters given without a part's name are the chosen part's
            declared = _declared(kind, draft.users)
            for key in draft.loose:
                owners = declared[key][1]
                if draft.name not in owners:
                    raise KitValueError(f"{where}: {parts.FIELDS[kind]}.{_not_of(key, owners, kind, draft.name)}")
        return recipe

    def _choice(self, section: str, kind: str, where: str) -> Choice:
        """The part chosen in the end with its own parameters: the values given for them, else the defaults."""
        draft = self.chosen[kind]
        try:
            part = parts.part(kind, draft.name)
        except KitValueError as e:
            raise KitValueError(f"{where}: {parts.FIELDS[kind]}: {e}") from None
        if part.params is None:
            return Choice(draft.name)
        own = [f for f in fields(part.params) if f.init]
        params = part.params(**{f.name: draft.values[f.name] for f in own if f.name in draft.values})
        for f in own:
            wrong = problem(f, f"{section}.{f.name}", getattr(params, f.name))
            if wrong:
                raise KitValueError(f"{where}: {wrong}")
        return Choice(draft.name, params)


def _check_together(recipe: Recipe, where: str) -> None:
    """The values that must agree with each other."""
    d, e, v = recipe.distill, recipe.experts, recipe.eval
    if not d.min_start_epoch <= d.current_max_start_epoch <= d.max_start_epoch:
        raise KitValueError(f"{where}: distill needs min_start_epoch <= current_max_start_epoch <= max_start_epoch, "
                            f"got {d.min_start_epoch}, {d.current_max_start_epoch}, {d.max_start_epoch}")
    if e.epochs < d.max_start_epoch + d.expert_epochs:
        raise KitValueError(f"{where}: experts.epochs ({e.epochs}) must be at least distill.max_start_epoch "
                            f"+ distill.expert_epochs ({d.max_start_epoch} + {d.expert_epochs}): matching reads "
                            f"expert epochs up to {d.max_start_epoch + d.expert_epochs}")
    label_epoch = getattr(d.labels.params, "label_epoch", None)
    if label_epoch is not None and label_epoch > e.epochs:
        raise KitValueError(f"{where}: distill.label_epoch = {label_epoch} is past the experts' {e.epochs} epochs")
    if v.split == "holdout" and v.every > 0 and v.holdout_per_class < 1:
        raise KitValueError(f"{where}: eval.holdout_per_class must be at least 1 to select on held-out data")
