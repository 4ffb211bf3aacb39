"""Typed configs for the whole pipeline, loaded from the TOML recipes in ``submissions/``.

``configs`` holds the typed sections, ``loading`` reads the files and their layers (profiles, method recipes,
``--set``) through a ``draft``, and ``identity`` says what an expert store and a checkpoint are compared on.

A part is named by its kind's key (``mask = "deep"``), by a user's dotted path (``init = "my_pkg.parts:MyInit"``),
or by a table holding its name and its parameters::

    [distill.mask]
    name = "deep"
    discard_ratio = 0.25

A table without ``name`` (``[profiles.quick.distill.mask]``, ``--set distill.mask.discard_ratio=0.3``) sets the
parameters of the part chosen in the end; parameters not given keep their values (the defaults, unless a lower
layer set them). ``[distill]`` / ``discard_ratio = 0.25`` is still read. A config holds the chosen part only:
its name and its own parameters.
"""

from challenge_kit.recipes.configs import SECTIONS, SPLITS, DistillConfig, EvalConfig, ExpertConfig, Recipe
from challenge_kit.recipes.loading import (
    RECIPE_DIR,
    load_recipe,
    method_names,
    parse_overrides,
    profile_names,
    read_toml,
    recipe_path,
    shipped_methods,
    shipped_names,
)

__all__ = ["RECIPE_DIR", "SECTIONS", "SPLITS", "DistillConfig", "EvalConfig", "ExpertConfig", "Recipe", "load_recipe",
           "method_names", "parse_overrides", "profile_names", "read_toml", "recipe_path", "shipped_methods",
           "shipped_names"]
