"""The ``ddkit`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from challenge_kit.core.contract import get_spec
from challenge_kit.core.errors import ExportRefused, KitFileError, file_errors


class KitCommands(TyperGroup):
    """Whatever command runs, a file or operating-system error ends as ``fail``'s one line, never a traceback."""

    def invoke(self, ctx):
        try:
            with file_errors():
                return super().invoke(ctx)
        except KitFileError as e:
            fail(str(e))
        except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None


app = typer.Typer(cls=KitCommands, add_completion=False, no_args_is_help=True,
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions.")


@app.callback()
def main() -> None:
    """ddkit: distill, verify and score ECCV 2024 DD challenge submissions."""
    from challenge_kit.core.devices import tune_allocator

    tune_allocator()


def fail(message: str, code: int = 1) -> None:
    """One line on stderr naming the file and the problem, then a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _scores_table(summary: dict):
    """A submission's score for people: each dataset's rounds and mean, then the final figure."""
    from rich.table import Table

    official = "" if summary["official"] else " (not the official recipe)"
    table = Table(title="submission score", caption=f"{summary['epochs']} epochs x {summary['rounds']} rounds on "
                                                    f"{summary['device']}{official}")
    for name in ("dataset", "rounds", "mean"):
        table.add_column(name, justify="left" if name == "dataset" else "right")
    for name, r in summary["datasets"].items():
        table.add_row(name, " ".join(f"{a:.4f}" for a in r["rounds"]), f"{r['mean']:.4f}")
    for name in summary["skipped"]:
        table.add_row(name, "[yellow]skipped: not in the zip[/yellow]", "")
    partial = " [yellow](partial: not a figure the official scorer gives)[/yellow]" if summary["partial"] else ""
    table.add_row("correct", "", f"[bold]{summary['correct']:.4f}[/bold]{partial}")
    return table


@app.command()
def evaluate(
    path: str = typer.Argument(..., help="challenge .pt (bare tensor), kit artifact (.safetensors) or submission .zip"),
    reference: str | None = typer.Option(None, "--reference", help="test set of one file: dict of images_val, "
                                                                   "labels_val"),
    reference_dir: str | None = typer.Option(None, "--reference-dir",
                                             help="for a .zip: folder with cifar100_test.pt and tinyimagenet_test.pt"),
    output_dir: str | None = typer.Option(None, "--output-dir", help="for a .zip: write scores.txt and scores.json"),
    partial: bool = typer.Option(False, "--partial", help="for a .zip missing a file: score the other (the "
                                                          "official scorer crashes)"),
    dataset: str | None = typer.Option(None, "--dataset", help="cifar100 or tinyimagenet (else inferred)"),
    epochs: int | None = typer.Option(None, "--epochs", help="epochs per round (official 1001)"),
    rounds: int | None = typer.Option(None, "--rounds", help="rounds (official 3)"),
    seed: int | None = typer.Option(None, "--seed", help="seed; each round gets one derived from it"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Score a distilled set, or a whole submission .zip, exactly as the challenge scorer does."""
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from challenge_kit.core.devices import usable_device
    from challenge_kit.core.parallel import process_group
    from challenge_kit.core.progress import console
    from challenge_kit.core.submission import load_inputs
    from challenge_kit.core.verify import findings, verify_tensor
    from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

    epochs, rounds = EPOCHS if epochs is None else epochs, ROUNDS if rounds is None else rounds
    if epochs < 1 or rounds < 1:
        fail("--epochs and --rounds must be at least 1")
    is_zip = Path(path).suffix == ".zip"
    if is_zip and (reference_dir is None or reference is not None or dataset is not None):
        fail(f"{path}: a submission .zip is scored with --reference-dir (not --reference or --dataset)")
    if not is_zip and (reference is None or reference_dir or output_dir or partial):
        fail(f"{path}: one file is scored with --reference (--reference-dir, --output-dir and --partial are "
             "for a submission .zip)")

    def budget_note() -> None:  # after the inputs load: an error stays the only line
        if (epochs, rounds) != (EPOCHS, ROUNDS):
            console.print(f"[yellow]shortened run:[/yellow] {epochs} epochs x {rounds} rounds, not the official "
                          f"{EPOCHS} x {ROUNDS}; not comparable to the leaderboard", soft_wrap=True)

    def log(line: str) -> None:
        console.print(escape(line), soft_wrap=True)

    try:
        dev = usable_device(device)
    except ValueError as e:
        fail(str(e))
    # under torchrun the rounds run on separate ranks (each with its own seed) and rank 0 reports
    with process_group(dev) as (shard, dev):
        if is_zip:
            from challenge_kit.bundle import zip_entries
            from evaluator.evaluate import score_entries

            try:
                entries, skipped = zip_entries(path, reference_dir, partial=partial)
                if shard.leader:
                    budget_note()
                summary = score_entries(entries, output_dir if shard.leader else None, skipped=skipped,
                                        rounds=rounds, epochs=epochs, seed=seed, device=str(dev),
                                        show_progress=shard.leader, log=log if shard.leader else None, shard=shard)
            except (KitFileError, ValueError) as e:
                fail(str(e))
            if not shard.leader:
                return
            if as_json:
                typer.echo(json.dumps({"path": path, **summary}))
            else:
                Console().print(_scores_table(summary))
            return
        try:
            inputs = load_inputs(path, reference, dataset)
        except (KitFileError, ValueError) as e:
            fail(str(e))
        spec = inputs.spec
        checks = findings(verify_tensor(inputs.images, spec, inputs.labels, inputs.lr,
                                        spec_source=inputs.spec_source, path=path))
        if shard.leader:
            budget_note()
            log(f"{path}: {spec.describe()} (spec from {inputs.spec_source}); {inputs.test_images.shape[0]} test "
                f"images from {reference}")
            for line in checks:
                log(line)
        result = evaluate_images(inputs.images, spec, inputs.test_images, inputs.test_labels, rounds=rounds,
                                 epochs=epochs, seed=seed, device=dev, show_progress=shard.leader, shard=shard)
        if not shard.leader:
            return
    result.update(path=str(path), reference=str(reference), spec_source=inputs.spec_source, verify=checks,
                  ranks=shard.world)
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
    path: str = typer.Argument(..., help="challenge .pt (bare tensor), kit artifact (.safetensors) or submission .zip"),
    dataset: str = typer.Option("auto", "--dataset", help="auto, cifar100 or tinyimagenet"),
    reference_model: str | None = typer.Option(
        None, "--reference-model", help="ConvNet state dict .pt (DC/MTT layout) or expert_XXXX.safetensors"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
) -> None:
    """Check format, normalization, label order and (with a model) class order. Exit 0 ok, 1 failed, 2 unreadable.

    A submission .zip: both files at its root and nothing else, each passing every check against its full spec.
    """
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from challenge_kit.bundle import verify_zip
    from challenge_kit.core.verify import verify_path
    from challenge_kit.verify_table import report_table

    is_zip = Path(path).suffix == ".zip"
    if is_zip and (dataset != "auto" or reference_model):
        fail(f"{path}: --dataset and --reference-model check one file; verify the exported .pt with them", 2)
    try:
        with file_errors():
            report = verify_zip(path) if is_zip else verify_path(path, dataset=dataset,
                                                                 reference_model=reference_model)
    except (KitFileError, ValueError) as e:
        if as_json:
            typer.echo(json.dumps({"path": path, "ok": False, "exit_code": 2, "error": str(e), "checks": []}))
        fail(str(e), 2)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    elif is_zip:
        out = Console()
        for member in report.members.values():
            out.print(report_table(member))
        for line in report.failures():
            out.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
        out.print(escape(f"{path}: exit {report.exit_code}: " + ("ready to upload" if report.ok else
                                                                  "not ready to upload")), soft_wrap=True)
    else:
        Console().print(report_table(report))
    raise typer.Exit(report.exit_code)


@app.command()
def methods(as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout")) -> None:
    """List the shipped method recipes and every named part they are made of."""
    import json

    from rich.console import Console
    from rich.table import Table

    from challenge_kit.parts import KINDS, catalogue
    from challenge_kit.recipes import shipped_methods

    rows, parts = shipped_methods(), catalogue()
    if as_json:
        typer.echo(json.dumps({"methods": rows, "parts": [{"kind": p.kind, "name": p.name, "summary": p.summary,
                                                           "source": p.source} for p in parts]}))
        return
    console = Console()
    table = Table(title="methods (--recipe NAME; submissions/research/NAME.toml)")
    for col in ("name", "method", "parts that differ from M-DATM", "description"):
        table.add_column(col, overflow="fold")
    base = next(r["parts"] for r in rows if r["name"] == "m-datm")
    for r in rows:
        differ = ", ".join(f"{k}={v}" for k, v in r["parts"].items() if v != base[k]) or "-"
        table.add_row(r["name"], r["method"], differ, r["description"] + (" [research]" if r["research"] else ""))
    console.print(table)
    table = Table(title="parts (chosen in a recipe by name)")
    for col in ("kind", "name", "from", "what it does"):
        table.add_column(col, overflow="fold")
    for p in parts:
        table.add_row(f"{p.kind}: {KINDS[p.kind]}" if p is next(q for q in parts if q.kind == p.kind) else "",
                      p.name, p.source, p.summary)
    console.print(table)


@app.command("bundle")
def bundle_cmd(
    exports: list[str] = typer.Argument(..., help="the two exports: make-submission folders or .pt files"),
    out: str = typer.Option(..., "--out", help="the upload to write, e.g. submission.zip"),
    as_json: bool = typer.Option(False, "--json", help="print the bundle manifest as JSON"),
) -> None:
    """Verify both exports against their full challenge specs and write the upload zip and its manifest."""
    import json

    from rich.table import Table

    from challenge_kit.bundle import bundle, manifest_path
    from challenge_kit.core.progress import console

    try:
        manifest = bundle(exports, out)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(manifest, indent=2, sort_keys=True))
        return
    table = Table(title=f"{out} (manifest: {manifest_path(out)})", caption=f"sha256 {manifest['sha256']}")
    for name in ("member", "from", "bytes", "sha256"):
        table.add_column(name, overflow="fold")
    for name, member in manifest["members"].items():
        table.add_row(name, member["source"], f"{member['bytes']:,}", member["sha256"][:16] + "...")
    console.print(table)


# ------------------------------------------------------------------------------- data and experts

ROOT_HELP = "folder holding cifar-100-python/, or the tiny-imagenet-200 tree"
PROFILE_HELP = "recipe profile: full (the paper's settings), quick (a CPU smoke run) or mini (a CPU run that improves)"
SET_HELP = "override a recipe value, e.g. --set distill.iterations=500 (repeatable)"
DROP_HELP = "export a research set (learned or assigned labels) as images alone; the manifest records it"
RECIPE_HELP = "method recipe: a shipped name (m-datm, datm, tesla, pad, smooth) or a .toml (default: the dataset's)"
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

    from challenge_kit.core.storage import read_metadata
    from challenge_kit.experts.store import ExpertStore

    rows = []
    for status in ExpertStore(directory).status():
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
    from challenge_kit.core.progress import console
    from challenge_kit.core.storage import output_file
    from challenge_kit.data import build_reference

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
    recipe_name: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 first (needs the internet)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    image_folder: bool = typer.Option(False, "--image-folder", help="ImageFolder: ROOT/{train,test}/<class>/*"),
    replace_experts: bool = typer.Option(False, "--replace-experts", help=REPLACE_HELP),
) -> None:
    """Train expert trajectories (SPEC section 4) into a resumable store; under torchrun rank r trains r, r+K, ..."""
    from challenge_kit.recipes import load_recipe

    given = {"experts.num_experts": num, "experts.epochs": epochs, "experts.seed": seed}
    extra = [f"{k}={v}" for k, v in given.items() if v is not None]
    try:
        recipe = load_recipe(recipe_name or dataset, profile, [*(overrides or []), *extra], dataset=dataset)
        from challenge_kit.pipeline import experts_job  # torch: only once the recipe is known to be good

        spec = experts_job(recipe, data_root, out, device=device, download=download, cache_dir=cache_dir,
                           image_folder=image_folder, replace=replace_experts)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    if spec is not None:  # rank 0 (or the only process) reports
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
    from challenge_kit.core.progress import console
    from challenge_kit.core.storage import run_lock
    from challenge_kit.data import dataset_spec
    from challenge_kit.experts.buffers import import_buffers

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
    from challenge_kit.core.progress import console
    from challenge_kit.core.storage import output_folder
    from challenge_kit.experts.buffers import export_buffers

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



