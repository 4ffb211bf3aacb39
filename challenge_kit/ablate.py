"""``ddkit ablate``: methods side by side on the same data, experts, seeds and scoring budget.

Each variant (a recipe) distills in its own process, so a crash or an out-of-memory kill is one row of the
table and its peak memory is its own, then the chosen set is scored with the challenge scorer's recipe
(default-order hard labels: what the leaderboard sees) on the test split, with the same round seeds for every
variant, so differences are paired. Finished variants are skipped on a rerun. Variants whose expert settings
differ (FIEX, smooth experts) train their experts once into the shared store, in a folder keyed by those
settings (``recipes.identity.expert_settings``). The file is some 310 lines because the variant's process and
the table that collects it share its types: the job a variant is handed, its result and the table's rows.
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from challenge_kit.context import DataSource, RunContext
from challenge_kit.core.artifact import DistilledArtifact
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
from evaluator.fast import arithmetic
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


@dataclass(frozen=True)
class VariantJob:
    """One variant's work, as its own process receives it (JSON on its command line)."""

    recipe: str
    profile: str
    overrides: list[str]
    dataset: str
    device: str
    out: str
    data_root: str
    cache_dir: str | None
    experts: str
    rounds: int
    epochs: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)

    def context(self) -> RunContext:
        """The variant's surroundings: the parent's device and data, no progress bars (its output is a log)."""
        return RunContext(self.device, progress=False, data=DataSource(self.data_root, cache_dir=self.cache_dir))


@dataclass(frozen=True)
class VariantResult:
    """What a finished variant leaves in ``variant.json``: its method, what it cost, its scorer rounds."""

    status: str
    method: str
    parts: dict[str, str]
    experts: str
    expert_seconds: float
    seconds_per_iteration: float
    iterations: int
    exported_iteration: int
    peak_mb: float
    rounds: list[float]
    seeds: list[int]
    epochs: int
    scorer: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> VariantResult | None:
        """A saved result, or None where there is none to reuse (no file, or one without these fields)."""
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        names = [f.name for f in fields(cls)]
        return cls(**{k: saved[k] for k in names}) if isinstance(saved, dict) and set(names) <= set(saved) else None


@dataclass(frozen=True)
class VariantFailure:
    """A variant whose process failed: its last line and exit status (the row of a crash)."""

    error: str
    exit_code: int
    status: str = "failed"

    def to_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "exit_code": self.exit_code}


@dataclass
class VariantRow:
    """One row of ``ablate.json``: the variant, its result, and for a scored one its accuracy and paired
    difference to the first variant."""

    variant: str
    recipe: str
    method: str
    parts: dict[str, str]
    result: VariantResult | VariantFailure
    mean: float | None = None
    se: float | None = None
    difference: dict | None = None

    def to_dict(self) -> dict:
        row = {"variant": self.variant, "recipe": self.recipe, "method": self.method, "parts": self.parts,
               **self.result.to_dict()}
        if self.mean is not None:
            row.update(mean=self.mean, se=self.se)
        if self.difference is not None:
            row["difference"] = self.difference
        return row


@dataclass
class Ablation:
    """``ablate.json``: the shared settings and one row per variant, the first the reference."""

    dataset: str
    profile: str
    overrides: list[str]
    rounds: int
    epochs: int
    seed: int
    split: str = "test"
    variants: list[VariantRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "variants"},
                "variants": [row.to_dict() for row in self.variants]}


def run_variant(job: VariantJob) -> VariantResult:
    """One variant, in its own process: experts (if its store lacks them), distillation, scoring."""
    recipe = load_recipe(job.recipe, job.profile, job.overrides, dataset=job.dataset)
    ctx = job.context()
    device, out = ctx.device, Path(job.out)
    splits = load_data(recipe, ctx)
    store = expert_dir(Path(job.experts), recipe.experts)
    tick = time.perf_counter()
    train_experts(recipe, splits, store, ctx)
    expert_seconds = time.perf_counter() - tick
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if not (out / "run" / SUMMARY).is_file():
        run_distill(recipe, splits, store, out / "run", ctx, resume=(out / "run" / CHECKPOINT).exists())
    peak = _peak_mb(device)
    summary = json.loads((out / "run" / SUMMARY).read_text())
    images = DistilledArtifact.load(out / "run" / BEST).images
    score = evaluate_images(images, splits.spec, *splits.test, rounds=job.rounds, epochs=job.epochs,
                            seed=job.seed, device=device, show_progress=False,
                            how=arithmetic(recipe.eval.scorer, device))
    result = VariantResult("ok", recipe.method, recipe.parts(), str(store), expert_seconds,
                           summary["seconds_per_iteration"], summary["iterations"], summary["exported_iteration"],
                           peak, score.rounds, score.seeds, job.epochs, score.scorer.to_dict())
    save_json(result.to_dict(), out / VARIANT_RESULT)
    return result


