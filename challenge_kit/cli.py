"""The ``ddkit`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from challenge_kit.contract import get_spec
from challenge_kit.storage import KitFileError, file_errors


class KitCommands(TyperGroup):
    """Whatever command runs, a file or operating-system error ends as ``fail``'s one line, never a traceback."""

    def invoke(self, ctx):
        try:
            with file_errors():
                return super().invoke(ctx)
        except KitFileError as e:
            fail(str(e))


app = typer.Typer(cls=KitCommands, add_completion=False, no_args_is_help=True,
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions.")


@app.callback()
def main() -> None:
    """ddkit: distill, verify and score ECCV 2024 DD challenge submissions."""
    from challenge_kit.runtime import tune_allocator

    tune_allocator()


def fail(message: str, code: int = 1) -> None:
    """One line on stderr naming the file and the problem, then a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def evaluate(
    path: str = typer.Argument(..., help="challenge .pt (bare tensor) or kit artifact (.safetensors)"),
    reference: str = typer.Option(..., "--reference", help="test set: dict of images_val, labels_val"),
    dataset: str | None = typer.Option(None, "--dataset", help="cifar100 or tinyimagenet (else inferred)"),
    epochs: int | None = typer.Option(None, "--epochs", help="epochs per round (official 1001)"),
    rounds: int | None = typer.Option(None, "--rounds", help="rounds (official 3)"),
    seed: int | None = typer.Option(None, "--seed", help="seed; each round gets one derived from it"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Score a distilled set exactly as the challenge scorer does (labels in default order)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from challenge_kit.progress import console
    from challenge_kit.runtime import usable_device
    from evaluator.inputs import load_inputs
    from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

    epochs, rounds = EPOCHS if epochs is None else epochs, ROUNDS if rounds is None else rounds
    if epochs < 1 or rounds < 1:
        fail("--epochs and --rounds must be at least 1")
    try:
        device = usable_device(device)
        inputs = load_inputs(path, reference, dataset)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    spec = inputs.spec
    console.print(f"{path}: {spec.describe()} (spec from {inputs.spec_source}); "
                  f"{inputs.test_images.shape[0]} test images from {reference}")
    for note in inputs.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if (epochs, rounds) != (EPOCHS, ROUNDS):
        console.print(f"[yellow]shortened run:[/yellow] {epochs} epochs x {rounds} rounds, not the official "
                      f"{EPOCHS} x {ROUNDS}; not comparable to the leaderboard")
    result = evaluate_images(inputs.images, spec, inputs.test_images, inputs.test_labels, rounds=rounds,
                             epochs=epochs, seed=seed, device=device)
    result.update(path=str(path), reference=str(reference), spec_source=inputs.spec_source,
                  notes=inputs.notes)
    if as_json:
        typer.echo(json.dumps(result))
        return
    table = Table(title=f"{spec.name} test accuracy",
                  caption=f"{epochs} epochs x {rounds} rounds on {result['device']}"
                          + ("" if result["official"] else " (not the official recipe)"))
    table.add_column("round", justify="right")
    table.add_column("seed", justify="right")
    table.add_column("test accuracy", justify="right")
    for r, (acc, s) in enumerate(zip(result["rounds"], result["seeds"], strict=True)):
        table.add_row(str(r + 1), str(s), f"{acc:.4f}")
    table.add_row("mean", "", f"[bold]{result['mean']:.4f}[/bold]")
    Console().print(table)


@app.command()
def verify(
    path: str = typer.Argument(..., help="challenge .pt (bare tensor) or kit artifact (.safetensors)"),
    dataset: str = typer.Option("auto", "--dataset", help="auto, cifar100 or tinyimagenet"),
    reference_model: str | None = typer.Option(
        None, "--reference-model", help="ConvNet state dict .pt (DC/MTT layout) or expert_XXXX.safetensors"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Check format, normalization, label order and (with a model) class order. Exit 0 ok, 1 failed, 2 unreadable."""
    import json

    from rich.console import Console

    from challenge_kit.verify import report_table, verify_path

    try:
        with file_errors():
            report = verify_path(path, dataset=dataset, reference_model=reference_model)
    except (KitFileError, ValueError) as e:
        if as_json:
            typer.echo(json.dumps({"path": path, "ok": False, "exit_code": 2, "error": str(e), "checks": []}))
        fail(str(e), 2)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        Console().print(report_table(report))
    raise typer.Exit(report.exit_code)


# ------------------------------------------------------------------------------- data and experts

ROOT_HELP = "folder holding cifar-100-python/, or the tiny-imagenet-200 tree"
CACHE_HELP = "decoded-data cache (default $XDG_CACHE_HOME/ddkit or ~/.cache/ddkit)"
REPLACE_HELP = "train again experts of the store that were trained with other settings (seed, lr, data, ...)"

def _expert_table(rows: list[dict], title: str):
    from rich.table import Table

    table = Table(title=title)
    for name in ("expert", "status", "epochs", "last acc", "best acc", "size", "note"):
        table.add_column(name, justify="left" if name in ("expert", "status", "note") else "right")
    fmt = lambda a: "-" if a is None else f"{a:.4f}"  # noqa: E731
    for r in rows:
        epochs = "-" if r["epochs"] is None else f"{r['completed_epochs']}/{r['epochs']}"
        colour = {"complete": "green", "partial": "yellow", "corrupt": "red"}[r["status"]]
        table.add_row(r["name"], f"[{colour}]{r['status']}[/{colour}]", epochs, fmt(r["last_acc"]),
                      fmt(r["best_acc"]), f"{r['size'] / 2**20:.1f} MiB", r["problem"] or r.get("source") or "")
    return table


def _store_rows(directory: str) -> list[dict]:
    from pathlib import Path

    from challenge_kit.experts import store_status
    from challenge_kit.storage import read_metadata

    rows = []
    for status in store_status(directory):
        row = {"name": Path(status.path).stem, **status.to_dict(), "source": None}
        if status.status != "corrupt":
            row["source"] = read_metadata(status.path).get("source")
        rows.append(row)
    return rows


@app.command()
def reference(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet"),
    data_root: str = typer.Option(..., "--data-root", help=ROOT_HELP),
    out: str = typer.Option(..., "--out", help="reference file to write, e.g. cifar100_test.pt"),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 first (needs the internet)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    image_folder: bool = typer.Option(False, "--image-folder", help="read ROOT as ImageFolder (ROOT/test/<class>/*)"),
) -> None:
    """Build the scorer's reference file {images_val, labels_val} from the real test split."""
    from challenge_kit.data import build_reference
    from challenge_kit.progress import console
    from challenge_kit.storage import output_file

    try:
        output_file(out)
        spec = build_reference(dataset, data_root, out, download=download, cache_dir=cache_dir,
                               image_folder=image_folder)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    console.print(f"{out}: reference test set for {spec.describe()}")
    typer.echo(f"spec: {spec.describe()}")


@app.command("experts")
def experts_cmd(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet (a Tiny ImageNet subset folder is detected)"),
    data_root: str = typer.Option(..., "--data-root", help=ROOT_HELP),
    out: str = typer.Option(..., "--out", help="expert store folder (resumed when it exists)"),
    num: int | None = typer.Option(None, "--num", "--num-experts",
                                   help="number of experts (default: recipe); under torchrun write --num-experts"),
    epochs: int | None = typer.Option(None, "--epochs", help="epochs per expert (default: recipe)"),
    seed: int | None = typer.Option(None, "--seed", help="base seed (default: recipe)"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    profile: str = typer.Option("full", "--profile", help="recipe profile: full or quick"),
    overrides: list[str] | None = typer.Option(None, "--set", help="recipe override section.key=value"),
    distributed: bool = typer.Option(False, "--distributed", help="under torchrun: rank r trains experts r, r+K, ..."),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 first (needs the internet)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    image_folder: bool = typer.Option(False, "--image-folder", help="ImageFolder: ROOT/{train,test}/<class>/*"),
    replace_experts: bool = typer.Option(False, "--replace-experts", help=REPLACE_HELP),
) -> None:
    """Train expert trajectories (GSAM + DSA, SPEC section 4) into a resumable store."""
    from challenge_kit.pipeline import run_experts

    given = {"num_experts": num, "epochs": epochs, "seed": seed}
    overrides = [*(overrides or []), *(f"experts.{k}={v}" for k, v in given.items() if v is not None)]
    try:
        spec, rank = run_experts(dataset, data_root, out, profile=profile, overrides=overrides, device=device,
                                 distributed=distributed, download=download, cache_dir=cache_dir,
                                 image_folder=image_folder, replace=replace_experts)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    if rank == 0:
        from rich.console import Console

        Console().print(_expert_table(_store_rows(out), f"{out}: {spec.describe()}"))


@app.command("experts-import")
def experts_import(
    buffers: list[str] = typer.Argument(..., help="DATM/MTT replay_buffer_{n}.pt files"),
    dataset: str = typer.Option(..., "--dataset", help="cifar100 or tinyimagenet"),
    out: str = typer.Option(..., "--out", help="expert store folder to add them to"),
    data_root: str | None = typer.Option(None, "--data-root", help="dataset folder, to detect a Tiny ImageNet subset"),
) -> None:
    """Import DATM/MTT replay buffers into a ddkit expert store (shapes checked against the ConvNet)."""
    from challenge_kit.data import dataset_spec
    from challenge_kit.experts import import_buffers
    from challenge_kit.progress import console
    from challenge_kit.storage import run_lock

    try:
        spec = dataset_spec(dataset, data_root) if data_root else get_spec(dataset)
        with run_lock(out):
            written = import_buffers(buffers, out, spec)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    console.print(f"imported {len(written)} experts into {out} ({spec.describe()})")


@app.command("experts-export")
def experts_export(
    directory: str = typer.Argument(..., help="ddkit expert store"),
    out: str = typer.Option(..., "--out", help="folder for replay_buffer_{n}.pt files"),
    per_file: int = typer.Option(10, "--per-file", help="experts per buffer file (DATM: 10)"),
) -> None:
    """Export complete experts as DATM/MTT replay_buffer_{n}.pt files."""
    from challenge_kit.experts import export_buffers
    from challenge_kit.progress import console
    from challenge_kit.storage import output_folder

    try:
        output_folder(out)
        written = export_buffers(directory, out, per_file)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    console.print(f"wrote {len(written)} buffer files to {out}")


@app.command()
def info(
    directory: str = typer.Argument(..., help="ddkit expert store"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON list on stdout"),
) -> None:
    """List an expert store: epochs done/target, test accuracy (last, best), size, status."""
    import json
    from pathlib import Path

    from rich.console import Console

    if not Path(directory).is_dir():
        fail(f"{directory}: no such expert store")
    rows = _store_rows(directory)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        fail(f"{directory}: holds no expert files (expert_NNNN.safetensors)")
    Console().print(_expert_table(rows, directory))



PROFILE_HELP = "recipe profile: full (the paper's M-DATM settings) or quick (a CPU smoke run)"
SET_HELP = "override a recipe value, e.g. --set distill.iterations=500 (repeatable)"


def _print_manifest(manifest: dict, out: str, as_json: bool) -> None:
    import json

    from rich.table import Table

    from challenge_kit.progress import console

    if as_json:
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    table = Table(title=f"exported to {out}")
    table.add_column("item")
    table.add_column("value")
    run = manifest.get("run", {})
    for key, value in [("file", manifest["file"]), ("sha256", manifest["sha256"][:16] + "..."),
                       ("shape", "x".join(map(str, manifest["shape"]))),
                       ("challenge submission", "yes" if manifest["challenge_submission"] else "NO (subset spec)"),
                       ("iterations", run.get("iterations")), ("skipped updates", run.get("skipped")),
                       ("best iteration", manifest.get("best_iteration")),
                       ("selection accuracy", manifest.get("selection_accuracy")),
                       ("verify", "PASS" if manifest["verify"]["ok"] else "FAIL")]:
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def distill(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet (a mini folder gives a subset spec)"),
    experts_dir: str = typer.Option(..., "--experts", help="expert store written by `ddkit experts`"),
    out: str = typer.Option(..., "--out", help="run directory (checkpoint, best set, run.json)"),
    data_root: str = typer.Option(..., "--data-root", help="real data (initialization and model selection)"),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
) -> None:
    """Run M-DATM trajectory matching; the best set (by the scorer's recipe) lands in OUT/best.safetensors."""
    from challenge_kit.pipeline import run_distill
    from challenge_kit.recipes import load_recipe

    try:
        recipe = load_recipe(dataset, profile, overrides)
        state = run_distill(recipe, data_root, experts_dir, out, device=device, resume=resume, cache_dir=cache_dir)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    typer.echo(f"{out}: {state.iteration} iterations, {state.skipped} skipped, best iteration "
               f"{state.best_iteration} (accuracy {state.best_acc:.4f})", err=True)


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., help="run directory of `ddkit distill`"),
    out: str = typer.Option(..., "--out", help="folder for <name>.pt, manifest.json, preview.png"),
    reference_model: str | None = typer.Option(None, "--reference-model", help="checkpoint for the semantic check"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Verify the run's best set and export the challenge file, its manifest and a preview grid."""
    from challenge_kit.export import ExportRefused
    from challenge_kit.pipeline import run_export

    try:
        manifest = run_export(run_dir, out, reference_model=reference_model)
    except (KitFileError, ValueError, ExportRefused) as e:
        fail(str(e))
    _print_manifest(manifest, out, as_json)


@app.command("make-submission")
def make_submission_cmd(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet"),
    data_root: str = typer.Option("data", "--data-root", help="CIFAR-100 root or tiny-imagenet-200 folder"),
    out: str = typer.Option("submission", "--out", help="output folder (work/ inside keeps experts and the run)"),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted distillation"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 through torchvision (online)"),
    experts_dir: str | None = typer.Option(None, "--experts", help="reuse or grow this expert store"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    replace_experts: bool = typer.Option(False, "--replace-experts", help=REPLACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Real data -> experts -> M-DATM distillation -> verify -> OUT/<name>.pt, manifest.json, preview.png."""
    from challenge_kit.export import ExportRefused
    from challenge_kit.pipeline import make_submission

    try:
        manifest = make_submission(dataset, data_root, out, profile=profile, overrides=overrides, resume=resume,
                                   device=device, download=download, experts_dir=experts_dir,
                                   cache_dir=cache_dir, replace_experts=replace_experts)
    except (KitFileError, ValueError, ExportRefused) as e:
        fail(str(e))
    _print_manifest(manifest, out, as_json)
