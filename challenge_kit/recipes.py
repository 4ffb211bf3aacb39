"""Typed configs for the whole pipeline, loaded from the TOML recipes in ``submissions/``.

A dataset recipe (``submissions/cifar100.toml``) holds the paper's ``full`` profile in its top-level tables and
any other profile (``quick``, ``mini``) as overrides under ``[profiles.<name>.<section>]``. A method recipe
(``submissions/research/pad.toml``) has no ``dataset``: it is laid over a dataset recipe, naming the parts
its paper changes. The layers apply in this order: the dataset's top-level tables, the method's, the chosen
profile's tables in the dataset recipe, then in the method recipe, and ``--set section.key=value`` last. Two
rules keep a method what it is at every scale: the profiles are the dataset's (a method's ``[profiles.mini]``
adjusts the mini profile where the dataset has one and is ignored elsewhere; it never creates one), and a part
the method names is not replaced by a dataset profile (Tiny ImageNet's mini profile trains plain-SGD experts,
but not for a method that names its own objective). Every value, part name included, is checked when the
recipe is loaded, before any data is read.

A part is named by its kind's key (``mask = "deep"``) or by a table holding its name and its parameters::

    [distill.mask]
    name = "deep"
    discard_ratio = 0.25

A table without ``name`` (``[profiles.quick.distill.mask]``, ``--set distill.mask.discard_ratio=0.3``) sets the
parameters of the part chosen in the end; parameters not given keep their values (the defaults, unless a lower
layer set them). The configs keep every part's parameters as flat fields, as expert stores and checkpoints
record them; ``[distill]`` / ``discard_ratio = 0.25`` is still read.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from challenge_kit import parts
from challenge_kit.core.contract import FAITHFUL, FAST, SCORER_MODES, get_spec
from challenge_kit.core.errors import KitValueError
from challenge_kit.parts.params import below_one, coerce, non_negative, one_of, positive, problem, random_seed


def _shipped_recipes() -> Path:
    """Where the shipped recipes are: inside the installed package (a wheel carries ``submissions/`` as
    ``challenge_kit/recipes_data``), else the checkout's own ``submissions/`` (a source tree, an editable install)."""
    installed = resources.files("challenge_kit") / "recipes_data"
    return Path(str(installed)) if installed.is_dir() else Path(__file__).resolve().parent.parent / "submissions"


RECIPE_DIR = _shipped_recipes()


def _with_part_parameters(cls: type) -> type:
    """``cls`` rebuilt with, right after each field that names a kind's part, the parameters of every part of
    that kind as flat fields (declared in ``parts``), chosen or not: what expert stores and checkpoints record."""
    spec: list[tuple[str, Any, Any]] = []
    for f in fields(cls):
        spec.append((f.name, f.type, field(default=f.default, metadata=f.metadata)))
        if f.name in parts.KINDS:
            spec += [(name, p.type, field(default=p.default, metadata=p.metadata))
                     for name, (p, _) in parts.parameters(f.name).items()]
    rebuilt = make_dataclass(cls.__name__, spec, frozen=True, namespace={"__doc__": cls.__doc__})
    rebuilt.__module__ = cls.__module__
    return rebuilt


@_with_part_parameters
@dataclass(frozen=True)
class ExpertConfig:
    """FTD-style expert training (flat trajectories); ``objective`` and ``schedule`` are named parts, each followed by
    its kind's part parameters (declared in ``parts``)."""

    num_experts: int = positive(100)
    epochs: int = positive(30)
    lr: float = positive(0.01)
    momentum: float = below_one(0.0)
    weight_decay: float = non_negative(0.0)
    batch_size: int = positive(256)
    lr_decay_epoch: int = non_negative(0)  # multiply the lr by lr_decay after this epoch (0: constant lr)
    lr_decay: float = non_negative(0.5)
    objective: str = "gsam"
    schedule: str = "full"
    seed: int = random_seed(0)


