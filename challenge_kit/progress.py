"""Rich progress bars and tables shared by every long-running command."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(disable: bool = False) -> Progress:
    """A bar with count, rate (via the ``status`` field), elapsed time and ETA, drawn on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def expert_progress(bar, count: int, epochs: int):
    """A ``train_experts`` progress callback drawing one rich bar: expert k/N, epoch, loss, accuracy, ETA."""
    task = bar.add_task("experts", total=None, status="")
    state = {"done": 0, "acc": None}

    def on_event(ev: dict) -> None:
        if ev["kind"] == "plan":
            bar.update(task, total=ev["total"])
        elif ev["kind"] in ("skip", "epoch"):
            state["acc"] = ev.get("acc", state["acc"])
            state["done"] += ev["kind"] == "skip" or ev["epoch"] == ev["epochs"]
        else:
            acc = "" if state["acc"] is None else f" acc {state['acc']:.3f}"
            bar.update(task, advance=1, status=f"expert {state['done'] + 1}/{count} (#{ev['expert']}) "
                                               f"epoch {ev['epoch']}/{epochs} loss {ev['loss']:.3f}{acc}")

    return on_event
