"""The ``ddkit`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer

from challenge_kit.storage import KitFileError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions.")


@app.callback()
def main() -> None:
    """ddkit: distill, verify and score ECCV 2024 DD challenge submissions."""
    # an explicit callback keeps `ddkit <command>` a command group even while it has a single command


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
    from evaluator.inputs import load_inputs
    from evaluator.scorer import EPOCHS, ROUNDS, evaluate_images

    epochs, rounds = EPOCHS if epochs is None else epochs, ROUNDS if rounds is None else rounds
    if epochs < 1 or rounds < 1:
        fail("--epochs and --rounds must be at least 1")
    try:
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
    table = Table(title=f"{spec.name}: {epochs} epochs x {rounds} rounds on {result['device']}"
                        + ("" if result["official"] else " (not the official recipe)"))
    table.add_column("round", justify="right")
    table.add_column("seed", justify="right")
    table.add_column("test accuracy", justify="right")
    for r, (acc, s) in enumerate(zip(result["rounds"], result["seeds"], strict=True)):
        table.add_row(str(r + 1), str(s), f"{acc:.4f}")
    table.add_row("mean", "", f"[bold]{result['mean']:.4f}[/bold]")
    Console().print(table)


__all__ = ["app", "fail", "KitFileError"]
