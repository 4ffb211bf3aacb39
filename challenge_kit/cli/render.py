"""What the commands show: one JSON object on stdout with ``--json``, else rich tables for people.

Imported inside the commands: rich's tables cost a tenth of a second that a command refused on its options
need not pay.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from challenge_kit.cli.handler import print_json
from challenge_kit.core.progress import binary_size, console, make_console
from challenge_kit.core.verify import FAIL, PASS, WARN, Report


def show(data, as_json: bool, draw: Callable[[dict], None], pretty: bool = False) -> None:
    """``data`` as JSON with ``--json``, else drawn for people."""
    if as_json:
        print_json(data, pretty)
    else:
        draw(data)


def parts_differ(parts: dict[str, str], base: dict[str, str]) -> str:
    """The parts a method chooses differently from ``base``, as ``kind=name, ...`` (``-`` for none)."""
    return ", ".join(f"{k}={v}" for k, v in parts.items() if v != base[k]) or "-"


def accuracy(a: float | None) -> str:
    return "-" if a is None else f"{a:.4f}"


def scores(result: dict) -> None:
    """A score for people: a submission's datasets and final figure, or one set's rounds and mean."""
    (submission_scores if "datasets" in result else set_scores)(result)


def official_note(result: dict) -> str:
    fast = (result.get("scorer") or {}).get("mode") == "fast"
    return "" if result["official"] else " (fast scorer: not the leaderboard's arithmetic)" if fast else \
        " (not the official recipe)"


def set_scores(result: dict) -> None:
    table = Table(title=f"{result['dataset']} test accuracy", caption=f"{result['epochs']} epochs x "
                  f"{len(result['rounds'])} rounds on {result['device']}{official_note(result)}")
    for name in ("round", "seed", "test accuracy"):
        table.add_column(name, justify="right")
    for r, (acc, s) in enumerate(zip(result["rounds"], result["seeds"], strict=True)):
        table.add_row(str(r + 1), str(s), f"{acc:.4f}")
    table.add_row("mean", "", f"[bold]{result['mean']:.4f}[/bold]")
    make_console().print(table)


def submission_scores(summary: dict) -> None:
    table = Table(title="submission score", caption=f"{summary['epochs']} epochs x {summary['rounds']} rounds on "
                                                    f"{summary['device']}{official_note(summary)}")
    for name in ("dataset", "rounds", "mean"):
        table.add_column(name, justify="left" if name == "dataset" else "right")
    for name, r in summary["datasets"].items():
        table.add_row(name, " ".join(f"{a:.4f}" for a in r["rounds"]), f"{r['mean']:.4f}")
    for name in summary["skipped"]:
        table.add_row(name, "[yellow]skipped: not in the zip[/yellow]", "")
    partial = " [yellow](partial: not a figure the official scorer gives)[/yellow]" if summary["partial"] else ""
    table.add_row("correct", "", f"[bold]{summary['correct']:.4f}[/bold]{partial}")
    make_console().print(table)


def methods(listing: dict, kinds: dict[str, str]) -> None:
    """The shipped method recipes (what each changes against M-DATM), then every part by kind."""
    out = make_console()
    table = Table(title="methods (--recipe NAME; submissions/research/NAME.toml)")
    for col in ("name", "method", "parts that differ from M-DATM", "description"):
        table.add_column(col, overflow="fold")
    rows = listing["methods"]
    base = next(r["parts"] for r in rows if r["name"] == "m-datm")
    for r in rows:
        table.add_row(r["name"], r["method"], parts_differ(r["parts"], base),
                      r["description"] + (" [research]" if r["research"] else ""))
    out.print(table)
    table = Table(title="parts (chosen in a recipe by name)")
    for col in ("kind", "name", "from", "what it does"):
        table.add_column(col, overflow="fold")
    shown: set[str] = set()
    for p in listing["parts"]:
        table.add_row("" if p["kind"] in shown else f"{p['kind']}: {kinds[p['kind']]}", p["name"], p["source"],
                      p["summary"])
        shown.add(p["kind"])
    out.print(table)


def bundle(manifest: dict, out: str, manifest_file: str | Path) -> None:
    table = Table(title=f"{out} (manifest: {manifest_file})", caption=f"sha256 {manifest['sha256']}")
    for name in ("member", "from", "bytes", "sha256"):
        table.add_column(name, overflow="fold")
    for name, member in manifest["members"].items():
        table.add_row(name, member["source"], f"{member['bytes']:,}", member["sha256"][:16] + "...")
    console.print(table)


def experts(rows: list[dict], title: str) -> None:
    """An expert store, one row per expert file: progress, accuracy, size, and why one is not usable."""
    table = Table(title=title)
    for name in ("expert", "status", "epochs", "last acc", "best acc", "size", "note"):
        table.add_column(name, justify="left" if name in ("expert", "status", "note") else "right")
    for r in rows:
        epochs = "-" if r["epochs"] is None else f"{r['completed_epochs']}/{r['epochs']}"
        colour = {"complete": "green", "partial": "yellow", "corrupt": "red"}[r["status"]]
        table.add_row(r["name"], f"[{colour}]{r['status']}[/{colour}]", epochs, accuracy(r["last_acc"]),
                      accuracy(r["best_acc"]), f"{r['size'] / 2**20:.1f} MiB", r["problem"] or r.get("source") or "")
    make_console().print(table)


def manifest(data: dict, out: str, as_json: bool) -> None:
    """An export's manifest: the whole of it as JSON, or its main items for people."""
    if as_json:
        print_json(data, pretty=True)
        return
    table = Table(title=f"exported to {out}")
    table.add_column("item")
    table.add_column("value")
    run = data.get("run", {})
    for key, value in [("file", data["file"]), ("sha256", data["sha256"][:16] + "..."),
                       ("shape", "x".join(map(str, data["shape"]))),
                       ("challenge submission", "yes" if data["challenge_submission"] else "NO (subset spec)"),
                       ("iterations", run.get("iterations")), ("skipped updates", run.get("skipped")),
                       ("exported iteration", data.get("best_iteration")),
                       ("selection", (data.get("selection") or {}).get("reason")),
                       ("verify", "PASS" if data["verify"]["ok"] else "FAIL")]:
        if value is not None:
            table.add_row(key, str(value))
    console.print(table)


