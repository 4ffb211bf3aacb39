"""Commands that make and study distilled sets: the methods on offer, distill, export, the whole pipeline, the
random-image baseline, the upload zip, a run's report and an ablation of methods.

The recipe is loaded before the pipeline is imported: a misspelt part fails before torch is.
"""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli.options import (
    BASELINE_METHODS,
    RECIPES,
    SET_HELP,
    CacheDir,
    DataRoot,
    Dataset,
    DatasetOption,
    DatasetOrSubset,
    Device,
    Download,
    DropLabels,
    ImageFolder,
    JsonManifest,
    JsonObject,
    Overrides,
    Overwrite,
    Profile,
    Recipe,
    ReplaceExperts,
    ScoreEpochs,
    ScoreModels,
    Track,
    choice,
    completion,
    out_folder,
    seed_option,
)
from challenge_kit.core.errors import KitValueError


def methods(
    recipes: Annotated[list[str] | None, typer.Option("--recipe", help="also list this method recipe (a name or a "
                                                                       ".toml path) and its own parts; repeatable")]
    = None,
    as_json: JsonObject = False,
) -> None:
    """List the shipped method recipes (and those given) and every named part they are made of."""
    from challenge_kit.cli import render
    from challenge_kit.parts import KINDS, listing
    from challenge_kit.recipes import shipped_methods

    rows = shipped_methods(extra=recipes)
    chosen = {"methods": rows, "parts": listing([(k, n) for row in rows for k, n in row["parts"].items()])}
    render.show(chosen, as_json, lambda chosen: render.methods(chosen, KINDS))


def bundle(
    exports: Annotated[list[str], typer.Argument(help="the two exports: make-submission folders or .pt files")],
    out: Annotated[str, typer.Option("--out-file", metavar="FILE", help="the upload to write, e.g. "
                                                                       "submission.zip")],
    as_json: Annotated[bool, typer.Option("--json", help="print the bundle manifest as JSON")] = False,
    overwrite: Overwrite = False,
) -> None:
    """Verify both exports against their full challenge specs and write the upload zip and its manifest."""
    from challenge_kit.bundle import bundle as write_bundle
    from challenge_kit.bundle import manifest_path
    from challenge_kit.cli import render

    manifest = write_bundle(exports, out, overwrite=overwrite)
    render.show(manifest, as_json, lambda manifest: render.bundle(manifest, out, manifest_path(out)), pretty=True)


def distill(
    dataset: DatasetOrSubset,
    experts_dir: Annotated[str, typer.Option("--experts", metavar="STORE",
                                             help="expert store written by `ddkit experts`")],
    out: Annotated[str, out_folder("run folder (checkpoint, history, chosen set, run.json)")],
    data_root: Annotated[str, typer.Option("--data-root", metavar="ROOT",
                                           help="real data (initialization and model selection)")],
    recipe_name: Recipe = None,
    profile: Profile = "full",
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted run from its checkpoint")] = False,
    device: Device = None,
    cache_dir: CacheDir = None,
    track: Track = None,
    image_folder: ImageFolder = False,
    as_json: JsonObject = False,
) -> None:
    """Run trajectory matching (sharded under torchrun); the chosen set lands in OUT/best.safetensors."""
    from challenge_kit.recipes import load_recipe
    from challenge_kit.tracking import parse_track

    recipe, tracks = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset), parse_track(track or [])
    from challenge_kit.cli import render
    from challenge_kit.context import DataSource, RunContext  # torch: only once the recipe is known to be good
    from challenge_kit.pipeline import distill_job

    ctx = RunContext.on(device, data=DataSource(data_root, image_folder, cache_dir=cache_dir), track=tuple(tracks))
    state = distill_job(recipe, experts_dir, out, ctx, resume=resume)
    result = {"run": out, "iterations": state.iteration, "skipped": state.skipped, **state.decision}
    render.show(result, as_json, lambda r: typer.echo(f"{out}: {r['iterations']} iterations, {r['skipped']} "
                                                      f"skipped; exported iteration {r['export']}: {r['reason']}",
                                                      err=True))