@_with_part_parameters
@dataclass(frozen=True)
class DistillConfig:
    """M-DATM trajectory matching (the paper's table 1); ``init`` to ``perturb`` are named parts, each followed
    by its kind's part parameters (declared in ``parts``)."""

    iterations: int = positive(10000)
    syn_steps: int = positive(40)
    expert_epochs: int = positive(2)
    min_start_epoch: int = non_negative(0)
    current_max_start_epoch: int = non_negative(15)
    max_start_epoch: int = non_negative(20)
    interval: int = positive(100)
    batch_syn: int = positive(1000)
    lr_img: float = positive(1000.0)
    lr_lr: float = non_negative(1e-5)
    lr_init: float = positive(0.01)
    momentum: float = below_one(0.5)
    threshold: float = positive(1.0)
    grad: str = one_of("exact", parts.GRAD_MODES, "gradient mode")
    init: str = "real_correct"
    labels: str = "hard"
    mask: str = "all"
    weights: str = "uniform"
    terms: str = "final"
    perturb: str = "none"
    seed: int = random_seed(0)
    checkpoint_every: int = positive(100)


SPLITS = ("holdout", "test")


@dataclass(frozen=True)
class EvalConfig:
    """Model selection with the scorer's recipe on a short budget, on data neither experts nor distillation see.

    Every ``every`` iterations (and at iteration 0, the initialization) the set is trained on ``rounds`` times
    with the same seeds for every candidate; the best is re-scored against the initialization on
    ``final_rounds`` fresh paired seeds. ``split = "holdout"`` carves ``holdout_per_class`` images per class
    from the training split for this; ``"test"`` selects on the test split (DATM's practice). ``scorer``
    is the arithmetic the candidates are trained in: ``"fast"`` (``evaluator.fast``, shown to decide as the
    faithful one does) or ``"faithful"`` (float32, the official script's).
    """

    every: int = non_negative(1000)
    epochs: int = positive(300)
    rounds: int = positive(2)
    final_rounds: int = non_negative(6)
    split: str = one_of("holdout", SPLITS)
    holdout_per_class: int = non_negative(10)
    seed: int = random_seed(0)
    scorer: str = one_of(FAST, SCORER_MODES)


@dataclass(frozen=True)
class Recipe:
    dataset: str
    profile: str = "full"
    method: str = "M-DATM"
    description: str = ""
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def parts(self) -> dict[str, str]:
        """The part chosen for each kind (what makes this method this method)."""
        return {kind: getattr(getattr(self, f.split(".")[0]), f.split(".")[1]) for kind, f in parts.FIELDS.items()}


SECTIONS = {"experts": ExpertConfig, "distill": DistillConfig, "eval": EvalConfig}
# Fields added after runs began saving recipes, at the value that reproduces what the code did before them: a
# checkpoint written then is compared as if it had said so (``filled``).
ADDED = {"eval": {"scorer": FAITHFUL}}


def filled(saved: dict) -> dict:
    """A saved ``Recipe.to_dict()`` with the fields added since it was written (``ADDED``) at their old values."""
    return {k: {**ADDED.get(k, {}), **v} if isinstance(v, dict) and k in ADDED else v for k, v in saved.items()}
PARAMETER_KIND = {name: kind for kind in parts.KINDS for name in parts.parameters(kind)}  # flat field -> kind

# Per kind, the part parameters given without naming the part, in the order given: they must be parameters of
# the part chosen in the end, which only the last layer knows.
Loose = dict[str, tuple[str, ...]]


def _not_of(key: str, owners: list[str], kind: str, name: str) -> str:
    return f"{key} is a parameter of {' and '.join(owners)}, not of the {kind} part {name!r}"


