"""``ddkit doctor``: the machine, the data roots given and the shipped recipes, as a run will meet them."""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli.options import CacheDir, JsonObject


def doctor(
    data_roots: Annotated[list[str] | None, typer.Option("--data-root", metavar="ROOT",
                                                         help="a data root to look into (repeatable)")] = None,
    cache_dir: CacheDir = None,
    as_json: JsonObject = False,
) -> None:
    """What a run here will meet: versions, devices, bfloat16, a compiler, the cache, your data, the recipes."""
    from challenge_kit.cli import render
    from challenge_kit.doctor import checkup

    result = checkup(data_roots or [], cache_dir)
    render.show(result.to_dict(), as_json, render.checkup)
    raise typer.Exit(result.exit_code)