def export(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="run folder of `ddkit distill`")],
    out: Annotated[str, out_folder("folder for <name>.pt, manifest.json, preview.png")],
    reference_model: Annotated[str | None, typer.Option("--reference-model", metavar="CKPT",
                                                        help="checkpoint for the semantic check")] = None,
    drop_labels: DropLabels = False,
    as_json: JsonManifest = False,
    overwrite: Overwrite = False,
) -> None:
    """Verify the run's chosen set and export the challenge file, its manifest and a preview grid."""
    from challenge_kit.cli import render
    from challenge_kit.pipeline import run_export

    render.manifest(run_export(run_dir, out, reference_model=reference_model, drop_labels=drop_labels,
                               overwrite=overwrite), out, as_json)


def ablate(
    recipes: Annotated[list[str], typer.Argument(
        metavar="RECIPE...", parser=choice("recipe", RECIPES, lambda v: v.endswith(".toml"), "a .toml file"),
        autocompletion=completion(RECIPES),
        help=f"recipes to compare, the first is the reference: {', '.join(RECIPES)} or .toml files")],
    experts_dir: Annotated[str, typer.Option("--experts", metavar="STORE", help="shared expert store (variants "
                                             "with other expert settings get a keyed subfolder)")],
    data_root: DataRoot,
    out: Annotated[str, out_folder("folder for each variant's run, ablate.json and ablate.png")],
    dataset: DatasetOption = None,
    profile: Profile = "full",
    overrides: Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                        help=SET_HELP + ", applied to every variant")] = None,
    iterations: Annotated[int | None, typer.Option("--iterations", metavar="K",
                                                   help="distillation iterations per variant")] = None,
    rounds: Annotated[int, typer.Option("--rounds", metavar="R", help="paired scoring rounds per variant")] = 3,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="E", help="scorer epochs per round (default: "
                                                                             "the official 1001)")] = None,
    seed: Annotated[int, seed_option("scoring seed, the same for every variant")] = 0,
    select: Annotated[bool, typer.Option("--select", help="export what each run's held-out selection picks "
                                                          "(default: its last iteration)")] = False,
    device: Device = None,
    cache_dir: CacheDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="print ablate.json on stdout")] = False,
) -> None:
    """Compare methods on the same experts, seeds and scoring budget: one table, ablate.json, a bar chart."""
    from challenge_kit.ablate import ablate as run_ablation
    from challenge_kit.cli import render
    from challenge_kit.context import DataSource, RunContext
    from challenge_kit.core.seeds import rounds_problem
    from challenge_kit.data import detect_dataset
    from evaluator.scorer import EPOCHS

    if rounds < 1 or (epochs is not None and epochs < 1) or (iterations is not None and iterations < 0):
        raise KitValueError("--rounds and --epochs must be at least 1, --iterations at least 0")
    if (problem := rounds_problem(rounds)) is not None:
        raise KitValueError(f"--rounds: {problem}")
    ctx = RunContext.on(device, data=DataSource(data_root, cache_dir=cache_dir))
    summary = run_ablation(recipes, ctx, dataset=dataset or detect_dataset(data_root), experts=experts_dir, out=out,
                           profile=profile, overrides=overrides or [], iterations=iterations, rounds=rounds,
                           epochs=epochs or EPOCHS, seed=seed, select=select)
    render.show(summary.to_dict(), as_json, render.ablation)


def report(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="run folder of `ddkit distill` (finished or still "
                                                               "running)")],
    out: Annotated[str | None, out_folder("folder for the figures (default RUN/report)")] = None,
    data_root: Annotated[str | None, typer.Option("--data-root", metavar="ROOT", help="the run's data, to name "
                                                  "the classes in words (Tiny ImageNet's words.txt)")] = None,
    image_folder: ImageFolder = False,
    as_json: Annotated[bool, typer.Option("--json", help="print what was written as JSON")] = False,
) -> None:
    """Figures of a run (loss, lr, selection accuracy, image change, per-class accuracy, images) and a summary."""
    from challenge_kit.cli import render
    from challenge_kit.report import build_report, run_words

    names = None if data_root is None else run_words(run_dir, data_root, image_folder=image_folder)
    render.show(build_report(run_dir, out, names), as_json, render.report)


