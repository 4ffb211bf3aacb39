"""Typed configs for the whole pipeline, loaded from the TOML recipes in ``submissions/``.

A dataset recipe (``submissions/cifar100.toml``) holds the paper's ``full`` profile in its top-level tables and
any other profile (``quick``, ``mini``) as overrides under ``[profiles.<name>.<section>]``. A method recipe
(``submissions/research/pad.toml``) has no ``dataset``: it is laid over a dataset recipe, naming the parts
its paper changes. ``--set section.key=value`` applies last. Every value, part name included, is checked
when the recipe is loaded, before any data is read.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from challenge_kit import parts
from challenge_kit.core.contract import get_spec
from challenge_kit.core.errors import KitValueError

RECIPE_DIR = Path(__file__).resolve().parent.parent / "submissions"


@dataclass(frozen=True)
class ExpertConfig:
    """FTD-style expert training (SPEC section 4); ``objective`` and ``schedule`` are named parts."""

    num_experts: int = 100
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    lr_decay_epoch: int = 0  # multiply the lr by lr_decay after this epoch (0: constant lr)
    lr_decay: float = 0.5
    objective: str = "gsam"
    rho: float = 0.01  # gsam
    alpha: float = 0.3
    adaptive: bool = True
    clip_start: float = 0.5  # smooth: clipped CE coefficient rises from clip_start to 1 over clip_epochs
    clip_epochs: int = 5
    gp_weight: float = 1.0  # smooth: gradient penalty mu and target K
    gp_target: float = 1.0
    schedule: str = "full"
    initial_ratio: float = 0.75  # easy_first (PAD FIEX)
    add_end_epoch: int = 20
    drop_easy: float = 0.1
    score_models: int = 2  # EL2N: models averaged, epochs each is trained
    score_epochs: int = 2
    seed: int = 0


@dataclass(frozen=True)
class DistillConfig:
    """M-DATM trajectory matching (SPEC section 5, table 1)."""

    iterations: int = 10000
    syn_steps: int = 40
    expert_epochs: int = 2
    min_start_epoch: int = 0
    current_max_start_epoch: int = 15
    max_start_epoch: int = 20
    interval: int = 100
    batch_syn: int = 1000
    lr_img: float = 1000.0
    lr_lr: float = 1e-5
    lr_init: float = 0.01
    momentum: float = 0.5
    threshold: float = 1.0
    grad: str = "exact"  # one of GRAD_MODES
    init: str = "real_correct"
    labels: str = "hard"
    lr_labels: float = 10.0  # learned_soft (DATM): SGD on the label logits
    labels_momentum: float = 0.9
    label_epoch: int = -1  # expert snapshot whose logits make soft labels (-1: the last)
    label_experts: int = 0  # experts whose logits are averaged (0: all)
    mask: str = "all"
    discard_ratio: float = 0.25  # deep (PAD FIEM): share of the flat parameters (shallow first) left out
    weights: str = "uniform"
    balance_offset: float = 8.0  # balanced: nu = log(|t - T+/2| + offset)
    terms: str = "final"
    perturb: str = "none"
    perturb_scale: float = 0.1  # filter_noise: noise norm relative to each filter's
    seed: int = 0
    checkpoint_every: int = 100


GRAD_MODES = ("exact", "unrolled")  # matching.match: the constant-memory adjoint, or autograd through N steps
SPLITS = ("holdout", "test")


@dataclass(frozen=True)
class EvalConfig:
    """Model selection with the scorer's recipe on a short budget, on data neither experts nor distillation see.

    Every ``every`` iterations (and at iteration 0, the initialization) the set is trained on ``rounds`` times
    with the same seeds for every candidate; the best is re-scored against the initialization on
    ``final_rounds`` fresh paired seeds. ``split = "holdout"`` carves ``holdout_per_class`` images per class
    from the training split for this; ``"test"`` selects on the test split (DATM's practice).
    """

    every: int = 1000
    epochs: int = 300
    rounds: int = 2
    final_rounds: int = 6
    split: str = "holdout"
    holdout_per_class: int = 10
    seed: int = 0


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


# Fields that must be >= 1 (counts, sizes) or > 0 (rates); every other number must be >= 0, except these.
POSITIVE = {
    "experts": ("num_experts", "epochs", "lr", "batch_size", "add_end_epoch", "score_models", "score_epochs"),
    "distill": ("iterations", "syn_steps", "expert_epochs", "interval", "batch_syn", "lr_img", "lr_init",
                "threshold", "checkpoint_every", "balance_offset"),
    "eval": ("epochs", "rounds"),
}
SIGNED = ("seed", "label_epoch")
FRACTIONS = {"experts": ("initial_ratio", "drop_easy", "clip_start"), "distill": ("discard_ratio",)}


def _coerce(cls, key: str, value, where: str):
    """Check a TOML value's type (ints are accepted for floats); ``--set`` strings are parsed first."""
    types = {f.name: f.type for f in fields(cls)}
    if key not in types:
        raise KitValueError(f"{where}: unknown key {key!r}; known: {', '.join(types)}")
    kind = types[key]
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


def _apply(recipe: Recipe, tables: dict, where: str) -> Recipe:
    for section, values in tables.items():
        if section not in SECTIONS:
            raise KitValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise KitValueError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
        cls = SECTIONS[section]
        current = getattr(recipe, section)
        updates = {k: _coerce(cls, k, v, f"{where} [{section}]") for k, v in values.items()}
        recipe = replace(recipe, **{section: replace(current, **updates)})
    return recipe


def _validate(recipe: Recipe, where: str) -> Recipe:
    """Reject values no run can use now, not hours into a run (a zero interval would crash distillation)."""
    for section in SECTIONS:
        config = getattr(recipe, section)
        for f in fields(config):
            value = getattr(config, f.name)
            if f.type not in ("int", "float") or f.name in SIGNED:
                continue
            if f.name in POSITIVE[section] and not value > 0:
                raise KitValueError(f"{where}: {section}.{f.name} must be positive, got {value}")
            if value < 0:
                raise KitValueError(f"{where}: {section}.{f.name} must not be negative, got {value}")
            if f.name in FRACTIONS.get(section, ()) and value > 1:
                raise KitValueError(f"{where}: {section}.{f.name} is a fraction, got {value}")
        for name in ("momentum", "labels_momentum"):
            if getattr(config, name, 0) >= 1:
                raise KitValueError(f"{where}: {section}.{name} must be below 1, got {getattr(config, name)}")
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
    if v.split not in SPLITS:
        raise KitValueError(f"{where}: eval.split must be one of {', '.join(SPLITS)}, got {v.split!r}")
    if v.split == "holdout" and v.every > 0 and v.holdout_per_class < 1:
        raise KitValueError(f"{where}: eval.holdout_per_class must be at least 1 to select on held-out data")
    return recipe


def _check_parts(recipe: Recipe, where: str) -> None:
    """Every named part and every other choice by name exists (a typo fails here, not hours into a run)."""
    for kind, name in recipe.parts().items():
        try:
            parts.check(kind, name)
        except KitValueError as e:
            raise KitValueError(f"{where}: {parts.FIELDS[kind]}: {e}") from None
    if recipe.distill.grad not in GRAD_MODES:
        raise KitValueError(f"{where}: distill.grad: unknown gradient mode {recipe.distill.grad!r}; "
                         f"known: {', '.join(GRAD_MODES)}")


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["distill.iterations=50"]`` -> ``{"distill": {"iterations": "50"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise KitValueError(f"--set {item!r}: expected section.key=value, e.g. distill.iterations=500")
        out.setdefault(section, {})[name] = value.strip()
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

    recipe = Recipe(dataset=name, profile=profile)
    for where, tables in layers:
        recipe = _apply(recipe, {k: v for k, v in tables.items() if k in SECTIONS}, str(where))
        recipe = replace(recipe, **{k: tables[k] for k in ("method", "description") if k in tables})
    available = {p for _, tables in layers for p in tables.get("profiles", {})}
    if profile != "full" and profile not in available:
        raise KitValueError(f"{path}: no profile {profile!r}; available: full, {', '.join(sorted(available))}")
    chosen = recipe
    for name in sorted(available):  # every profile is checked, the chosen one is kept
        variant = recipe
        for where, tables in layers:
            variant = _apply(variant, tables.get("profiles", {}).get(name, {}), f"{where} profile {name}")
        chosen = variant if name == profile else chosen
    recipe = chosen
    recipe = _apply(recipe, parse_overrides(overrides), "--set")
    where = f"{path} profile {profile}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _validate(recipe, where)


def shipped_methods(recipe_dir: Path = RECIPE_DIR) -> list[dict]:
    """The method recipes in ``submissions/research/``: name, method, description and the parts they choose."""
    rows = []
    paths = sorted((recipe_dir / "research").glob("*.toml"), key=lambda p: (p.stem != "m-datm", p.stem))
    for path in paths:
        recipe = load_recipe(str(path), dataset="cifar100", recipe_dir=recipe_dir)
        rows.append({"name": path.stem, "method": recipe.method, "description": recipe.description,
                     "parts": recipe.parts(), "research": recipe.distill.labels != "hard"})
    return rows
