"""The options several commands share, each declared once: the same flag, help and type wherever it appears.

A command gives the default (or none, for a required option) in its own signature. Datasets, profiles, recipes,
devices and tracking sinks are choices: the help lists them, the shell completes them, and a value outside them is
a usage error naming them (``unknown dataset 'cifar10'; choose cifar100 or tinyimagenet``). ``--out`` is always
a folder; a command that writes one file takes ``--out-file``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import typer

from challenge_kit.core.contract import SPECS
from challenge_kit.core.devices import DEVICES, known_device
from challenge_kit.core.errors import KitValueError
from challenge_kit.parts.catalogue import CORESETS
from challenge_kit.recipes import method_names, profile_names, shipped_names
from challenge_kit.tracking import SINKS


def listing(names: Sequence[str]) -> str:
    """``a, b or c``."""
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else list(names))


def choice(what: str, names: Sequence[str], accept: Callable[[str], bool] | None = None,
           extra: str = "") -> Callable[[str], str]:  # extra: what ``accept`` takes, in words
    """A parser taking one of ``names`` (or what ``accept`` takes), else a usage error naming them all."""
    def parse(value: str) -> str:
        if value in names or (accept is not None and accept(value)):
            return value
        raise typer.BadParameter(f"unknown {what} {value!r}; choose {listing([*names, *([extra] if extra else [])])}")

    return parse


def completion(names: Sequence[str]) -> Callable[[str], list[str]]:
    return lambda incomplete: [n for n in names if n.startswith(incomplete)]


DATASETS = tuple(SPECS)
PROFILES = tuple(profile_names())
RECIPES = tuple(shipped_names())
dataset_choice = choice("dataset", DATASETS)


def sink_choice(value: str) -> str:
    """``SINK`` or ``SINK=DIR``."""
    choice("sink", SINKS)(value.partition("=")[0])
    return value


ROOT_HELP = "folder holding cifar-100-python/, or the tiny-imagenet-200 tree"
PROFILE_HELP = (f"recipe profile: {listing(PROFILES)}; full is the paper's (a GPU job), quick a CPU smoke run, mini a "
                "CPU run that improves (Tiny ImageNet)")
SET_HELP = "override a recipe value, e.g. --set distill.iterations=500 (repeatable)"
DROP_HELP = "export a research set (learned or assigned labels) as images alone; the manifest records it"
RECIPE_HELP = (f"recipe: a method ({', '.join(method_names())}), a dataset's ({listing(DATASETS)}) or a .toml file "
               "(default: the dataset's)")
CACHE_HELP = "decoded-data cache (default $XDG_CACHE_HOME/ddkit or ~/.cache/ddkit)"
OVERWRITE_HELP = "replace what an earlier command left at the output (by default such a file is refused, named)"
FOLDER_HELP = "read ROOT as an ImageFolder ROOT/{train,test}/<class>/* (DATASET sets image size and statistics)"
REPLACE_HELP = "train again experts of the store that were trained with other settings (seed, lr, data, ...)"
DATASET_HELP = listing(DATASETS)

SetPath = Annotated[str, typer.Argument(
    metavar="FILE", help="challenge .pt (bare tensor), kit artifact (.safetensors) or submission .zip")]
ExpertStore = Annotated[str, typer.Argument(metavar="STORE", help="ddkit expert store (a folder)")]
Dataset = Annotated[str, typer.Argument(metavar="DATASET", parser=dataset_choice,
                                        autocompletion=completion(DATASETS), help=DATASET_HELP)]
DatasetOrSubset = Annotated[str, typer.Argument(metavar="DATASET", parser=dataset_choice,
                                                autocompletion=completion(DATASETS),
                                                help=f"{DATASET_HELP} (a folder of fewer classes gives a subset spec)")]
DatasetOption = Annotated[str | None, typer.Option("--dataset", metavar="DATASET", parser=dataset_choice,
                                                   autocompletion=completion(DATASETS),
                                                   help=f"{DATASET_HELP} (default: inferred)")]

DataRoot = Annotated[str, typer.Option("--data-root", metavar="ROOT", help=ROOT_HELP)]
Recipe = Annotated[str | None, typer.Option("--recipe", metavar="RECIPE", help=RECIPE_HELP,
                                            parser=choice("recipe", RECIPES, lambda v: v.endswith(".toml"),
                                                          "a .toml file"),
                                            autocompletion=completion(RECIPES))]
Profile = Annotated[str, typer.Option("--profile", metavar="|".join(PROFILES), help=PROFILE_HELP,
                                      parser=choice("profile", PROFILES), autocompletion=completion(PROFILES))]
Overrides = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=SET_HELP)]
Device = Annotated[str | None, typer.Option("--device", metavar="DEVICE",
                                            parser=choice("device", DEVICES, known_device),
                                            autocompletion=completion(DEVICES),
                                            help=f"torch device: {listing(DEVICES)} (default: cuda if available)")]
CacheDir = Annotated[str | None, typer.Option("--cache-dir", metavar="DIR", help=CACHE_HELP)]
Download = Annotated[bool, typer.Option("--download", help="download CIFAR-100 first (needs the internet)")]
ImageFolder = Annotated[bool, typer.Option("--image-folder", help=FOLDER_HELP)]
DropLabels = Annotated[bool, typer.Option("--drop-labels", help=DROP_HELP)]
ReplaceExperts = Annotated[bool, typer.Option("--replace-experts", help=REPLACE_HELP)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
Track = Annotated[list[str] | None, typer.Option("--track", metavar="SINK[=DIR]", parser=sink_choice,
                                                 autocompletion=completion(SINKS),
                                                 help=f"also watch the run in {listing(SINKS)} (offline unless "
                                                      "WANDB_MODE says otherwise), in DIR (default: in the run "
                                                      "folder); repeatable")]
JsonObject = Annotated[bool, typer.Option("--json", help="print one JSON object on stdout")]
JsonManifest = Annotated[bool, typer.Option("--json", help="print the manifest as JSON")]


def out_folder(help: str):
    """``--out``: always a folder."""
    return typer.Option("--out", metavar="DIR", help=help)


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


BASELINE_METHODS = ("random", *CORESETS)  # `ddkit baseline --method`, also `ddkit compare --baseline`
ScoreEpochs = Annotated[int, typer.Option("--score-epochs", metavar="E", help="epochs of the scorer-trained networks "
                                          "whose features and difficulty scores pick the coresets")]
ScoreModels = Annotated[int, typer.Option("--score-models", metavar="M", help="those networks: EL2N averaged and "
                                          "forgetting events summed over them")]


def seed_option(help: str, name: str = "--seed"):
    """Every command's seeds: their own help, the one bound; a second seed of one command needs its own name."""
    return typer.Option(name, metavar="SEED", help=help, callback=checked_seed)