def _print_manifest(manifest: dict, out: str, as_json: bool) -> None:
    import json

    from rich.table import Table

    from challenge_kit.core.progress import console

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
                       ("exported iteration", manifest.get("best_iteration")),
                       ("selection", (manifest.get("selection") or {}).get("reason")),
                       ("verify", "PASS" if manifest["verify"]["ok"] else "FAIL")]:
        if value is not None:
            table.add_row(key, str(value))
    console.print(table)


@app.command()
def distill(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet (a mini folder gives a subset spec)"),
    experts_dir: str = typer.Option(..., "--experts", help="expert store written by `ddkit experts`"),
    out: str = typer.Option(..., "--out", help="run directory (checkpoint, history, chosen set, run.json)"),
    data_root: str = typer.Option(..., "--data-root", help="real data (initialization and model selection)"),
    recipe_name: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run from its checkpoint"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
) -> None:
    """Run trajectory matching (sharded under torchrun); the chosen set lands in OUT/best.safetensors."""
    from challenge_kit.recipes import load_recipe

    try:
        recipe = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset)
        from challenge_kit.pipeline import distill_job  # torch: only once the recipe is known to be good

        state = distill_job(recipe, data_root, experts_dir, out, device=device, resume=resume, cache_dir=cache_dir)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    typer.echo(f"{out}: {state.iteration} iterations, {state.skipped} skipped; exported iteration "
               f"{state.decision['export']}: {state.decision['reason']}", err=True)


