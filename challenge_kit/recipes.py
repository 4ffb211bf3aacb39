"""Typed configs for the whole pipeline, loaded from the TOML recipes in ``submissions/``.

A recipe file holds the paper's ``full`` profile in its top-level tables and any other profile
(``quick``) as overrides under ``[profiles.<name>.<section>]``; ``--set section.key=value`` applies last.
"""

from __future__ import annotations

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


def _coerce(cls, key: str, value, where: str):
    types = {f.name: f.type for f in fields(cls)}
    if key not in types:
        raise ValueError(f"{where}: unknown key {key!r}; known: {', '.join(types)}")
    kind = types[key]
    if kind == "bool":
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
            return value.lower() in ("true", "1")
        return bool(value)
    try:
        return {"int": int, "float": float, "str": str}[kind](value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key} must be {kind}, got {value!r}") from None


def _apply(recipe: Recipe, tables: dict, where: str) -> Recipe:
    for section, values in tables.items():
        if section not in SECTIONS:
            raise ValueError(f"{where}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        current = getattr(recipe, section)
        updates = {k: _coerce(cls, k, v, f"{where} [{section}]") for k, v in values.items()}
        recipe = replace(recipe, **{section: replace(current, **updates)})
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
    dataset = data.get("dataset")
    if not isinstance(dataset, str):
        raise ValueError(f"{path}: missing top-level 'dataset = \"...\"'")
    get_spec(dataset)
    profiles = data.get("profiles", {})
    recipe = _apply(Recipe(dataset=dataset), {k: v for k, v in data.items() if k in SECTIONS}, str(path))
    if profile != "full":
        if profile not in profiles:
            raise ValueError(f"{path}: no profile {profile!r}; available: full, {', '.join(profiles)}")
        recipe = _apply(recipe, profiles[profile], f"{path} profile {profile}")
    recipe = replace(recipe, profile=profile)
    return _apply(recipe, parse_overrides(overrides), "--set")
