"""Commands on real data and the expert stores trained on it: the scorer's reference file, training experts,
importing and exporting DATM/MTT replay buffers, listing a store.

Every call into ``challenge_kit.experts`` from the command line is here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from challenge_kit.cli.options import (
    CacheDir,
    DataRoot,
    Dataset,
    DatasetOrSubset,
    Device,
    Download,
    ExpertStore,
    ImageFolder,
    JsonObject,
    Overrides,
    Overwrite,
    Profile,
    Recipe,
    ReplaceExperts,
    dataset_choice,
    out_folder,
    seed_option,
)
from challenge_kit.core.errors import KitFileError


def reference(
    dataset: Dataset,
    data_root: DataRoot,
    out: Annotated[str, typer.Option("--out-file", metavar="FILE", help="reference file to write, e.g. "
                                                                        "ref/cifar100_test.pt")],
    download: Download = False,
    cache_dir: CacheDir = None,
    image_folder: ImageFolder = False,
    overwrite: Overwrite = False,
    as_json: JsonObject = False,
) -> None:
    """Build the scorer's reference file {images_val, labels_val} from the real test split."""
    from challenge_kit.cli import render
    from challenge_kit.data import build_reference

    spec = build_reference(dataset, data_root, out, download=download, cache_dir=cache_dir, image_folder=image_folder,
                           overwrite=overwrite)
    render.show({"file": out, "spec": spec.to_dict()}, as_json,
                lambda r: typer.echo(f"{out}: reference test set for {spec.describe()}"))


def experts(
    dataset: DatasetOrSubset,
    data_root: DataRoot,
    out: Annotated[str, out_folder("expert store folder (resumed when it exists)")],
    num: Annotated[int | None, typer.Option("--num", "--num-experts", metavar="N", help="number of experts "
                                            "(default: recipe); under torchrun write --num-experts")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="E",
                                               help="epochs per expert (default: recipe)")] = None,
    seed: Annotated[int | None, seed_option("base seed (default: recipe)")] = None,
    device: Device = None,
    recipe_name: Recipe = None,
    profile: Profile = "full",
    overrides: Overrides = None,
    download: Download = False,
    cache_dir: CacheDir = None,
    image_folder: ImageFolder = False,
    replace_experts: ReplaceExperts = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the store's listing as one JSON object")] = False,
) -> None:
    """Train expert trajectories (FTD-style) into a resumable store; under torchrun rank r trains r, r+K, ..."""
    from challenge_kit.recipes import load_recipe

    given = {"experts.num_experts": num, "experts.epochs": epochs, "experts.seed": seed}
    extra = [f"{k}={v}" for k, v in given.items() if v is not None]
    recipe = load_recipe(recipe_name or dataset, profile, [*(overrides or []), *extra], dataset=dataset)
    from challenge_kit.cli import render
    from challenge_kit.context import DataSource, RunContext  # torch: only once the recipe is known to be good
    from challenge_kit.pipeline import experts_job

    ctx = RunContext.on(device, data=DataSource(data_root, image_folder, download, cache_dir))
    experts_job(recipe, out, ctx, replace=replace_experts).report(
        lambda spec: render.show({"store": out, "spec": spec.to_dict(), "experts": store_rows(out)}, as_json,
                                 lambda r: render.experts(r["experts"], f"{out}: {spec.describe()}")))


def experts_import(
    buffers: Annotated[list[str], typer.Argument(metavar="BUFFER...", help="DATM/MTT replay_buffer_{n}.pt files")],
    dataset: Annotated[str, typer.Option("--dataset", metavar="DATASET", parser=dataset_choice,
                                         help="cifar100 or tinyimagenet")],
    out: Annotated[str, out_folder("expert store folder to add them to")],
    data_root: Annotated[str | None, typer.Option("--data-root", metavar="ROOT",
                                                  help="dataset folder, to detect a Tiny ImageNet subset")] = None,
    as_json: JsonObject = False,
) -> None:
    """Import DATM/MTT replay buffers into a ddkit expert store (shapes checked against the ConvNet)."""
    from challenge_kit.cli import render
    from challenge_kit.core.contract import get_spec
    from challenge_kit.data import dataset_spec
    from challenge_kit.experts.buffers import import_buffers

    spec = dataset_spec(dataset, data_root) if data_root else get_spec(dataset)
    written = import_buffers(buffers, out, spec)
    render.show({"store": out, "spec": spec.to_dict(), "imported": [str(w) for w in written]}, as_json,
                lambda r: typer.echo(f"imported {len(written)} experts into {out} ({spec.describe()})"))


def experts_export(
    directory: ExpertStore,
    out: Annotated[str, out_folder("folder for replay_buffer_{n}.pt files")],
    per_file: Annotated[int, typer.Option("--per-file", metavar="N", help="experts per buffer file (DATM: 10)")] = 10,
    overwrite: Overwrite = False,
    as_json: JsonObject = False,
) -> None:
    """Export complete experts as DATM/MTT replay_buffer_{n}.pt files."""
    from challenge_kit.cli import render
    from challenge_kit.experts.buffers import export_buffers

    written = export_buffers(directory, out, per_file, overwrite=overwrite)
    render.show({"folder": out, "written": [str(w) for w in written]}, as_json,
                lambda r: typer.echo(f"wrote {len(written)} buffer files to {out}"))


def info(
    directory: ExpertStore,
    as_json: JsonObject = False,
) -> None:
    """List an expert store: epochs done/target, test accuracy (last, best), size, status."""
    from challenge_kit.cli import render

    if not Path(directory).is_dir():
        raise KitFileError(directory, "no such expert store")
    rows = store_rows(directory)
    if not rows and not as_json:
        raise KitFileError(directory, "holds no expert files (expert_NNNN.safetensors)")
    render.show({"store": directory, "experts": rows}, as_json, lambda r: render.experts(r["experts"], directory))


def store_rows(directory: str) -> list[dict]:
    """One row per expert file of a store: its status and, when readable, where its trajectory came from."""
    from challenge_kit.core.reading import read_metadata
    from challenge_kit.experts.store import ExpertStore

    rows = []
    for status in ExpertStore(directory).status():
        row = {"name": Path(status.path).stem, **status.to_dict(), "source": None}
        if status.status != "corrupt":
            row["source"] = read_metadata(status.path).get("source")
        rows.append(row)
    return rows