def ablation(summary: dict) -> None:
    """An ablation: accuracy, paired difference to the first variant, cost."""
    rows = summary["variants"]
    base = rows[0]
    table = Table(title=f"ablation on {summary['dataset']} ({summary['profile']} profile): scorer recipe, "
                        f"{summary['epochs']} epochs x {summary['rounds']} paired rounds on the test split",
                  caption=f"difference: paired over the same round seeds, against {base['variant']}; "
                          "peak memory: CUDA peak allocated, or the variant process's peak RSS on a CPU")
    for col in ("variant", "parts (vs first)", "accuracy", f"vs {base['variant']}", "s / iteration", "peak MiB",
                "status"):
        table.add_column(col, justify="left" if col in ("variant", "parts (vs first)", "status") else "right",
                         overflow="fold")
    for r in rows:
        differ = parts_differ(r["parts"], base["parts"])
        if r["status"] != "ok":
            table.add_row(r["variant"], differ, "-", "-", "-", "-", f"[red]failed[/red]: {r['error']}")
            continue
        diff = r.get("difference")
        table.add_row(r["variant"], differ, f"{r['mean']:.4f} +- {r['se']:.4f}",
                      "-" if diff is None else f"{diff['mean']:+.4f} +- {diff['se']:.4f}",
                      f"{r['seconds_per_iteration']:.2f}", f"{r['peak_mb']:.0f}", "ok")
    make_console().print(table)


def report(result: dict) -> None:
    """A run's summary text and the figures written."""
    typer.echo(result["summary"], nl=False)
    typer.echo(f"figures in {result['out']}: " + ", ".join(Path(f).name for f in result["files"].values()))


def checkup(result: dict) -> None:
    """``ddkit doctor`` for people: one row per check, coloured by status."""
    colour = {"ok": "green", "warn": "yellow", "fail": "red"}
    failed = sum(r["status"] == "fail" for r in result["checks"])
    table = Table(title="what a run here will meet", caption=f"exit {result['exit_code']}: " + (
        f"{failed} check(s) would stop a run" if failed else "nothing here would stop a run"))
    for column in ("check", "status", "found"):
        table.add_column(column, overflow="fold")
    for r in result["checks"]:
        table.add_row(escape(r["name"]), f"[{colour[r['status']]}]{r['status']}[/{colour[r['status']]}]",
                      escape(r["found"]))
    make_console().print(table)


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


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for scale, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= 2 * scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.2f} s"


def _span(timing: dict | None) -> str:
    """A calibrated time as its range, ``1.1-1.4 s`` (one figure where the passes agree to the digit shown)."""
    if timing is None:
        return "-"
    low, high = _time(timing["low"]), _time(timing["high"])
    if low == high:
        return low
    (a, unit_a), (b, unit_b) = low.rsplit(" ", 1), high.rsplit(" ", 1)
    return f"{a}-{b} {unit_a}" if unit_a == unit_b else f"{low} - {high}"


def plan_table(plan: dict) -> None:
    """``ddkit plan`` for people: what each stage does, then one row per stage and the distillation's memory."""
    r, spec = plan["recipe"], plan["spec"]
    subset = "" if spec["challenge"] else ", a subset"
    counted = f"counted in {plan['source']}" if plan["source"] else "the full download's count"
    console.print(escape(f"{spec['name']} ({spec['num_classes']} classes{subset}), profile {r['profile']}, "
                         f"{r['method']}: {plan['train_images']:,} training images ({counted}, less those held out "
                         f"for selection), on {plan['device']}"), soft_wrap=True)
    for s in plan["stages"]:
        console.print(escape(f"  {s['name']}: {s['what']}; unit: {s['unit']}"), soft_wrap=True)
    table = Table(caption="time: the range of the calibration's passes on this device"
                  if plan["run"] is not None else "not calibrated (--no-calibrate): no times")
    for column in ("stage", "units", "FLOP / unit", "FLOP", "peak memory", "time / unit", "time"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for s in plan["stages"]:
        unit = None if s["timing"] is None else s["timing"]
        table.add_row(s["name"] if s["in_run"] else f"[dim]{s['name']} (not in this run)[/dim]", f"{s['units']:,}",
                      _si(s["flops"], "FLOP"), _si(s["total_flops"], "FLOP"), binary_size(s["peak_bytes"]),
                      _span(unit), _span(s["total"]))
    console.print(table)
    peaks = ", ".join(f"{mode} {binary_size(b)}" for mode, b in plan["matching_peak_bytes"].items())
    console.print(f"one distillation iteration's peak tensor memory: {peaks} (counted, before allocator overhead)")
    if plan["device_bytes"] is not None:
        fits = ", ".join(f"{mode} {'fits' if b <= plan['device_bytes'] else 'does not fit'}"
                         for mode, b in plan["matching_peak_bytes"].items())
        console.print(f"this {plan['device']} has {binary_size(plan['device_bytes'])}: {fits}")
    if plan["run"] is not None:
        console.print(f"the run: about {_time(plan['run']['median'])} here ({_span(plan['run'])} over the "
                      f"calibration's passes; the official score is not part of it)", soft_wrap=True)
