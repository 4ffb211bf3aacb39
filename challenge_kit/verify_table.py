"""A verify report as a rich table, for the terminal."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from challenge_kit.core.verify import FAIL, PASS, WARN, Report


def report_table(report: Report) -> Table:
    """The report as a rich table: one row per check, coloured by status."""
    colour = {PASS: "green", WARN: "yellow", FAIL: "red"}
    where = f"{report.spec.name}{'' if report.spec.challenge else ' (subset)'}" if report.spec else "unknown"
    failed = sum(c.status == FAIL for c in report.checks)
    table = Table(title=escape(f"verify {report.path or 'tensor'} ({where})"),
                  caption=f"exit {report.exit_code}: " + (f"{failed} check(s) failed" if failed else "no check failed"))
    table.add_column("check")
    table.add_column("status")
    table.add_column("reason", overflow="fold")
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status}[/{colour[c.status]}]", escape(c.reason))
    return table