def _known(declared: dict[str, tuple[Any, list[str]]], name: str | None) -> str:
    """The parameters of part ``name`` (None: of every part of the kind, with their parts), for a message."""
    if name is not None:
        return ", ".join(k for k, (_, owners) in declared.items() if name in owners) or "none"
    return ", ".join(f"{k} ({' and '.join(owners)})" for k, (_, owners) in declared.items()) or "none"


def _part_updates(kind: str, table: dict, at: str, loose: Loose) -> dict:
    """The fields one part table sets: the part's name (which starts a new choice) and its parameters."""
    declared = parts.parameters(kind)
    name = None if "name" not in table else coerce("str", "name", table["name"], at)
    chosen = parts.REGISTRY[kind].get(name)  # None when only parameters are given, or the name is unknown
    updates = {}
    if name is not None:
        updates[kind] = name
        loose.pop(kind, None)
    for key, value in table.items():
        if key == "name":
            continue
        if key not in declared:
            raise KitValueError(f"{at}: unknown parameter {key!r}; known: {_known(declared, chosen and name)}")
        f, owners = declared[key]
        if chosen is not None and name not in owners:
            raise KitValueError(f"{at}: {_not_of(key, owners, kind, name)}")
        updates[key] = coerce(f.type, key, value, at)
        if name is None:
            loose[kind] = (*loose.get(kind, ()), key)
    return updates


def _apply(recipe: Recipe, loose: Loose, tables: dict, where: str) -> tuple[Recipe, Loose]:
    loose = dict(loose)
    for section, values in tables.items():
        if section not in SECTIONS:
            raise KitValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise KitValueError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
        current = getattr(recipe, section)
        known = {f.name: f for f in fields(current)}
        kinds = [key for key in values if key in parts.KINDS and key in known]
        updates = {}
        for kind in kinds:  # the parts first: a parameter beside its part's name (old flat style) is given after it
            value = values[kind]
            table = value if isinstance(value, dict) else {"name": coerce("str", kind, value, f"{where} [{section}]")}
            updates |= _part_updates(kind, table, f"{where} [{section}.{kind}]", loose)
        for key, value in values.items():
            if key in kinds:
                continue
            if key not in known:
                raise KitValueError(f"{where} [{section}]: unknown key {key!r}; known: {', '.join(known)}")
            updates[key] = coerce(known[key].type, key, value, f"{where} [{section}]")
            if key in PARAMETER_KIND:
                loose[PARAMETER_KIND[key]] = (*loose.get(PARAMETER_KIND[key], ()), key)
        recipe = replace(recipe, **{section: replace(current, **updates)})
    return recipe, loose


def _named_parts(tables: dict) -> set[str]:
    """The kinds whose part a recipe's top-level tables name (``mask = "deep"`` or a table with ``name``)."""
    named = set()
    for kind, key in parts.FIELDS.items():
        section = tables.get(key.split(".")[0])
        value = section.get(kind) if isinstance(section, dict) else None
        if isinstance(value, str) or (isinstance(value, dict) and "name" in value):
            named.add(kind)
    return named


def _without_choices(tables: dict, kinds: set[str]) -> dict:
    """``tables`` without their choice of part for ``kinds``: a plain name goes, a part table loses its ``name``
    (its parameters stay, checked against the part chosen in the end)."""
    out = {}
    for section, values in tables.items():
        if isinstance(values, dict):
            values = dict(values)
            for kind in kinds:
                if parts.FIELDS[kind] != f"{section}.{kind}" or kind not in values:
                    continue
                table = values.pop(kind)
                given = {k: v for k, v in table.items() if k != "name"} if isinstance(table, dict) else {}
                if given:
                    values[kind] = given
        out[section] = values
    return out


