"""How good is the plan? Its time per stage beside what the run then took, from one make-submission folder.

``make-submission`` calibrates the plan at the start of its log and keeps it in the manifest (``plan``) beside
the measured stage times (``timings_s``; the distillation's own seconds are in ``run``): this reads both, so the
plan and the run it predicted are measured in the same process on the same machine.

    ddkit make-submission tinyimagenet --data-root data/tiny-20 --out out/quick --profile quick
    python bench/plan_vs_real.py out/quick
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from challenge_kit.core.progress import make_console


def rows(manifest: dict) -> list[tuple[str, float | None, float]]:
    """(stage, planned seconds, measured seconds): experts, iterations, selection, and the run."""
    plan, timings = manifest["plan"]["stages"], manifest["timings_s"]
    iterations = manifest["run"]["seconds"]

    def planned(name: str) -> float | None:  # a stage the recipe has not (selection off) is planned at 0
        return (plan[name]["total_seconds"]) if name in plan else 0.0

    out = [("experts", planned("experts"), timings["experts"]),
           ("distillation iterations", planned("distillation"), iterations),
           ("selection rounds", planned("selection"), timings["distill"] - iterations)]
    return out + [("the run (experts + distillation)", manifest["plan"]["run_seconds"],
                   timings["experts"] + timings["distill"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a make-submission output folder (its manifest.json)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    manifest = json.loads((Path(args.folder) / "manifest.json").read_text())
    if "plan" not in manifest:
        raise SystemExit(f"{args.folder}/manifest.json: no plan (written before make-submission kept one)")
    table_rows = rows(manifest)
    if args.json:
        print(json.dumps([{"stage": s, "planned_s": p, "measured_s": m} for s, p, m in table_rows], indent=2))
        return
    profile = manifest["run"]["recipe"]["profile"]
    table = Table(title=f"plan vs run: {manifest['run']['spec']['name']} profile {profile} on "
                        f"{manifest['plan']['device']}")
    for column in ("stage", "planned", "measured", "measured / planned"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage, planned, measured in table_rows:
        ratio = f"{measured / planned:.2f}" if planned else "-"
        table.add_row(stage, "-" if planned is None else f"{planned / 60:.1f} min", f"{measured / 60:.1f} min", ratio)
    make_console().print(table)


if __name__ == "__main__":
    main()