@app.command("export")
def export_cmd(
    run_dir: str = typer.Argument(..., help="run directory of `ddkit distill`"),
    out: str = typer.Option(..., "--out", help="folder for <name>.pt, manifest.json, preview.png"),
    reference_model: str | None = typer.Option(None, "--reference-model", help="checkpoint for the semantic check"),
    drop_labels: bool = typer.Option(False, "--drop-labels", help=DROP_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Verify the run's chosen set and export the challenge file, its manifest and a preview grid."""
    from challenge_kit.pipeline import run_export

    try:
        manifest = run_export(run_dir, out, reference_model=reference_model, drop_labels=drop_labels)
    except (KitFileError, ValueError, ExportRefused) as e:
        fail(str(e))
    _print_manifest(manifest, out, as_json)


@app.command()
def ablate(
    recipes: list[str] = typer.Argument(..., help="recipes to compare, the first is the reference: shipped names "
                                                  "(m-datm, datm, pad-fiem, ...) or .toml files"),
    experts_dir: str = typer.Option(..., "--experts", help="shared expert store (variants with other expert "
                                                           "settings get a keyed subfolder)"),
    data_root: str = typer.Option(..., "--data-root", help=ROOT_HELP),
    out: str = typer.Option(..., "--out", help="folder for each variant's run, ablate.json and ablate.png"),
    dataset: str | None = typer.Option(None, "--dataset", help="cifar100 or tinyimagenet (default: detected)"),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP + ", applied to every variant"),
    iterations: int | None = typer.Option(None, "--iterations", help="distillation iterations per variant"),
    rounds: int = typer.Option(3, "--rounds", help="paired scoring rounds per variant"),
    epochs: int | None = typer.Option(None, "--epochs", help="scorer epochs per round (default: the official 1001)"),
    seed: int = typer.Option(0, "--seed", help="scoring seed, the same for every variant"),
    select: bool = typer.Option(False, "--select", help="export what each run's held-out selection picks "
                                                        "(default: its last iteration)"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print ablate.json on stdout"),
) -> None:
    """Compare methods on the same experts, seeds and scoring budget: one table, ablate.json, a bar chart."""
    import json

    from challenge_kit.ablate import ablate as run_ablation
    from challenge_kit.ablate import ablation_table
    from challenge_kit.data import detect_dataset
    from evaluator.scorer import EPOCHS

    if rounds < 1 or (epochs is not None and epochs < 1) or (iterations is not None and iterations < 0):
        fail("--rounds and --epochs must be at least 1, --iterations at least 0")
    try:
        summary = run_ablation(recipes, dataset=dataset or detect_dataset(data_root), experts=experts_dir,
                               data_root=data_root, out=out, profile=profile, overrides=overrides or [],
                               iterations=iterations, rounds=rounds, epochs=epochs or EPOCHS, seed=seed,
                               device=device, cache_dir=cache_dir, select=select)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console

    Console().print(ablation_table(summary))


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="run directory of `ddkit distill` (finished or still running)"),
    out: str | None = typer.Option(None, "--out", help="folder for the figures (default RUN_DIR/report)"),
    as_json: bool = typer.Option(False, "--json", help="print what was written as JSON"),
) -> None:
    """Figures of a run (loss, lr, selection accuracy, image change, per-class accuracy, images) and a summary."""
    import json

    from challenge_kit.report import build_report

    try:
        result = build_report(run_dir, out)
    except (KitFileError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(result))
        return
    typer.echo(result["summary"], nl=False)
    typer.echo(f"figures in {result['out']}: " + ", ".join(Path(f).name for f in result["files"].values()))


