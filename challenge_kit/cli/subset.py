"""``ddkit subset``: a few classes of a dataset in its own layout, the CPU path's data (see ``data/subset.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from challenge_kit.cli.options import DataRoot, Dataset, Download, ImageFolder, JsonManifest, out_folder
from challenge_kit.core.errors import KitFileError


def subset(
    dataset: Dataset,
    data_root: DataRoot,
    out: Annotated[str, out_folder("folder for the subset (a --data-root for every command)")],
    train_per_class: Annotated[int, typer.Option("--train-per-class", metavar="N", help="training images per "
                                                 "class (the first N in the loader's order)")],
    classes: Annotated[int | None, typer.Option("--classes", metavar="K", help="number of classes, spread evenly "
                                                "over the sorted class list")] = None,
    class_names: Annotated[list[str] | None, typer.Option("--class", metavar="NAME", help="a class to keep, by "
                                                          "name: a wnid, a CIFAR-100 fine label (repeatable)")] = None,
    class_list: Annotated[str | None, typer.Option("--class-list", metavar="FILE", help="file naming the classes "
                                                   "to keep, whitespace-separated")] = None,
    test_per_class: Annotated[int | None, typer.Option("--test-per-class", metavar="N", help="test images per "
                                                       "class (default: all)")] = None,
    download: Download = False,
    image_folder: ImageFolder = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace another subset already in --out "
                                                                "(a folder holding ddkit-subset.json only)")] = False,
    as_json: JsonManifest = False,
) -> None:
    """Write K classes of a dataset in its own on-disk layout (deterministic; the data root is never written)."""
    from challenge_kit.cli import render
    from challenge_kit.data.subset import write_subset
    from challenge_kit.data.tiny import read_text

    names = list(class_names) if class_names else None
    if class_list is not None:
        if names is not None:
            raise KitFileError(class_list, "--class-list and --class: name the classes one way")
        if not Path(class_list).is_file():
            raise KitFileError(class_list, "not found (--class-list)")
        names = read_text(Path(class_list)).split()
        if not names:
            raise KitFileError(class_list, "names no classes")
    if download and not image_folder:
        from challenge_kit.data import fetch

        fetch(dataset, data_root)
    manifest, written = write_subset(dataset, data_root, out, classes=classes, names=names,
                                     train_per_class=train_per_class, test_per_class=test_per_class,
                                     image_folder=image_folder, overwrite=overwrite)
    render.show(manifest, as_json, lambda m: typer.echo(
        f"{out}: {'wrote' if written else 'already holds'} {len(m['classes'])} classes of {m['data_root']}, "
        f"{m['train_images']} train / {m['test_images']} test images; use --data-root {out}"))
