"""The one place a command's failure becomes what the user sees.

A ``KitError`` (a file, a value or an export the user can fix) ends as one ``error:`` line and exit 1, or the
error's own ``exit_code``; an operating-system error first becomes a ``KitFileError`` naming the file. Anything
else is a bug in the kit and keeps its traceback. A closed pipe (``| head``) ends quietly.
"""

from __future__ import annotations

import os
import sys

import typer
from typer.core import TyperGroup

from challenge_kit.core.errors import KitError, file_errors


def fail(message: str, code: int = 1) -> None:
    """One line on stderr naming the file and the problem, then a non-zero exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


class KitCommands(TyperGroup):
    """Runs every command inside the one error handler."""

    def invoke(self, ctx):
        try:
            with file_errors():
                return super().invoke(ctx)
        except KitError as e:
            fail(str(e), getattr(e, "exit_code", 1))
        except BrokenPipeError:  # the reader went away: stop quietly, as other command-line tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
