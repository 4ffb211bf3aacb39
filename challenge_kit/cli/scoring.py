"""Commands that judge a distilled set or a submission: ``evaluate`` scores it, ``verify`` checks it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from challenge_kit.cli.options import (
    DATASETS,
    DatasetOption,
    Device,
    JsonObject,
    SetPath,
    choice,
    completion,
    out_folder,
    seed_option,
)
from challenge_kit.core.errors import UNREADABLE, KitError, file_errors


class Unreadable(KitError):
    """``verify``'s exit 4: the file could not be checked at all (exit 3: it was read and a check failed)."""

    exit_code = UNREADABLE


def evaluate(
    path: SetPath,
    reference: Annotated[str | None, typer.Option("--reference", metavar="FILE", help="test set of one file: dict "
                                                                                      "of images_val, labels_val")
                         ] = None,
    reference_dir: Annotated[str | None, typer.Option(
        "--reference-dir", metavar="DIR", help="for a .zip: folder with cifar100_test.pt and tinyimagenet_test.pt")
                             ] = None,
    output_dir: Annotated[str | None, out_folder("for a .zip: folder for scores.txt and scores.json")] = None,
    partial: Annotated[bool, typer.Option("--partial", help="for a .zip missing a file: score the other (the "
                                                            "official scorer crashes)")] = False,
    dataset: DatasetOption = None,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="E", help="epochs per round (official 1001)")
                      ] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", metavar="R", help="rounds (official 3)")] = None,
    seed: Annotated[int | None, seed_option("seed; each round gets one derived from it")] = None,
    device: Device = None,
    fast: Annotated[bool, typer.Option("--fast", help="a quick read of one set: the same recipe in bfloat16, "
                                                      "compiled where possible (not the leaderboard's arithmetic)")
                    ] = False,
    as_json: JsonObject = False,
) -> None:
    """Score a distilled set, or a whole submission .zip, exactly as the challenge scorer does."""
    from challenge_kit.cli import render
    from challenge_kit.scoring import score

    # rank 0 (or the only process) shows the result, before writing it: a failing write loses no score
    score(path, reference=reference, reference_dir=reference_dir, output_dir=output_dir, partial=partial,
          dataset=dataset, epochs=epochs, rounds=rounds, seed=seed, device=device, fast=fast,
          report=lambda result: render.show(result, as_json, render.scores))


def verify(
    path: SetPath,
    dataset: Annotated[str, typer.Option("--dataset", metavar="DATASET",
                                         parser=choice("dataset", ("auto", *DATASETS)),
                                         autocompletion=completion(("auto", *DATASETS)),
                                         help="auto (from the file's shape), cifar100 or tinyimagenet")] = "auto",
    reference_model: Annotated[str | None, typer.Option(
        "--reference-model", metavar="CKPT", help="ConvNet state dict .pt (DC/MTT layout) or "
                                                  "expert_XXXX.safetensors")] = None,
    as_json: JsonObject = False,
) -> None:
    """Check format, normalization, label order and (with a model) class order. Exit 0 ok, 3 failed, 4 unreadable.

    A submission .zip: both files at its root and nothing else, each passing every check against its full spec.
    """
    from rich.markup import escape

    from challenge_kit.bundle import verify_zip
    from challenge_kit.cli import render
    from challenge_kit.cli.render import report_table
    from challenge_kit.core.progress import make_console
    from challenge_kit.core.verify import verify_path

    is_zip = Path(path).suffix == ".zip"
    if is_zip and (dataset != "auto" or reference_model):
        raise Unreadable(f"{path}: --dataset and --reference-model check one file; verify the exported .pt with them")
    try:
        with file_errors():
            report = verify_zip(path) if is_zip else verify_path(path, dataset=dataset,
                                                                 reference_model=reference_model)
    except KitError as e:
        raise Unreadable(str(e)) from None
    if as_json:
        render.print_json(report.to_dict())
    elif is_zip:
        out = make_console()
        for member in report.members.values():
            out.print(report_table(member))
        for line in report.failures():
            out.print(f"[red]FAIL[/red] {escape(line)}", soft_wrap=True)
        out.print(escape(f"{path}: exit {report.exit_code}: " + ("ready to upload" if report.ok else
                                                                  "not ready to upload")), soft_wrap=True)
    else:
        make_console().print(report_table(report))
    raise typer.Exit(report.exit_code)
