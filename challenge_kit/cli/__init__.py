"""The ``ddkit`` command line: parses arguments and calls the library, nothing more.

The commands live in modules by job (``scoring``, ``data_cmds``, ``runs``, ``compare``); they are registered here,
in the order ``ddkit --help`` lists them, and each runs inside the one error handler (``handler``).
"""

from __future__ import annotations

import typer

from challenge_kit.cli import compare, data_cmds, plan, runs, scoring, subset
from challenge_kit.cli.handler import KitCommands

app = typer.Typer(cls=KitCommands, add_completion=False, no_args_is_help=True,
                  help="ddkit: distill, verify and score ECCV 2024 DD challenge submissions.")


@app.callback()
def main() -> None:
    """ddkit: distill, verify and score ECCV 2024 DD challenge submissions."""
    from challenge_kit.core.devices import tune_allocator

    tune_allocator()


COMMANDS = {
    "evaluate": scoring.evaluate,
    "verify": scoring.verify,
    "methods": runs.methods,
    "bundle": runs.bundle,
    "subset": subset.subset,
    "reference": data_cmds.reference,
    "experts": data_cmds.experts,
    "experts-import": data_cmds.experts_import,
    "experts-export": data_cmds.experts_export,
    "info": data_cmds.info,
    "distill": runs.distill,
    "export": runs.export,
    "ablate": runs.ablate,
    "compare": compare.compare,
    "report": runs.report,
    "plan": plan.plan,
    "make-submission": runs.make_submission,
    "baseline": runs.baseline,
}
for name, command in COMMANDS.items():
    app.command(name)(command)
