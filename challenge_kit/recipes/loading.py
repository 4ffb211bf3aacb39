"""Loading a recipe: the files, their layers, ``--set``, and the listing of methods for ``ddkit methods``.

A dataset recipe (``submissions/cifar100.toml``) holds the paper's ``full`` profile in its top-level tables and
any other profile (``quick``, ``mini``) as overrides under ``[profiles.<name>.<section>]``. A method recipe
(``submissions/research/pad.toml``) has no ``dataset``: it is laid over a dataset recipe, naming the parts
its paper changes. The layers apply in this order: the dataset's top-level tables, the method's, the chosen
profile's tables in the dataset recipe, then in the method recipe, and ``--set section.key=value`` last. Two
rules keep a method what it is at every scale: the profiles are the dataset's (a method's ``[profiles.mini]``
adjusts the mini profile where the dataset has one and is ignored elsewhere; it never creates one), and a part
the method names is not replaced by a dataset profile (Tiny ImageNet's mini profile trains plain-SGD experts,
but not for a method that names its own objective). Every value, part name included, is checked when the
recipe is loaded, before any data is read (``draft``).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from challenge_kit import parts
from challenge_kit.core.contract import get_spec
from challenge_kit.core.errors import KitValueError
from challenge_kit.recipes.configs import SECTIONS, Recipe
from challenge_kit.recipes.draft import Draft


def _shipped_recipes() -> Path:
    """Where the shipped recipes are: inside the installed package (a wheel carries ``submissions/`` as
    ``challenge_kit/recipes_data``), else the checkout's own ``submissions/`` (a source tree, an editable install)."""
    installed = resources.files("challenge_kit") / "recipes_data"
    return Path(str(installed)) if installed.is_dir() else Path(__file__).resolve().parents[2] / "submissions"


RECIPE_DIR = _shipped_recipes()


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
    except KitValueError as e:
        raise KitValueError(f"{layers[0][0]}: {e}") from None

    available = set(layers[0][1].get("profiles", {}))  # the dataset's: a method adjusts them, it adds none
    if profile != "full" and profile not in available:
        adjusts = f" ({path.name}'s [profiles.{profile}] adjusts that profile where a dataset has one; {name} " \
            "has none)" if profile in data.get("profiles", {}) and path != layers[0][0] else ""
        raise KitValueError(f"{layers[0][0]}: no profile {profile!r}; available: "
                            f"{', '.join(['full', *sorted(available)])}{adjusts}")
    draft = Draft.start(name, profile)
    for where, tables in layers:
        draft = draft.apply({k: v for k, v in tables.items() if k in SECTIONS}, str(where))
        draft.top |= {k: tables[k] for k in ("method", "description") if k in tables}
    chosen = draft
    methods_parts = _named_parts(data) if len(layers) == 2 else set()  # a dataset profile leaves them alone
    for name in sorted(available):  # every profile is checked, the chosen one is kept
        variant = draft
        for i, (where, tables) in enumerate(layers):
            scaled = tables.get("profiles", {}).get(name, {})
            variant = variant.apply(_without_choices(scaled, methods_parts) if i == 0 else scaled,
                                    f"{where} profile {name}")
        chosen = variant if name == profile else chosen
    where = f"{path} profile {profile}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return chosen.apply(parse_overrides(overrides), "--set").finish(where)


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


def shipped_methods(recipe_dir: Path = RECIPE_DIR, extra: list[str] | None = None) -> list[dict]:
    """The method recipes in ``submissions/research/``, then ``extra`` (recipe names or paths): name, method,
    description, the parts they choose and whether the labels part makes research sets. A method recipe is
    read over CIFAR-100's (the parts it chooses are the same over any dataset), a dataset recipe as it is."""
    paths = [recipe_dir / "research" / f"{name}.toml" for name in method_names(recipe_dir)]
    paths += [p for p in (recipe_path(r, recipe_dir) for r in extra or []) if p not in paths]
    rows = []
    for path in paths:
        dataset = None if "dataset" in read_toml(path) else "cifar100"
        recipe = load_recipe(str(path), dataset=dataset, recipe_dir=recipe_dir)
        labels = parts.part("labels", recipe.distill.labels.name)
        rows.append({"name": path.stem, "method": recipe.method, "description": recipe.description,
                     "parts": recipe.parts(), "research": not labels.challenge})
    return rows