def _validate(recipe: Recipe, where: str, loose: Loose) -> Recipe:
    """Reject values no run can use now, not hours into a run (a zero interval would crash distillation)."""
    for section in SECTIONS:
        config = getattr(recipe, section)
        for f in fields(config):
            wrong = problem(f, f"{section}.{f.name}", getattr(config, f.name))
            if wrong:
                raise KitValueError(f"{where}: {wrong}")
    _check_parts(recipe, where)
    d, e, v = recipe.distill, recipe.experts, recipe.eval
    if not d.min_start_epoch <= d.current_max_start_epoch <= d.max_start_epoch:
        raise KitValueError(f"{where}: distill needs min_start_epoch <= current_max_start_epoch <= max_start_epoch, "
                            f"got {d.min_start_epoch}, {d.current_max_start_epoch}, {d.max_start_epoch}")
    if e.epochs < d.max_start_epoch + d.expert_epochs:
        raise KitValueError(f"{where}: experts.epochs ({e.epochs}) must be at least distill.max_start_epoch "
                            f"+ distill.expert_epochs ({d.max_start_epoch} + {d.expert_epochs}): matching reads "
                            f"expert epochs up to {d.max_start_epoch + d.expert_epochs}")
    if d.label_epoch > e.epochs:
        raise KitValueError(f"{where}: distill.label_epoch = {d.label_epoch} is past the experts' {e.epochs} epochs")
    if v.split == "holdout" and v.every > 0 and v.holdout_per_class < 1:
        raise KitValueError(f"{where}: eval.holdout_per_class must be at least 1 to select on held-out data")
    for kind, given in loose.items():  # parameters given without a part's name are the chosen part's
        name = recipe.parts()[kind]
        for key in given:
            owners = parts.parameters(kind)[key][1]
            if name not in owners:
                raise KitValueError(f"{where}: {parts.FIELDS[kind]}.{_not_of(key, owners, kind, name)}")
    return recipe


def _check_parts(recipe: Recipe, where: str) -> None:
    """Every named part exists (a typo fails here, not hours into a run)."""
    for kind, name in recipe.parts().items():
        try:
            parts.check(kind, name)
        except ValueError as e:
            raise KitValueError(f"{where}: {parts.FIELDS[kind]}: {e}") from None


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["distill.iterations=50", "distill.mask.discard_ratio=0.3"]`` ->
    ``{"distill": {"iterations": "50", "mask": {"discard_ratio": "0.3"}}}`` (a part's name and parameters given
    together make one table, as in a recipe file)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise KitValueError(f"--set {item!r}: expected section.key=value, e.g. distill.iterations=500")
        table = out.setdefault(section, {})
        name, dot, param = name.partition(".")
        before = table.get(name)
        if dot:
            table[name] = {**({"name": before} if isinstance(before, str) else before or {}), param: value.strip()}
        elif isinstance(before, dict):
            table[name] = {**before, "name": value.strip()}
        else:
            table[name] = value.strip()
    return out


TOP_LEVEL = ("dataset", "method", "description", "profiles", *SECTIONS)


def recipe_path(name_or_path: str, recipe_dir: Path = RECIPE_DIR) -> Path:
    """A ``.toml`` path as given, else a shipped recipe by name: ``submissions/<name>.toml`` (datasets) or
    ``submissions/research/<name>.toml`` (methods)."""
    if name_or_path.endswith(".toml"):
        return Path(name_or_path)
    for path in (recipe_dir / f"{name_or_path}.toml", recipe_dir / "research" / f"{name_or_path}.toml"):
        if path.is_file():
            return path
    return recipe_dir / f"{name_or_path}.toml"


def read_toml(path: Path) -> dict:
    """A recipe file's tables, with its top-level keys checked."""
    if not path.is_file():
        raise KitValueError(f"{path}: recipe not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise KitValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise KitValueError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; expected {', '.join(TOP_LEVEL)}")
    for key in ("dataset", "method", "description"):
        if key in data and not isinstance(data[key], str):
            raise KitValueError(f"{path}: {key} must be a string")
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise KitValueError(f"{path}: profiles must be tables like [profiles.quick.distill]")
    return data


