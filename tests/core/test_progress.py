"""Output off a terminal (a log file, a pipe, a batch job): tables keep their width, progress is plain lines at a
steady interval, and a message stays one line."""

import io

import pytest
from rich.console import Console
from rich.table import Table

from challenge_kit.core import progress


@pytest.mark.parametrize("columns", [None, "80"])
def test_off_a_terminal_a_table_keeps_its_width_unless_columns_says(monkeypatch, columns):
    """A log is not cut at rich's 80 columns: whole stage names and numbers, unless $COLUMNS asks."""
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    table = Table()
    for column in ("stage", "units", "FLOP / unit", "FLOP", "peak memory", "time / unit", "time"):
        table.add_column(column)
    table.add_row("distillation", "10,000", "47.8 TFLOP", "477.6 PFLOP", "5.1 GiB", "25.9 min", "179.7 d")
    out = progress.make_console(file=io.StringIO())
    out.print(table)
    widest = max(map(len, out.file.getvalue().splitlines()))
    assert ("distillation" in out.file.getvalue() and widest > 80) == (columns is None), out.file.getvalue()


def test_progress_without_a_terminal_is_plain_lines_at_a_steady_interval(monkeypatch):
    file = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=file, width=200))
    now = [0.0]
    bar = progress.make_progress()
    assert isinstance(bar, progress.LogProgress)
    bar.get_time = lambda: now[0]
    with bar:
        task = bar.add_task("distill", total=100, status="")
        for i in range(1, 101):
            now[0] = float(i)
            bar.update(task, completed=i, status=f"loss {i}")
    lines = file.getvalue().splitlines()
    assert lines[:3] == ["distill 30/100 (30%) loss 30 elapsed 0:00:30 eta 0:01:10",
                         "distill 60/100 (60%) loss 60 elapsed 0:01:00 eta 0:00:40",
                         "distill 90/100 (90%) loss 90 elapsed 0:01:30 eta 0:00:10"]
    assert "\x1b" not in file.getvalue()


def test_messages_stay_one_line_in_a_log(monkeypatch):
    file = io.StringIO()
    # rich's private _file: patching the ``file`` property would pin the console to today's sys.stderr for
    # every later test (undo sets the property to what it returned), hiding their output from CliRunner
    monkeypatch.setattr(progress.console, "_file", file)
    progress.console.print("a long message " * 20)
    assert file.getvalue().count("\n") == 1
