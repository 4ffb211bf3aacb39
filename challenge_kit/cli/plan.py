"""``ddkit plan``: what a recipe's run will do and cost on this device, before any data is read."""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli.options import Dataset, Device, JsonObject, Overrides, Profile, Recipe


def plan(
    dataset: Dataset,
    recipe_name: Recipe = None,
    profile: Profile = "full",
    overrides: Overrides = None,
    classes: Annotated[int | None, typer.Option("--classes", min=1,
                                                help="classes of the data the run reads (default: all)")] = None,
    train_per_class: Annotated[int | None, typer.Option(
        "--train-per-class", min=1, help="training images per class (default: the real download's)")] = None,
    device: Device = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate",
                                            help="time each stage's unit of work on the device")] = True,
    as_json: JsonObject = False,
) -> None:
    """The bill before the work: each stage's count, FLOPs, peak memory and time on this device."""
    from challenge_kit.cli import render
    from challenge_kit.core.contract import get_spec
    from challenge_kit.core.devices import usable_device
    from challenge_kit.plan import make_plan, train_images
    from challenge_kit.recipes import load_recipe

    recipe = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset)
    spec = get_spec(recipe.dataset)
    if classes is not None and classes != spec.num_classes:
        spec = spec.subset(classes)
    bill = make_plan(recipe, spec, train_images(recipe, spec, train_per_class), usable_device(device), calibrate)
    render.show(bill.to_dict(), as_json, render.plan_table)
