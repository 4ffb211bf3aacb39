"""The main job as readable recipes: data -> experts -> M-DATM -> verify -> export.

Each stage resumes on its own: complete experts are reused, an interrupted distillation continues
from its checkpoint with ``resume``, and export only ever writes verified files. Before any data is read a
run has its recipe validated, its device proven usable and its output folders checked and locked, so what
would fail late fails in the first second.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

from challenge_kit import data, experts
from challenge_kit.contract import DatasetSpec
from challenge_kit.distill import DistillState, distill
from challenge_kit.export import export_run
from challenge_kit.progress import console, expert_progress, make_progress, time_first_steps
from challenge_kit.recipes import Recipe, load_recipe
from challenge_kit.runtime import usable_device
from challenge_kit.storage import run_lock

EXPERTS_SUBDIR = "work/experts"
RUN_SUBDIR = "work/distill"
# Work of one distillation iteration relative to one expert step, in image forward+backward passes: the exact
# adjoint walk runs each of syn_steps inner steps about three times (forward, then recompute and a double backward).
ADJOINT_PASSES = 3


def load_data(dataset: str, data_root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None,
              image_folder: bool = False):
    """Train and test splits, challenge-normalized, and the spec they imply (subset for mini sets)."""
    kw = {"download": download, "cache_dir": cache_dir, "image_folder": image_folder}
    train_x, train_y, spec = data.load_split(dataset, data_root, "train", **kw)
    test_x, test_y, _ = data.load_split(dataset, data_root, "test", **{**kw, "download": False})
    return spec, (train_x, train_y), (test_x, test_y)


def run_experts(dataset: str, data_root: str | Path, out: str | Path, *, profile: str = "full",
                overrides: list[str] | None = None, device: str | None = None, distributed: bool = False,
                download: bool = False, cache_dir: str | Path | None = None, image_folder: bool = False,
                replace: bool = False) -> tuple[DatasetSpec, int]:
    """Train the recipe's experts into the store ``out`` (under torchrun with ``distributed``: this rank's
    share); returns the spec and this process's rank. Rank 0 locks the store and fills the data cache first."""
    import torch.distributed as dist

    config = load_recipe(dataset, profile, overrides).experts
    dev = usable_device(device)
    with experts.distributed(dev) if distributed else nullcontext((0, 1, dev)) as (rank, world, dev), \
            run_lock(out) if rank == 0 else nullcontext():
        if distributed and rank != 0:
            dist.barrier()  # rank 0 decodes the data and fills the cache first
        spec, (train_x, train_y), (test_x, test_y) = load_data(dataset, data_root, download=download and rank == 0,
                                                                cache_dir=cache_dir, image_folder=image_folder)
        if distributed and rank == 0:
            dist.barrier()
        indices = experts.rank_indices(config.num_experts, rank, world)
        if rank == 0:
            console.print(f"{spec.describe()}: {len(train_x)} train / {len(test_x)} test images; "
                          f"{config.num_experts} experts x {config.epochs} epochs on {dev}"
                          + (f" over {world} processes" if world > 1 else ""))
        with make_progress(disable=rank != 0) as bar:
            experts.train_experts(train_x, train_y, test_x, test_y, spec, config, out, indices=indices, device=dev,
                                  progress=expert_progress(bar, len(indices), config.epochs), replace=replace)
    return spec, rank


def run_distill(recipe: Recipe, data_root: str | Path, experts_dir: str | Path, run_dir: str | Path, *,
                device: str | None = None, resume: bool = False, cache_dir: str | Path | None = None,
                image_folder: bool = False, show_progress: bool = True) -> DistillState:
    dev = usable_device(device)
    with run_lock(run_dir):
        spec, (train_x, train_y), (test_x, test_y) = load_data(recipe.dataset, data_root, cache_dir=cache_dir,
                                                                image_folder=image_folder)
        return distill(recipe, spec, experts_dir, run_dir, real_images=train_x, real_labels=train_y,
                       test_images=test_x, test_labels=test_y, device=dev, resume=resume,
                       show_progress=show_progress)


