"""``ddkit ablate``: methods side by side on the same data, experts, seeds and scoring budget.

Each variant (a recipe) distills in its own process, so a crash or an out-of-memory kill is one row of the
table and its peak memory is its own, then the chosen set is scored with the challenge scorer's recipe
(default-order hard labels: what the leaderboard sees) on the test split, with the same round seeds for every
variant, so differences are paired. Finished variants are skipped on a rerun. Variants whose expert settings
differ (FIEX, smooth experts) train their experts once into the shared store, in a folder keyed by those
settings (``recipes.identity.expert_settings``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.devices import resolve_device, usable_device
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.expert_file import read_expert
from challenge_kit.core.folders import run_lock
from challenge_kit.core.interrupts import exit_code, interrupted_line, interruption, sigterm_as_interrupt
from challenge_kit.core.storage import make_folders, save_json, save_text
from challenge_kit.experts.store import expert_files
from challenge_kit.pipeline import load_data, run_distill, train_experts
from challenge_kit.plots import bar_chart
from challenge_kit.recipes import ExpertConfig, Recipe, load_recipe, recipe_path
from challenge_kit.recipes.configs import section_dict
from challenge_kit.recipes.identity import expert_settings
from challenge_kit.runs import BEST, CHECKPOINT, SUMMARY
from challenge_kit.stats import mean_se, paired
from evaluator.scorer import evaluate_images

log = logging.getLogger(__name__)
RESULT = "ablate.json"
CHILD_GRACE = 60.0  # seconds a variant gets to stop cleanly once an interruption is passed on to it
CHART = "ablate.png"
VARIANT_RESULT = "variant.json"


def _settings(folder: Path) -> dict | None:
    """The expert settings of a store's first expert (None: an empty folder, or a file that cannot be read)."""
    files = expert_files(folder)
    try:
        config = read_expert(files[0], snapshots=False).meta.get("config") if files else None
    except KitFileError:
        return None
    return expert_settings(config) if isinstance(config, dict) else None


def expert_dir(root: Path, config: ExpertConfig) -> Path:
    """``root`` itself for the settings of the experts already there (or when empty), else the subfolder of
    ``by-settings`` whose experts have these settings (whichever version keyed it), else a new one keyed by them."""
    mine = expert_settings(section_dict(config))
    if not expert_files(root) or _settings(root) == mine:
        return root
    found = [folder for folder in sorted((root / "by-settings").glob("*")) if _settings(folder) == mine]
    key = hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:10]
    name = "-".join(re.sub(r"[^\w.]+", "-", choice.name) for choice in (config.objective, config.schedule))
    return found[0] if found else root / "by-settings" / f"{name}-{key}"


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def run_variant(job: dict) -> dict:
    """One variant, in its own process: experts (if its store lacks them), distillation, scoring."""
    recipe = load_recipe(job["recipe"], job["profile"], job["overrides"], dataset=job["dataset"])
    device = resolve_device(job["device"])
    out = Path(job["out"])
    splits = load_data(recipe, job["data_root"], cache_dir=job["cache_dir"])
    store = expert_dir(Path(job["experts"]), recipe.experts)
    tick = time.perf_counter()
    train_experts(recipe, splits, store, device, show_progress=False)
    expert_seconds = time.perf_counter() - tick
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not (out / "run" / SUMMARY).is_file():
        run_distill(recipe, splits, store, out / "run", device=device, resume=(out / "run" / CHECKPOINT).exists(),
                    show_progress=False)
    peak = _peak_mb(device)
    summary = json.loads((out / "run" / SUMMARY).read_text())
    images = DistilledArtifact.load(out / "run" / BEST).images
    score = evaluate_images(images, splits.spec, *splits.test, rounds=job["rounds"], epochs=job["epochs"],
                            seed=job["seed"], device=device, show_progress=False, mode=recipe.eval.scorer)
    result = {"status": "ok", "method": recipe.method, "parts": recipe.parts(), "experts": str(store),
              "expert_seconds": expert_seconds, "seconds_per_iteration": summary["seconds_per_iteration"],
              "iterations": summary["iterations"], "exported_iteration": summary["exported_iteration"],
              "peak_mb": peak, "rounds": score["rounds"], "seeds": score["seeds"], "epochs": job["epochs"],
              "scorer": score["scorer"]}
    save_json(result, out / VARIANT_RESULT)
    return result