def make_submission(
    dataset: Dataset,
    data_root: Annotated[str, typer.Option("--data-root", metavar="ROOT",
                                           help="CIFAR-100 root or tiny-imagenet-200 folder")] = "data",
    out: Annotated[str, out_folder("output folder (work/ inside keeps experts and the run)")] = "submission",
    recipe_name: Recipe = None,
    profile: Profile = "full",
    overrides: Overrides = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue an interrupted distillation")] = False,
    device: Device = None,
    download: Annotated[bool, typer.Option("--download",
                                           help="download CIFAR-100 through torchvision (online)")] = False,
    experts_dir: Annotated[str | None, typer.Option("--experts", metavar="STORE",
                                                    help="reuse or grow this expert store")] = None,
    cache_dir: CacheDir = None,
    image_folder: ImageFolder = False,
    drop_labels: DropLabels = False,
    replace_experts: ReplaceExperts = False,
    track: Track = None,
    allow_long_run: Annotated[bool, typer.Option("--allow-long-run", help="go on where the plan puts the run at "
                                                                          "more than a day on this device (by "
                                                                          "default it stops before any work)")
                              ] = False,
    as_json: JsonManifest = False,
) -> None:
    """Real data -> experts -> distillation -> verify -> OUT/<name>.pt, manifest.json, preview.png, report/."""
    from challenge_kit.recipes import load_recipe
    from challenge_kit.tracking import parse_track

    recipe, tracks = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset), parse_track(track or [])
    from challenge_kit.cli import render
    from challenge_kit.context import DataSource, RunContext  # torch: only once the recipe is known to be good
    from challenge_kit.pipeline import make_submission as run

    ctx = RunContext.on(device, data=DataSource(data_root, image_folder, download, cache_dir), track=tuple(tracks))
    manifest = run(recipe, out, ctx, resume=resume, experts_dir=experts_dir, drop_labels=drop_labels,
                   replace_experts=replace_experts, allow_long_run=allow_long_run,
                   command={"dataset": dataset, "profile": profile, "method": recipe.method,
                            "overrides": list(overrides or [])}, show_plan=render.plan_table)
    manifest.report(lambda m: render.manifest(m, out, as_json))


def baseline(
    dataset: DatasetOrSubset,
    data_root: DataRoot,
    out: Annotated[str, out_folder("output folder for <name>.pt, manifest.json, preview.png")],
    method: Annotated[str, typer.Option(
        "--method", metavar="METHOD", parser=choice("method", BASELINE_METHODS),
        autocompletion=completion(BASELINE_METHODS),
        help="random (the organizers' sample submission) or a coreset: herding, kcenter, el2n_easy|hard|band, "
             "forgetting_easy|hard|band (docs/baselines.md)")] = "random",
    seed: Annotated[int, seed_option("which random images; the coresets' proxy networks and tie-breaks")] = 0,
    score_epochs: ScoreEpochs = 10,
    score_models: ScoreModels = 2,
    experts_dir: Annotated[str | None, typer.Option("--experts", metavar="STORE", help="pick the coresets with this "
                                                    "expert store's features and scores (as the init parts do) "
                                                    "instead of training networks for them")] = None,
    device: Device = None,
    download: Download = False,
    cache_dir: CacheDir = None,
    image_folder: ImageFolder = False,
    as_json: JsonManifest = False,
    overwrite: Overwrite = False,
) -> None:
    """Real images, IPC per class in default order: the organizers' random sample or a coreset; a floor to beat."""
    from challenge_kit.baseline import make_baseline
    from challenge_kit.cli import render
    from challenge_kit.core.devices import usable_device

    manifest = make_baseline(dataset, data_root, out, seed=seed, method=method, score_epochs=score_epochs,
                             score_models=score_models, experts_dir=experts_dir, device=usable_device(device),
                             download=download, cache_dir=cache_dir, image_folder=image_folder, overwrite=overwrite)
    render.manifest(manifest, out, as_json)
