"""Every dataset x shipped method x profile: exactly the combinations the README runs exist, the others are refused
in one line, and the value each layer sets arrives (the method's parts, the profile's sizes, a ``--set``)."""

from __future__ import annotations

import itertools

import pytest

from challenge_kit.core.errors import KitValueError
from challenge_kit.recipes import RECIPE_DIR, load_recipe
from challenge_kit.recipes.identity import flatten

DATASETS = ("cifar100", "tinyimagenet")
PROFILES = ("full", "quick", "mini")
EXISTS = {("cifar100", "full"), ("cifar100", "quick"),
          ("tinyimagenet", "full"), ("tinyimagenet", "quick"), ("tinyimagenet", "mini")}

# The parts each shipped method names; every other kind keeps the dataset's choice.
METHOD_PARTS = {
    "m-datm": {},
    "datm": {"labels": "learned_soft"},
    "tesla": {"labels": "assigned_soft"},
    "pad": {"schedule": "easy_first", "mask": "deep"},
    "pad-fiem": {"mask": "deep"},
    "smooth": {"objective": "smooth", "init": "kmeans", "weights": "balanced", "terms": "intermediate",
               "perturb": "filter_noise"},
    "smooth-init-balanced": {"init": "kmeans", "weights": "balanced"},
}
M_DATM = {"init": "real_correct", "labels": "hard", "mask": "all", "weights": "uniform", "terms": "final",
          "perturb": "none", "objective": "gsam", "schedule": "full"}
DATASET_PARTS = {("tinyimagenet", "mini"): {"objective": "sgd", "init": "herding"}}  # a profile's own part choices

# Each profile's scale: experts, expert epochs, iterations, synthetic batch.
SIZES = {"full": (100, 30, 10000, 1000), "quick": (2, 3, 20, 40), "mini": (3, 10, 60, 40)}
# What a method recipe sets on top of them, per profile (full: the top-level tables).
METHOD_VALUES = {
    ("smooth", "full"): {"experts.epochs": 50, "experts.lr_decay_epoch": 25, "experts.objective.clip_epochs": 5},
    ("smooth", "quick"): {"experts.lr_decay_epoch": 2, "experts.objective.clip_epochs": 1},
    ("smooth", "mini"): {"experts.lr_decay_epoch": 5, "experts.objective.clip_epochs": 1},
    ("pad", "full"): {"experts.schedule.add_end_epoch": 20, "distill.mask.discard_ratio": 0.25},
    ("pad", "quick"): {"experts.schedule.add_end_epoch": 2},
    ("pad", "mini"): {"experts.schedule.add_end_epoch": 3},
}
MATRIX = list(itertools.product(DATASETS, [None, *METHOD_PARTS], PROFILES))


def load(dataset: str, method: str | None, profile: str, overrides: list[str] | None = None):
    if method is None:
        return load_recipe(dataset, profile, overrides)
    return load_recipe(method, profile, overrides, dataset=dataset)


def value(recipe, key: str):
    """``section.field``, or ``section.kind.parameter`` of the part chosen for ``kind``."""
    section, *kind, name = key.split(".")
    config = getattr(recipe, section)
    return getattr(getattr(config, kind[0]).params if kind else config, name)


def test_the_shipped_methods_are_the_ones_listed_here():
    assert sorted(p.stem for p in (RECIPE_DIR / "research").glob("*.toml")) == sorted(METHOD_PARTS)
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.toml")) == sorted(DATASETS)


@pytest.mark.parametrize("dataset,method,profile", [c for c in MATRIX if c[::2] not in EXISTS])
def test_a_profile_the_dataset_lacks_is_refused_even_when_a_method_adjusts_it(dataset, method, profile):
    """pad.toml and smooth.toml adjust the mini profile; CIFAR-100 has none, so none is made (it used to run the
    full job under the name mini)."""
    with pytest.raises(KitValueError, match=rf"{dataset}\.toml: no profile '{profile}'; available: full, quick"):
        load(dataset, method, profile)


@pytest.mark.parametrize("dataset,method,profile", [c for c in MATRIX if c[::2] in EXISTS])
def test_every_layer_arrives(dataset, method, profile):
    recipe = load(dataset, method, profile)
    assert (recipe.dataset, recipe.profile) == (dataset, profile)
    assert recipe.parts() == {**M_DATM, **DATASET_PARTS.get((dataset, profile), {}), **METHOD_PARTS.get(method, {})}
    experts, epochs, iterations, batch = SIZES[profile]
    extra = METHOD_VALUES.get((method, profile), {})
    assert (recipe.experts.num_experts, recipe.distill.iterations, recipe.distill.batch_syn) == \
        (experts, iterations, batch)
    assert recipe.experts.epochs == extra.get("experts.epochs", epochs)
    for key, want in extra.items():
        assert value(recipe, key) == want, key

    sets = {"experts.num_experts": 1, "distill.iterations": 7, "eval.rounds": 4, "distill.seed": 11}
    if recipe.distill.mask.name == "deep":  # a parameter of the chosen part, through its table
        sets["distill.mask.discard_ratio"] = 0.5
    overridden = load(dataset, method, profile, [f"{k}={v}" for k, v in sets.items()])
    for key, want in sets.items():
        assert value(overridden, key) == want, key
    flat = flatten(recipe.to_dict())
    changed = {k for k, v in flatten(overridden.to_dict()).items() if flat[k] != v}
    assert changed <= set(sets)  # nothing else moves


def test_a_method_part_is_not_replaced_by_a_dataset_profile_but_a_set_replaces_it():
    """Tiny ImageNet's mini profile trains plain-SGD experts; smooth.toml's own objective stays, --set wins."""
    assert load("tinyimagenet", "m-datm", "mini").experts.objective.name == "sgd"
    assert load("tinyimagenet", "smooth", "mini").experts.objective.name == "smooth"
    assert load("tinyimagenet", "smooth", "mini", ["distill.init=real"]).distill.init.name == "real"