def load_recipe(name_or_path: str, profile: str = "full", overrides: list[str] | None = None,
                recipe_dir: Path = RECIPE_DIR, dataset: str | None = None) -> Recipe:
    """Load a dataset recipe (or a method recipe laid over ``dataset``'s), pick a profile, apply overrides."""
    path = recipe_path(name_or_path, recipe_dir)
    data = read_toml(path)
    layers = [(path, data)]
    if "dataset" not in data:  # a method recipe: laid over the dataset's own recipe
        if dataset is None:
            raise KitValueError(f"{path}: a method recipe (no 'dataset') needs the dataset it is run on")
        base = recipe_dir / f"{dataset}.toml"
        layers.insert(0, (base, read_toml(base)))
    name = layers[0][1].get("dataset")
    if not isinstance(name, str):
        raise KitValueError(f"{layers[0][0]}: missing top-level 'dataset = \"...\"'")
    if dataset is not None and dataset != name:
        raise KitValueError(f"{path}: a recipe for {name}, not {dataset}")
    try:
        get_spec(name)
    except ValueError as e:
        raise KitValueError(f"{layers[0][0]}: {e}") from None

    available = set(layers[0][1].get("profiles", {}))  # the dataset's: a method adjusts them, it adds none
    if profile != "full" and profile not in available:
        adjusts = f" ({path.name}'s [profiles.{profile}] adjusts that profile where a dataset has one; {name} " \
            "has none)" if profile in data.get("profiles", {}) and path != layers[0][0] else ""
        raise KitValueError(f"{layers[0][0]}: no profile {profile!r}; available: "
                            f"{', '.join(['full', *sorted(available)])}{adjusts}")
    recipe, loose = Recipe(dataset=name, profile=profile), {}
    for where, tables in layers:
        recipe, loose = _apply(recipe, loose, {k: v for k, v in tables.items() if k in SECTIONS}, str(where))
        recipe = replace(recipe, **{k: tables[k] for k in ("method", "description") if k in tables})
    chosen = recipe, loose
    methods_parts = _named_parts(data) if len(layers) == 2 else set()  # a dataset profile leaves them alone
    for name in sorted(available):  # every profile is checked, the chosen one is kept
        variant = recipe, loose
        for i, (where, tables) in enumerate(layers):
            scaled = tables.get("profiles", {}).get(name, {})
            variant = _apply(*variant, _without_choices(scaled, methods_parts) if i == 0 else scaled,
                             f"{where} profile {name}")
        chosen = variant if name == profile else chosen
    recipe, loose = _apply(*chosen, parse_overrides(overrides), "--set")
    where = f"{path} profile {profile}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _validate(recipe, where, loose)


def method_names(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """The method recipes of ``submissions/research/`` by name, M-DATM (the challenge's) first."""
    return sorted((p.stem for p in (recipe_dir / "research").glob("*.toml")), key=lambda n: (n != "m-datm", n))


def shipped_names(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """What ``--recipe`` takes by name: the dataset recipes, then the method recipes."""
    return sorted(p.stem for p in recipe_dir.glob("*.toml")) + method_names(recipe_dir)


def profile_names(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """Every profile a shipped dataset recipe offers: ``full`` (its top-level tables) and its ``[profiles.*]``."""
    found = {name for path in recipe_dir.glob("*.toml") for name in read_toml(path).get("profiles", {})}
    return ["full", *sorted(found)]


def shipped_methods(recipe_dir: Path = RECIPE_DIR) -> list[dict]:
    """The method recipes in ``submissions/research/``: name, method, description and the parts they choose."""
    rows = []
    for name in method_names(recipe_dir):
        recipe = load_recipe(str(recipe_dir / "research" / f"{name}.toml"), dataset="cifar100", recipe_dir=recipe_dir)
        rows.append({"name": name, "method": recipe.method, "description": recipe.description,
                     "parts": recipe.parts(), "research": recipe.distill.labels != "hard"})
    return rows
