"""The options several commands share, each declared once: the same flag, help and type wherever it appears.

A command gives the default (or none, for a required option) in its own signature.
"""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.core.errors import KitValueError

ROOT_HELP = "folder holding cifar-100-python/, or the tiny-imagenet-200 tree"
PROFILE_HELP = "recipe profile: full (the paper's settings), quick (a CPU smoke run) or mini (a CPU run that improves)"
SET_HELP = "override a recipe value, e.g. --set distill.iterations=500 (repeatable)"
DROP_HELP = "export a research set (learned or assigned labels) as images alone; the manifest records it"
RECIPE_HELP = "method recipe: a shipped name (m-datm, datm, tesla, pad, smooth) or a .toml (default: the dataset's)"
CACHE_HELP = "decoded-data cache (default $XDG_CACHE_HOME/ddkit or ~/.cache/ddkit)"
OVERWRITE_HELP = "replace what an earlier command left at the output (by default such a file is refused, named)"
FOLDER_HELP = "read ROOT as an ImageFolder ROOT/{train,test}/<class>/* (DATASET sets image size and statistics)"
REPLACE_HELP = "train again experts of the store that were trained with other settings (seed, lr, data, ...)"

SetPath = Annotated[str, typer.Argument(
    help="challenge .pt (bare tensor), kit artifact (.safetensors) or submission .zip")]
ExpertStore = Annotated[str, typer.Argument(help="ddkit expert store")]
Dataset = Annotated[str, typer.Argument(help="cifar100 or tinyimagenet")]
DatasetOrSubset = Annotated[str, typer.Argument(help="cifar100 or tinyimagenet (a mini folder gives a subset spec)")]

DataRoot = Annotated[str, typer.Option("--data-root", help=ROOT_HELP)]
Recipe = Annotated[str | None, typer.Option("--recipe", help=RECIPE_HELP)]
Profile = Annotated[str, typer.Option("--profile", help=PROFILE_HELP)]
Overrides = Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)]
Device = Annotated[str | None, typer.Option("--device", help="torch device (default: cuda if available)")]
CacheDir = Annotated[str | None, typer.Option("--cache-dir", help=CACHE_HELP)]
Download = Annotated[bool, typer.Option("--download", help="download CIFAR-100 first (needs the internet)")]
ImageFolder = Annotated[bool, typer.Option("--image-folder", help=FOLDER_HELP)]
DropLabels = Annotated[bool, typer.Option("--drop-labels", help=DROP_HELP)]
ReplaceExperts = Annotated[bool, typer.Option("--replace-experts", help=REPLACE_HELP)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
JsonObject = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]
JsonManifest = Annotated[bool, typer.Option("--json", help="print the manifest as JSON")]


def checked_seed(value: int | None) -> int | None:
    """A ``--seed`` within the bound every random stream takes, refused as the option is read: before any data is
    read, not when the first generator is seeded."""
    if value is None:
        return None
    from challenge_kit.core.seeds import seed_problem  # torch: imported by the commands that take a seed only

    problem = seed_problem(value)
    if problem is not None:
        raise KitValueError(f"--seed: {problem}")
    return value


def seed_option(help: str):
    """Every command's ``--seed``: its own help, the one bound."""
    return typer.Option("--seed", help=help, callback=checked_seed)
