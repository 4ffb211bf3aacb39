"""The ``ddkit`` command line: parses arguments and calls the library, nothing more.

The commands live in modules by job (``scoring``, ``data_cmds``, ``runs``, ``compare``, ``doctor``); they are
registered here, grouped in ``ddkit --help`` with the main job first, and each runs inside the one error handler
(``handler``). Conventions every command shares (``-h``, choices, ``--out``, ``--json``, exit codes):
docs/cli.md.
"""

from __future__ import annotations

from typing import Annotated

import typer

from challenge_kit.cli import compare, data_cmds, doctor, plan, runs, scoring, subset
from challenge_kit.cli.handler import KitCommand, KitCommands

app = typer.Typer(cls=KitCommands, no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions "
                       "(https://www.dd-challenge.com/). Start with `ddkit doctor`; the main job is "
                       "`ddkit make-submission`.")


def show_version(value: bool) -> None:
    if value:
        from challenge_kit import installed_version

        typer.echo(f"ddkit {installed_version()}")
        raise typer.Exit()


@app.callback()
def main(_: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True,
                                         help="print the kit's version and exit")] = False) -> None:
    """Set the process up once, before any command (``Typer(help=...)`` is what ``ddkit --help`` shows): the
    library's log records shown on stderr, rich on a terminal, plain lines elsewhere."""
    from challenge_kit.core.devices import tune_allocator
    from challenge_kit.core.logs import show_logs

    show_logs()
    tune_allocator()


PANELS = {  # ``ddkit --help`` lists the commands in these groups, in this order
    "The main job": {
        "make-submission": runs.make_submission,
        "plan": plan.plan,
        "verify": scoring.verify,
        "bundle": runs.bundle,
        "evaluate": scoring.evaluate,
    },
    "Data and the floor to beat": {
        "subset": subset.subset,
        "reference": data_cmds.reference,
        "baseline": runs.baseline,
    },
    "Is my set better?": {
        "compare": compare.compare,
        "report": runs.report,
        "ablate": runs.ablate,
        "methods": runs.methods,
    },
    "Step by step": {
        "experts": data_cmds.experts,
        "distill": runs.distill,
        "export": runs.export,
        "info": data_cmds.info,
        "experts-import": data_cmds.experts_import,
        "experts-export": data_cmds.experts_export,
    },
    "This machine": {
        "doctor": doctor.doctor,
    },
}
COMMANDS = {name: command for panel in PANELS.values() for name, command in panel.items()}
for panel, commands in PANELS.items():
    for name, command in commands.items():
        app.command(name, cls=KitCommand, rich_help_panel=panel)(command)
