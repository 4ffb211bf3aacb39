"""The main job as readable recipes: data -> experts -> M-DATM -> verify -> export.

Each stage resumes on its own: complete experts are reused, an interrupted distillation continues
from its checkpoint with ``resume``, and export only ever writes verified files.
"""

from __future__ import annotations

import time
from pathlib import Path

from challenge_kit import data, experts
from challenge_kit.distill import DistillState, distill
from challenge_kit.export import export_run
from challenge_kit.progress import console, expert_progress, make_progress
from challenge_kit.recipes import Recipe, load_recipe
from evaluator.scorer import resolve_device

EXPERTS_SUBDIR = "work/experts"
RUN_SUBDIR = "work/distill"


def load_data(dataset: str, data_root: str | Path, *, download: bool = False, cache_dir: str | Path | None = None,
              image_folder: bool = False):
    """Train and test splits, challenge-normalized, and the spec they imply (subset for mini sets)."""
    kw = {"download": download, "cache_dir": cache_dir, "image_folder": image_folder}
    train_x, train_y, spec = data.load_split(dataset, data_root, "train", **kw)
    test_x, test_y, _ = data.load_split(dataset, data_root, "test", **{**kw, "download": False})
    return spec, (train_x, train_y), (test_x, test_y)


def run_distill(recipe: Recipe, data_root: str | Path, experts_dir: str | Path, run_dir: str | Path, *,
                device: str | None = None, resume: bool = False, cache_dir: str | Path | None = None,
                image_folder: bool = False, show_progress: bool = True) -> DistillState:
    spec, (train_x, train_y), (test_x, test_y) = load_data(recipe.dataset, data_root, cache_dir=cache_dir,
                                                            image_folder=image_folder)
    return distill(recipe, spec, experts_dir, run_dir, real_images=train_x, real_labels=train_y,
                   test_images=test_x, test_labels=test_y, device=resolve_device(device), resume=resume,
                   show_progress=show_progress)


def make_submission(dataset: str, data_root: str | Path, out_dir: str | Path, *, profile: str = "full",
                    overrides: list[str] | None = None, resume: bool = False, device: str | None = None,
                    download: bool = False, experts_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, image_folder: bool = False,
                    show_progress: bool = True) -> dict:
    """The whole pipeline; returns the export manifest (with per-stage timings)."""
    recipe = load_recipe(dataset, profile, overrides)
    out_dir = Path(out_dir)
    experts_dir = Path(experts_dir) if experts_dir else out_dir / EXPERTS_SUBDIR
    run_dir = out_dir / RUN_SUBDIR
    dev = resolve_device(device)
    timings: dict[str, float] = {}

    tick = time.perf_counter()
    spec, (train_x, train_y), (test_x, test_y) = load_data(dataset, data_root, download=download,
                                                            cache_dir=cache_dir, image_folder=image_folder)
    timings["data"] = time.perf_counter() - tick
    console.print(f"data: {spec.describe()}, {len(train_x)} train / {len(test_x)} test images")

    tick = time.perf_counter()
    with make_progress(disable=not show_progress) as bar:
        experts.train_experts(train_x, train_y, test_x, test_y, spec, recipe.experts, experts_dir, device=dev,
                              progress=expert_progress(bar, recipe.experts.num_experts, recipe.experts.epochs))
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
