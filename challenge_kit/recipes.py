"""Typed configs for the whole pipeline, loaded from the TOML recipes in ``submissions/``.

A recipe file holds the paper's ``full`` profile in its top-level tables and any other profile
(``quick``) as overrides under ``[profiles.<name>.<section>]``; ``--set section.key=value`` applies last.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from challenge_kit.contract import get_spec

RECIPE_DIR = Path(__file__).resolve().parent.parent / "submissions"


@dataclass(frozen=True)
class ExpertConfig:
    """FTD-style expert training (SPEC section 4)."""

    num_experts: int = 100
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    optimizer: str = "gsam"
    rho: float = 0.01
    alpha: float = 0.3
    adaptive: bool = True
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
    grad: str = "exact"
    init: str = "real_correct"
    seed: int = 0
    checkpoint_every: int = 100


@dataclass(frozen=True)
class EvalConfig:
    """Model selection with the scorer's recipe on a short budget."""

    every: int = 1000
    epochs: int = 300
    rounds: int = 1
    batch_size: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Recipe:
    dataset: str
    profile: str = "full"
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = {"experts": ExpertConfig, "distill": DistillConfig, "eval": EvalConfig}


# Fields that must be >= 1 (counts, sizes) or > 0 (rates); every other number must be >= 0, seeds excepted.
POSITIVE = {
    "experts": ("num_experts", "epochs", "lr", "batch_size"),
    "distill": ("iterations", "syn_steps", "expert_epochs", "interval", "batch_syn", "lr_img", "lr_init",
                "threshold", "checkpoint_every"),
    "eval": ("epochs", "rounds", "batch_size"),
}


def _coerce(cls, key: str, value, where: str):
    """Check a TOML value's type (ints are accepted for floats); ``--set`` strings are parsed first."""
    types = {f.name: f.type for f in fields(cls)}
    if key not in types:
        raise ValueError(f"{where}: unknown key {key!r}; known: {', '.join(types)}")
    kind = types[key]
    if isinstance(value, str) and kind != "str":
        text = value.strip().lower()
        try:
            value = {"bool": lambda: {"true": True, "false": False, "1": True, "0": False}[text],
                     "int": lambda: int(text), "float": lambda: float(text)}[kind]()
        except (KeyError, ValueError):
            raise ValueError(f"{where}: {key} must be {kind}, got {value!r}") from None
    ok = {"bool": isinstance(value, bool), "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, int | float) and not isinstance(value, bool),
          "str": isinstance(value, str)}[kind]
    if not ok or (kind == "float" and not math.isfinite(value)):
        raise ValueError(f"{where}: {key} must be {kind}, got {value!r}")
    return float(value) if kind == "float" else value


def _apply(recipe: Recipe, tables: dict, where: str) -> Recipe:
    for section, values in tables.items():
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ValueError(f"{where}: [{section}] must be a table of key = value, got {values!r}")
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
            if f.type not in ("int", "float") or f.name == "seed":
                continue
            if f.name in POSITIVE[section] and not value > 0:
                raise ValueError(f"{where}: {section}.{f.name} must be positive, got {value}")
            if value < 0:
                raise ValueError(f"{where}: {section}.{f.name} must not be negative, got {value}")
        if getattr(config, "momentum", 0) >= 1:
            raise ValueError(f"{where}: {section}.momentum must be below 1, got {config.momentum}")
    d = recipe.distill
    if not d.min_start_epoch <= d.current_max_start_epoch <= d.max_start_epoch:
        raise ValueError(f"{where}: distill needs min_start_epoch <= current_max_start_epoch <= max_start_epoch, "
                         f"got {d.min_start_epoch}, {d.current_max_start_epoch}, {d.max_start_epoch}")
    if recipe.experts.epochs < d.max_start_epoch + d.expert_epochs:
        raise ValueError(f"{where}: experts.epochs ({recipe.experts.epochs}) must be at least distill.max_start_epoch "
                         f"+ distill.expert_epochs ({d.max_start_epoch} + {d.expert_epochs}): matching reads "
                         f"expert epochs up to {d.max_start_epoch + d.expert_epochs}")
    return recipe


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["distill.iterations=50"]`` -> ``{"distill": {"iterations": "50"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ValueError(f"--set {item!r}: expected section.key=value, e.g. distill.iterations=500")
        out.setdefault(section, {})[name] = value.strip()
    return out


def load_recipe(dataset_or_path: str, profile: str = "full", overrides: list[str] | None = None,
                recipe_dir: Path = RECIPE_DIR) -> Recipe:
    """Load ``submissions/<dataset>.toml`` (or a path to a TOML file), pick a profile, apply overrides."""
    path = Path(dataset_or_path)
    if path.suffix != ".toml":
        path = recipe_dir / f"{dataset_or_path}.toml"
    if not path.is_file():
        raise ValueError(f"{path}: recipe not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - {"dataset", "profiles", *SECTIONS})
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; "
                         f"expected dataset, {', '.join(SECTIONS)}, profiles")
    dataset = data.get("dataset")
    if not isinstance(dataset, str):
        raise ValueError(f"{path}: missing top-level 'dataset = \"...\"'")
    try:
        get_spec(dataset)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ValueError(f"{path}: profiles must be tables like [profiles.quick.distill]")
    recipe = _apply(Recipe(dataset=dataset), {k: v for k, v in data.items() if k in SECTIONS}, str(path))
    variants = {name: _apply(recipe, tables, f"{path} profile {name}") for name, tables in profiles.items()}
    if profile != "full":
        if profile not in variants:
            raise ValueError(f"{path}: no profile {profile!r}; available: full, {', '.join(profiles)}")
        recipe = variants[profile]
    recipe = _apply(replace(recipe, profile=profile), parse_overrides(overrides), "--set")
    where = f"{path} profile {profile}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    return _validate(recipe, where)
