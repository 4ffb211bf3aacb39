"""Rich progress bars and tables shared by every long-running command.

On a terminal the bars redraw in place. Anywhere else (a log file, ``docker logs``, CI) a live bar only shows
its final state, so there each task is written as a plain line every ``LOG_INTERVAL`` seconds instead.
"""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

LOG_WIDTH = 200  # columns off a terminal (a log, a pipe), where rich would otherwise cut tables at 80


def make_console(stderr: bool = False, **kwargs) -> Console:
    """A rich console that off a terminal lays tables out at their own width (up to ``LOG_WIDTH``) rather than
    cutting their columns to 80: a log keeps whole stage names and numbers. ``$COLUMNS`` still wins."""
    made = Console(stderr=stderr, **kwargs)
    if not made.is_terminal and "COLUMNS" not in os.environ:
        made.width = LOG_WIDTH
    return made


console = make_console(stderr=True, soft_wrap=True)  # a message is one line in a log too
LOG_INTERVAL = 30.0  # seconds between plain progress lines when the output is not a terminal


def binary_size(value: float) -> str:
    """Bytes in the largest binary unit that keeps one digit before the point (memory figures, plans)."""
    for scale, prefix in ((2**40, "Ti"), (2**30, "Gi"), (2**20, "Mi")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}B"
    return f"{value:.0f} B"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


class LogProgress(Progress):
    """A Progress that also prints each task as one plain line at most every ``interval`` seconds."""

    def __init__(self, *columns, interval: float = LOG_INTERVAL, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self._logged: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        if self.disable:
            return
        task = next(t for t in self.tasks if t.id == task_id)
        now = self.get_time()
        if now - self._logged.setdefault(task_id, now if task.start_time is None else task.start_time) \
                < self.interval:
            return
        self._logged[task_id] = now
        total = "?" if task.total is None else f"{task.total:.0f}"
        percent = "" if task.total is None else f" ({task.percentage:.0f}%)"
        self.console.print(f"{task.description} {task.completed:.0f}/{total}{percent} {task.fields.get('status', '')} "
                           f"elapsed {_clock(task.elapsed)} eta {_clock(task.time_remaining)}",
                           markup=False, highlight=False, soft_wrap=True)


def make_progress(disable: bool = False) -> Progress:
    """A bar with count, rate (via the ``status`` field), elapsed time and ETA, drawn on stderr; plain lines at a
    steady interval when stderr is not a terminal."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    if console.is_terminal and not console.is_dumb_terminal:
        return Progress(*columns, console=console, disable=disable)
    return LogProgress(*columns, console=console, disable=disable)


def expert_progress(bar, count: int, epochs: int):
    """A ``train_experts`` progress callback drawing one rich bar: expert k/N, epoch, the last epoch's loss and
    test accuracy, ETA (per-step losses stay on the device: no host sync per step)."""
    task = bar.add_task("experts", total=None, status="")
    state = {"done": 0, "acc": None, "loss": None}

    def on_event(ev: dict) -> None:
        if ev["kind"] == "plan":
            bar.update(task, total=ev["total"])
        elif ev["kind"] in ("skip", "epoch"):
            state["acc"], state["loss"] = ev.get("acc", state["acc"]), ev.get("loss", state["loss"])
            state["done"] += ev["kind"] == "skip" or ev["epoch"] == ev["epochs"]
        else:
            last = "" if state["acc"] is None else f" last epoch: loss {state['loss']:.3f} acc {state['acc']:.3f}"
            bar.update(task, advance=1, status=f"expert {state['done'] + 1}/{count} (#{ev['expert']}) "
                                               f"epoch {ev['epoch']}/{epochs}{last}")

    return on_event
