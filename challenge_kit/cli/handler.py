"""The one place a command's failure becomes what the user sees.

A ``KitError`` (a file, a value or an export the user can fix) ends as one ``error:`` line and exit 1, or the
error's own ``exit_code``; an operating-system error first becomes a ``KitFileError`` naming the file. A usage
error (an unknown option or choice, a missing argument, a value of the wrong type) is one ``error:`` line too,
exit 2, not click's boxed panel. Ctrl-C and SIGTERM (handled alike, ``core/interrupts``) end as one line saying
how to continue, exit 130 and 143. Anything else is a bug in the kit and keeps its traceback. A closed pipe
(``| head``) ends quietly. A command asked for ``--json`` also prints its error as a JSON object on stdout, unless
it printed its result already (a score whose file could not be written), so a program reading it gets one JSON
object either way. The exit codes are ``core/errors``'s table.
"""

from __future__ import annotations

import json
import os
import sys

import typer
from typer.core import TyperCommand, TyperGroup

from challenge_kit.core.errors import USAGE, KitError, file_errors
from challenge_kit.core.interrupts import exit_code, interrupted_line, interruption, sigterm_as_interrupt, speaks

UsageError = typer.BadParameter.__base__  # click's, wherever this typer takes click from

AGAIN = "run the same command again"
RESUME = "run the same command with --resume to continue from the last checkpoint"
CONTINUE = {  # how each command continues after an interruption; the others start over
    "distill": RESUME,
    "make-submission": RESUME + " (finished experts are kept)",
    "experts": AGAIN + " to continue: finished experts and saved epochs are kept",
    "ablate": AGAIN + " to continue: finished variants are kept",
}


_printed: list[bool] = []  # whether this invocation has printed its JSON object


def print_json(data, pretty: bool = False) -> None:
    """The one way a command prints JSON, so that an error knows whether the result is out already."""
    typer.echo(json.dumps(data, indent=2, sort_keys=True) if pretty else json.dumps(data))
    _printed.append(True)


def fail(message: str, code: int = 1, as_json: bool = False) -> None:
    """One line on stderr naming the file or option and the problem (and the JSON refusal), a non-zero exit."""
    if as_json and not _printed:
        print_json({"ok": False, "exit_code": code, "error": message})
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def usage_message(e: Exception, ctx) -> str:
    """A usage error as ``OPTION: what is wrong``, pointing at the help where the option itself is unknown."""
    param = getattr(e, "param", None)
    if isinstance(e, typer.BadParameter) and param is not None and type(e).__name__ != "MissingParameter":
        name = param.opts[0] if param.param_type_name == "option" else param.metavar or param.name.upper()
        return f"{name}: {e.message}"
    where = getattr(e, "ctx", None) or ctx
    message = e.format_message().rstrip(".")
    return f"{message}; see '{where.command_path} --help'" if where is not None else message


class FlagsAsFlags:
    """A flag takes no value: its help row shows none (typer would print ``<bool>`` beside it)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class KitCommand(FlagsAsFlags, TyperCommand):
    """Every subcommand: flags shown as flags."""


class KitCommands(FlagsAsFlags, TyperGroup):
    """Runs every command inside the one error handler."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as e:  # the group's own options: ``ddkit --bogus``
            if type(e).__name__ == "NoArgsIsHelpError":  # a bare ``ddkit``: the help, as asked
                raise
            fail(usage_message(e, None), USAGE)

    def invoke(self, ctx):
        as_json = "--json" in ctx.args  # the subcommand's own arguments, before click consumes them
        _printed.clear()
        try:
            with sigterm_as_interrupt(), file_errors():
                return super().invoke(ctx)
        except BaseException as e:
            interrupt = interruption(e)
            if interrupt is not None:  # the clean-up ran on the way out: temp files gone, locks released
                command = ctx.invoked_subcommand
                if speaks():
                    typer.echo(interrupted_line(interrupt, f"ddkit {command}", CONTINUE.get(command, AGAIN)),
                               err=True)
                raise typer.Exit(exit_code(interrupt)) from None
            if isinstance(e, KitError):
                fail(str(e), e.exit_code, as_json)
            if isinstance(e, UsageError) and type(e).__name__ != "NoArgsIsHelpError":
                fail(usage_message(e, ctx), USAGE, as_json)
            if isinstance(e, BrokenPipeError):  # the reader went away: stop quietly, as other tools do
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise typer.Exit(1) from None
            raise