def _names(recipes: list[str]) -> list[str]:
    names, seen = [], {}
    for r in recipes:
        stem = recipe_path(r).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _variant(name: str, recipe_name: str, recipe: Recipe, out: Path, **job) -> dict:
    """One row: the variant's saved result, or a fresh run of it in a child process (its crash is the row)."""
    folder = out / name
    done = folder / VARIANT_RESULT
    result = json.loads(done.read_text()) if done.is_file() else None
    stale = result is None or len(result.get("rounds") or []) != job["rounds"] or \
        result.get("epochs") != job["epochs"] or (result.get("scorer") or {}).get("mode") != recipe.eval.scorer
    if stale:
        log.info(f"{name} ({recipe.method}): distilling and scoring")
        make_folders(folder)
        spec = {"recipe": recipe_name, "profile": job["profile"], "overrides": job["extra"], "dataset": job["dataset"],
                "device": job["device"], "out": str(folder), "data_root": str(job["data_root"]),
                "cache_dir": None if job["cache_dir"] is None else str(job["cache_dir"]),
                "experts": str(job["experts"]), "rounds": job["rounds"], "epochs": job["epochs"], "seed": job["seed"]}
        proc = _run_child([sys.executable, "-m", "challenge_kit.ablate", json.dumps(spec)], folder / "log.txt")
        if proc.returncode == 0 and done.is_file():
            result = json.loads(done.read_text())
        else:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
            result = {"status": "failed", "error": lines[-1][:300], "exit_code": proc.returncode}
            log.error(f"{name} failed: {result['error']} (log: {folder / 'log.txt'})")
    return {"variant": name, "recipe": recipe_name, "method": recipe.method, "parts": recipe.parts(), **result}


def _run_child(argv: list[str], log: Path) -> subprocess.CompletedProcess:
    """A variant's process, its output kept in ``log``. Interrupted ourselves (Ctrl-C, SIGTERM), we pass SIGTERM
    on and wait for the variant to stop as a command stops (temporary files gone, lock released, its last
    checkpoint whole, so a rerun continues it); only one still running after ``CHILD_GRACE`` is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=CHILD_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        save_text(out + err, log)
        raise
    save_text(out + err, log)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def ablate(recipes: list[str], *, dataset: str, experts: str | Path, data_root: str | Path, out: str | Path,
           profile: str, overrides: list[str], iterations: int | None, rounds: int, epochs: int, seed: int,
           device: str | None, cache_dir: str | Path | None, select: bool = False) -> dict:
    """Run every variant (each in a subprocess, skipping finished ones) and compare them with the first.

    Without ``select`` each variant's last iteration is scored (the comparison is of methods, not of model
    selection); with it, each exports what its own held-out selection chose.
    """
    out = Path(out)
    extra = list(overrides) + ([f"distill.iterations={iterations}"] if iterations is not None else []) \
        + ([] if select else ["eval.every=0"])
    loaded: list[Recipe] = [load_recipe(r, profile, extra, dataset=dataset) for r in recipes]  # fail before work
    usable_device(device)
    with run_lock(out), run_lock(experts):
        rows = [_variant(name, recipe_name, recipe, out, extra=extra, profile=profile, dataset=dataset,
                         device=device, data_root=data_root, cache_dir=cache_dir, experts=experts, rounds=rounds,
                         epochs=epochs, seed=seed)
                for name, recipe_name, recipe in zip(_names(recipes), recipes, loaded, strict=True)]
    base = rows[0]
    for row in rows:
        if row["status"] == "ok":
            row["mean"], row["se"] = mean_se(row["rounds"])
            if base["status"] == "ok" and row is not base:
                row["difference"] = paired(row["rounds"], base["rounds"])
    summary = {"dataset": dataset, "profile": profile, "overrides": extra, "rounds": rounds, "epochs": epochs,
               "seed": seed, "split": "test", "variants": rows}
    save_json(summary, out / RESULT)
    ok = [r for r in rows if r["status"] == "ok"]
    if ok:
        bar_chart(out / CHART, f"scorer-recipe test accuracy, {epochs} epochs x {rounds} paired rounds (mean +- s.e.)",
                  "accuracy", [r["variant"] for r in ok], [r["mean"] for r in ok], [r["se"] for r in ok])
    return summary


def main() -> None:
    """A variant's process (its entry point: its log records are shown, and its last word is its own line, as the
    command line's): SIGTERM (from an interrupted ``ablate``) stops it as Ctrl-C does, with one line."""
    from challenge_kit.core.devices import tune_allocator
    from challenge_kit.core.logs import show_logs

    show_logs()
    tune_allocator()
    try:
        with sigterm_as_interrupt():
            run_variant(json.loads(sys.argv[1]))
    except BaseException as e:
        if (interrupt := interruption(e)) is None:
            raise
        print(interrupted_line(interrupt, "this variant", "run ddkit ablate again to continue it"), file=sys.stderr)
        sys.exit(exit_code(interrupt))


if __name__ == "__main__":
    main()
