"""``ddkit plan``: what a recipe's run will do and cost on this device, before any image is decoded."""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli.options import ROOT_HELP, Dataset, Device, ImageFolder, JsonObject, Overrides, Profile, Recipe


def plan(
    dataset: Dataset,
    data_root: Annotated[str | None, typer.Option("--data-root", metavar="ROOT", help=ROOT_HELP + ": its "
                                                  "training images are counted (default: the full download's)")
                         ] = None,
    image_folder: ImageFolder = False,
    recipe_name: Recipe = None,
    profile: Profile = "full",
    overrides: Overrides = None,
    classes: Annotated[int | None, typer.Option("--classes", min=1, metavar="K",
                                                help="without --data-root: classes of the data (default: all)")
                       ] = None,
    train_per_class: Annotated[int | None, typer.Option(
        "--train-per-class", min=1, metavar="N",
        help="without --data-root: training images per class (default: the real download's)")] = None,
    device: Device = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate",
                                            help="time each stage's unit of work on the device")] = True,
    as_json: JsonObject = False,
) -> None:
    """The bill before the work: each stage's count, FLOPs, peak memory and time on this device."""
    from challenge_kit.cli import render
    from challenge_kit.plan import plan_for

    bill = plan_for(dataset, recipe_name, profile, overrides, data_root=data_root, image_folder=image_folder,
                    classes=classes, train_per_class=train_per_class, device=device, calibrate=calibrate)
    render.show(bill.to_dict(), as_json, render.plan_table)
