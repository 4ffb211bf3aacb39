"""``ddkit report RUN_DIR``: what a distillation run did, as figures and a short text summary.

Works on a finished run (``run.json``, ``best.safetensors``) and on one still going (its live history and
last checkpoint), so a long run can be looked at while it runs.
"""

from __future__ import annotations

from pathlib import Path

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.folders import inner_folder
from challenge_kit.core.storage import save_text
from challenge_kit.plots import Series, bar_chart, line_chart, write_preview
from challenge_kit.runs import BEST, CHECKPOINT, SUMMARY, read_checkpoint, read_history, read_summary, run_spec
from challenge_kit.stats import smooth

REPORT_DIR = "report"
WEAKEST = 5


def _run_state(run_dir: Path) -> tuple[dict, DistilledArtifact | None, DatasetSpec]:
    """(summary-like dict, chosen set if finished, spec), from run.json or, mid-run, the checkpoint."""
    if (run_dir / SUMMARY).is_file():
        summary = read_summary(run_dir)
        artifact = DistilledArtifact.load(run_dir / BEST) if (run_dir / BEST).is_file() else None
        return summary, artifact, run_spec(summary.get("spec"), run_dir / SUMMARY)
    if not (run_dir / CHECKPOINT).is_file():
        raise KitFileError(run_dir, "not a distillation run (no run.json or checkpoint.pt)")
    saved, spec, state = read_checkpoint(run_dir / CHECKPOINT)
    recipe = saved["recipe"]
    summary = {"recipe": recipe, "method": recipe.get("method"), "iterations": state.iteration,
               "skipped": state.skipped, "seconds_per_iteration": state.seconds / max(1, state.iteration),
               "selection": {"candidates": state.candidates, "reason": "run in progress", "export": None,
                             "split": (recipe.get("eval") or {}).get("split")}, "running": True}
    current = DistilledArtifact(state.images, state.labels, spec, lr=float(state.lr))
    return summary, current, spec


def _per_class(selection: dict) -> list[float] | None:
    """Per-class accuracy of the exported set: its fresh final rounds if run, else its selection rounds."""
    final, export = selection.get("final"), selection.get("export")
    if final:
        return final["init" if export == 0 else "leader"].get("per_class")
    return next((c.get("per_class") for c in selection.get("candidates", []) if c["iteration"] == export), None)