def _names(recipes: list[str]) -> list[str]:
    names, seen = [], {}
    for r in recipes:
        stem = recipe_path(r).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _variant(name: str, recipe: Recipe, job: VariantJob) -> VariantRow:
    """One row: the variant's saved result, or a fresh run of it in a child process (its crash is the row)."""
    folder = Path(job.out)
    done = folder / VARIANT_RESULT
    result = VariantResult.read(done)
    stale = result is None or len(result.rounds or []) != job.rounds or result.epochs != job.epochs or \
        (result.scorer or {}).get("mode") != recipe.eval.scorer
    if stale:
        log.info(f"{name} ({recipe.method}): distilling and scoring")
        make_folders(folder)
        proc = _run_child([sys.executable, "-m", "challenge_kit.ablate", json.dumps(job.to_dict())],
                          folder / "log.txt")
        result = VariantResult.read(done) if proc.returncode == 0 else None
        if result is None:
            lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
            result = VariantFailure(lines[-1][:300], proc.returncode)
            log.error(f"{name} failed: {result.error} (log: {folder / 'log.txt'})")
    return VariantRow(name, job.recipe, recipe.method, recipe.parts(), result)


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


def ablate(recipes: list[str], ctx: RunContext, *, dataset: str, experts: str | Path, out: str | Path,
           profile: str, overrides: list[str], iterations: int | None, rounds: int, epochs: int, seed: int,
           select: bool = False) -> Ablation:
    """Run every variant (each in a subprocess, skipping finished ones) on ``ctx``'s device and data, and compare
    them with the first.

    Without ``select`` each variant's last iteration is scored (the comparison is of methods, not of model
    selection); with it, each exports what its own held-out selection chose.
    """
    out = Path(out)
    extra = list(overrides) + ([f"distill.iterations={iterations}"] if iterations is not None else []) \
        + ([] if select else ["eval.every=0"])
    loaded: list[Recipe] = [load_recipe(r, profile, extra, dataset=dataset) for r in recipes]  # fail before work
    source = ctx.data
    jobs = [VariantJob(recipe_name, profile, extra, dataset, str(ctx.device), str(out / name), str(source.root),
                       None if source.cache_dir is None else str(source.cache_dir), str(experts), rounds, epochs, seed)
            for name, recipe_name in zip(_names(recipes), recipes, strict=True)]
    with run_lock(out), run_lock(experts):
        rows = [_variant(name, recipe, job) for name, recipe, job in zip(_names(recipes), loaded, jobs, strict=True)]
    base = rows[0]
    for row in rows:
        if isinstance(row.result, VariantResult):
            row.mean, row.se = mean_se(row.result.rounds)
            if isinstance(base.result, VariantResult) and row is not base:
                row.difference = paired(row.result.rounds, base.result.rounds)
    summary = Ablation(dataset, profile, extra, rounds, epochs, seed, variants=rows)
    save_json(summary.to_dict(), out / RESULT)
    ok = [r for r in rows if isinstance(r.result, VariantResult)]
    if ok:
        bar_chart(out / CHART, f"scorer-recipe test accuracy, {epochs} epochs x {rounds} paired rounds (mean +- s.e.)",
                  "accuracy", [r.variant for r in ok], [r.mean for r in ok], [r.se for r in ok])
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
            run_variant(VariantJob(**json.loads(sys.argv[1])))
    except BaseException as e:
        if (interrupt := interruption(e)) is None:
            raise
        print(interrupted_line(interrupt, "this variant", "run ddkit ablate again to continue it"), file=sys.stderr)
        sys.exit(exit_code(interrupt))


if __name__ == "__main__":
    main()