@app.command("make-submission")
def make_submission_cmd(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet"),
    data_root: str = typer.Option("data", "--data-root", help="CIFAR-100 root or tiny-imagenet-200 folder"),
    out: str = typer.Option("submission", "--out", help="output folder (work/ inside keeps experts and the run)"),
    recipe_name: str | None = typer.Option(None, "--recipe", help=RECIPE_HELP),
    profile: str = typer.Option("full", "--profile", help=PROFILE_HELP),
    overrides: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted distillation"),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 through torchvision (online)"),
    experts_dir: str | None = typer.Option(None, "--experts", help="reuse or grow this expert store"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    drop_labels: bool = typer.Option(False, "--drop-labels", help=DROP_HELP),
    replace_experts: bool = typer.Option(False, "--replace-experts", help=REPLACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Real data -> experts -> distillation -> verify -> OUT/<name>.pt, manifest.json, preview.png, report/."""
    from challenge_kit.recipes import load_recipe

    try:
        recipe = load_recipe(recipe_name or dataset, profile, overrides, dataset=dataset)
        from challenge_kit.pipeline import make_submission  # torch: only once the recipe is known to be good

        manifest = make_submission(recipe, data_root, out, resume=resume, device=device, download=download,
                                   experts_dir=experts_dir, cache_dir=cache_dir, drop_labels=drop_labels,
                                   replace_experts=replace_experts,
                                   command={"dataset": dataset, "profile": profile, "method": recipe.method,
                                            "overrides": list(overrides or [])})
    except (KitFileError, ValueError, ExportRefused) as e:
        fail(str(e))
    if manifest is not None:
        _print_manifest(manifest, out, as_json)


@app.command()
def baseline(
    dataset: str = typer.Argument(..., help="cifar100 or tinyimagenet (a mini folder gives a subset spec)"),
    data_root: str = typer.Option(..., "--data-root", help=ROOT_HELP),
    out: str = typer.Option(..., "--out", help="output folder for <name>.pt, manifest.json, preview.png"),
    seed: int = typer.Option(0, "--seed", help="which random images"),
    download: bool = typer.Option(False, "--download", help="download CIFAR-100 first (needs the internet)"),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help=CACHE_HELP),
    image_folder: bool = typer.Option(False, "--image-folder", help="ImageFolder: ROOT/{train,test}/<class>/*"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """The organizers' sample submission: random real images, IPC per class in default order; a floor to beat."""
    from challenge_kit.baseline import make_baseline

    try:
        manifest = make_baseline(dataset, data_root, out, seed=seed, download=download, cache_dir=cache_dir,
                                 image_folder=image_folder)
    except (KitFileError, ValueError, ExportRefused) as e:
        fail(str(e))
    _print_manifest(manifest, out, as_json)
