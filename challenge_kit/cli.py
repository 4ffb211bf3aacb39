"""The ``ddkit`` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import typer

from challenge_kit.storage import KitFileError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions.")


def fail(message: str, code: int = 1) -> None:
    """One line on stderr naming the file and the problem, then a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


__all__ = ["app", "fail", "KitFileError"]