def run_export(run_dir: str | Path, out_dir: str | Path, *, reference_model: str | Path | None = None) -> dict:
    with run_lock(out_dir):
        return export_run(run_dir, out_dir, reference_model=reference_model)


def duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.0f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 60:.0f} minutes"


def full_run_estimate(recipe: Recipe, seconds_per_step: float, steps: int) -> str:
    """The experts' time from the measured step speed; distillation's scaled from it by image passes."""
    e, d = recipe.experts, recipe.distill
    per_pass = seconds_per_step / (e.batch_size * (2 if e.optimizer == "gsam" else 1))
    distill_s = per_pass * ADJOINT_PASSES * d.syn_steps * d.batch_syn * d.iterations
    return (f"measured {seconds_per_step:.2f} s per expert step: the experts take about "
            f"{duration(steps * seconds_per_step)} here, distillation roughly {duration(distill_s)} more; "
            "for a CPU run stop now (Ctrl-C) and use --profile quick")


def make_submission(dataset: str, data_root: str | Path, out_dir: str | Path, *, profile: str = "full",
                    overrides: list[str] | None = None, resume: bool = False, device: str | None = None,
                    download: bool = False, experts_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, image_folder: bool = False,
                    show_progress: bool = True, replace_experts: bool = False) -> dict:
    """The whole pipeline; returns the export manifest (with per-stage timings)."""
    recipe = load_recipe(dataset, profile, overrides)
    out_dir = Path(out_dir)
    experts_dir = Path(experts_dir) if experts_dir else out_dir / EXPERTS_SUBDIR
    run_dir = out_dir / RUN_SUBDIR
    dev = usable_device(device)
    timings: dict[str, float] = {}
    shared_store = not experts_dir.resolve().is_relative_to(out_dir.resolve())
    with run_lock(out_dir), run_lock(experts_dir) if shared_store else nullcontext():
        tick = time.perf_counter()
        spec, (train_x, train_y), (test_x, test_y) = load_data(dataset, data_root, download=download,
                                                                cache_dir=cache_dir, image_folder=image_folder)
        timings["data"] = time.perf_counter() - tick
        console.print(f"data: {spec.describe()}, {len(train_x)} train / {len(test_x)} test images")

        e = recipe.experts
        tick = time.perf_counter()
        with make_progress(disable=not show_progress) as bar:
            progress = expert_progress(bar, e.num_experts, e.epochs)
            if dev.type == "cpu" and profile == "full":
                console.print(f"full profile on the CPU: {e.num_experts} experts x {e.epochs} epochs, then "
                              f"{recipe.distill.iterations} distillation iterations, a GPU job; timing the first "
                              "expert steps for an estimate (--profile quick runs the same code path in minutes)")
                progress = time_first_steps(progress, lambda s, n: console.print(full_run_estimate(recipe, s, n)))
            experts.train_experts(train_x, train_y, test_x, test_y, spec, e, experts_dir, device=dev,
                                  progress=progress, replace=replace_experts)
        timings["experts"] = time.perf_counter() - tick

        tick = time.perf_counter()
        distill(recipe, spec, experts_dir, run_dir, real_images=train_x, real_labels=train_y, test_images=test_x,
                test_labels=test_y, device=dev, resume=resume, show_progress=show_progress)
        timings["distill"] = time.perf_counter() - tick

        return export_run(run_dir, out_dir, extra={
            "command": {"dataset": dataset, "data_root": str(data_root), "profile": profile,
                        "overrides": list(overrides or []), "device": str(dev), "experts_dir": str(experts_dir)},
            "seeds": {"experts": recipe.experts.seed, "distill": recipe.distill.seed, "eval": recipe.eval.seed},
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        })