def run_words(run_dir: str | Path, data_root: str | Path, *, image_folder: bool = False) -> list[str]:
    """The run's classes in the words of ``data_root`` (``data.class_words``), which must hold the run's classes."""
    from challenge_kit.data import class_words, dataset_spec

    spec = _run_state(Path(run_dir))[2]
    found = dataset_spec(spec.name, data_root, image_folder=image_folder)
    if found.num_classes != spec.num_classes or (spec.class_names and found.class_names != spec.class_names):
        raise KitFileError(data_root, f"holds {found.describe()}, the run is {spec.describe()}: not the run's "
                                      "classes")
    return class_words(spec.name, data_root, image_folder=image_folder)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, names: list[str] | None = None) -> dict:
    """Write the figures and ``summary.txt`` into ``out_dir`` (default RUN_DIR/report, a real folder made there,
    never a link); returns what was written.
    ``names``: the classes in words (``data.class_words``), else the spec's names."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else inner_folder(run_dir, REPORT_DIR)
    summary, artifact, spec = _run_state(run_dir)
    history = read_history(run_dir)
    selection = summary.get("selection") or {}
    candidates = selection.get("candidates") or []
    its = [h["iteration"] for h in history]
    files: dict[str, str] = {}

    def add(name: str, path: Path) -> None:
        files[name] = str(path)

    if history:
        losses = [h["loss"] for h in history]
        add("loss", line_chart(out / "loss.png", "matching loss", "iteration", "normalized distance",
                               [Series("raw", its, losses, width=1, alpha=0.5),
                                Series("smoothed", its, smooth(losses), width=2.5)]))
        add("lr", line_chart(out / "lr.png", "learned inner lr (not used by the scorer)", "iteration", "lr",
                             [Series("lr", its, [h["lr"] for h in history])]))
        change = Series("change", its, [h["image_change"] for h in history], style="o")
        add("image_change", line_chart(out / "image_change.png", "relative image change per update", "iteration",
                                       "||x' - x|| / ||x||", [change]))
    if candidates:
        split = selection.get("split") or "selection"
        at = [c["iteration"] for c in candidates]
        series = [Series("candidates", at, [c["mean"] for c in candidates],
                         [c["se"] for c in candidates], style="o-"),
                  Series("initialization", at, [candidates[0]["mean"]] * len(candidates), style="--")]
        add("selection", line_chart(out / "selection.png", f"scorer-recipe accuracy on the {split} split "
                                    "(mean +- s.e., paired rounds)", "iteration", "accuracy", series, log_y=False))
    per_class = _per_class(selection)
    weakest: list[tuple[str, float]] = []
    if per_class:
        names = list(names or spec.class_names or [str(c) for c in range(spec.num_classes)])
        order = sorted(range(len(per_class)), key=lambda c: per_class[c])
        weakest = [(names[c], per_class[c]) for c in order[:WEAKEST]]
        add("classes", bar_chart(out / "classes.png", "per-class accuracy of the exported set (weakest in red)",
                                 "accuracy", names, per_class, highlight=set(order[:WEAKEST]),
                                 highlight_name=f"{WEAKEST} weakest"))
    if artifact is not None:
        add("images", write_preview(artifact.images, spec, out / "images.png", classes=min(spec.num_classes, 20),
                                    names=names))
    text = summary_text(summary, history, candidates, weakest)
    save_text(text, out / "summary.txt")
    add("summary", out / "summary.txt")
    return {"out": str(out), "files": files, "summary": text}


def summary_text(summary: dict, history: list[dict], candidates: list[dict], weakest: list[tuple[str, float]]) -> str:
    recipe = summary.get("recipe", {})
    selection = summary.get("selection") or {}
    lines = [f"method: {summary.get('method')} ({recipe.get('dataset')}, profile {recipe.get('profile')})",
             "parts: " + ", ".join(f"{k}={v}" for k, v in (summary.get("parts") or {}).items())]
    if summary.get("running"):
        lines.append("status: running (from the last checkpoint and the live history)")
    lines.append(f"iterations: {summary.get('iterations')}, skipped {summary.get('skipped')}, "
                 f"{summary.get('seconds_per_iteration', 0):.2f} s per iteration")
    if history:
        k = max(1, min(50, len(history) // 4))
        first = sum(h["loss"] for h in history[:k]) / k
        last = sum(h["loss"] for h in history[-k:]) / k
        lines.append(f"loss: mean of the first {k} iterations {first:.4f}, of the last {k} {last:.4f}; "
                     f"lr {history[0]['lr']:.5f} -> {history[-1]['lr']:.5f}")
    if candidates:
        mode = (selection.get("scorer") or {}).get("mode", "faithful")
        lines.append(f"selection on the {selection.get('split')} split, {len(candidates[0]['rounds'])} paired rounds "
                     f"per candidate ({mode} scorer):")
        lines += [f"  iteration {c['iteration']:>6}: {c['mean']:.4f} +- {c['se']:.4f}" for c in candidates]
    final = selection.get("final")
    if final:
        d = final["difference"]
        lines.append(f"final: best candidate {final['leader']['mean']:.4f} vs initialization "
                     f"{final['init']['mean']:.4f} on {d['rounds']} fresh paired rounds, difference "
                     f"{d['mean']:+.4f} +- {d['se']:.4f}")
    lines.append(f"exported: iteration {selection.get('export')} ({selection.get('reason')})")
    if weakest:
        lines.append("weakest classes: " + ", ".join(f"{n} {a:.2f}" for n, a in weakest))
    return "\n".join(lines) + "\n"

