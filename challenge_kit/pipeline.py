"""The main job as readable recipes: data -> experts -> M-DATM -> verify -> export.

Each stage resumes on its own: complete experts are reused, an interrupted distillation continues
from its checkpoint with ``resume``, and export only ever writes verified files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit import data, experts
from challenge_kit.contract import DatasetSpec
from challenge_kit.distill import distill
from challenge_kit.export import export_run
from challenge_kit.parallel import LOCAL, Shard, process_group, rank_indices
from challenge_kit.progress import console, expert_progress, make_progress
from challenge_kit.recipes import Recipe, load_recipe
from challenge_kit.report import REPORT_DIR, build_report
from challenge_kit.runs import DistillState
from evaluator.scorer import resolve_device

EXPERTS_SUBDIR = "work/experts"
RUN_SUBDIR = "work/distill"


@dataclass
class Splits:
    """The real data of one run: what experts and distillation learn from, what selects, what is reported."""

    spec: DatasetSpec
    train: tuple[torch.Tensor, torch.Tensor]
    select: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    selection: str  # "holdout", "test" or "none"


def load_data(recipe: Recipe, data_root: str | Path, *, download: bool = False,
              cache_dir: str | Path | None = None, image_folder: bool = False, shard: Shard = LOCAL) -> Splits:
    """Train and test splits, challenge-normalized, with the selection split the recipe asks for carved out.

    ``eval.split = "holdout"`` keeps ``holdout_per_class`` seeded images per class out of the training split
    (experts and distillation never see them, whether or not selection runs, so a store serves both);
    ``"test"`` selects on the test split. Under torchrun, rank 0 decodes first (and fills the cache) while
    the others wait.
    """
    kw = {"cache_dir": cache_dir, "image_folder": image_folder}
    if not shard.leader:
        shard.barrier()
    train_x, train_y, spec = data.load_split(recipe.dataset, data_root, "train", download=download and shard.leader,
                                             **kw)
    test_x, test_y, _ = data.load_split(recipe.dataset, data_root, "test", **kw)
    if shard.leader:
        shard.barrier()
    v, holdout = recipe.eval, None
    if v.split == "holdout" and v.holdout_per_class > 0:  # carved even when selection is off: the same experts
        kept, held = data.split_holdout(train_y, v.holdout_per_class, v.seed)
        train_x, train_y, holdout = train_x[kept], train_y[kept], (train_x[held], train_y[held])
    select = None if v.every <= 0 else (test_x, test_y) if v.split == "test" else holdout
    return Splits(spec, (train_x, train_y), select, (test_x, test_y), "none" if select is None else v.split)


def describe(splits: Splits) -> str:
    held = "" if splits.select is None else f", {len(splits.select[0])} {splits.selection} images select"
    return f"{splits.spec.describe()}: {len(splits.train[0])} train / {len(splits.test[0])} test images{held}"


def train_experts(recipe: Recipe, splits: Splits, experts_dir: str | Path, device: torch.device,
                  shard: Shard = LOCAL, show_progress: bool = True) -> None:
    """This rank's share of the store's experts (rank r trains r, r + K, ...); every rank waits for all."""
    e = recipe.experts
    indices = rank_indices(e.num_experts, shard.rank, shard.world)
    with make_progress(disable=not show_progress or not shard.leader) as bar:
        experts.train_experts(*splits.train, *splits.test, splits.spec, e, experts_dir, indices=indices,
                              device=device, progress=expert_progress(bar, len(indices), e.epochs))
    shard.barrier()


def run_distill(recipe: Recipe, splits: Splits, experts_dir: str | Path, run_dir: str | Path, *,
                device: torch.device, resume: bool = False, shard: Shard = LOCAL,
                show_progress: bool = True) -> DistillState:
    select_x, select_y = splits.select or (None, None)
    return distill(recipe, splits.spec, experts_dir, run_dir, real_images=splits.train[0],
                   real_labels=splits.train[1], select_images=select_x, select_labels=select_y, device=device,
                   resume=resume, shard=shard, show_progress=show_progress)


def experts_job(recipe: Recipe, data_root: str | Path, out: str | Path, *, device: str | None = None,
                download: bool = False, cache_dir: str | Path | None = None, image_folder: bool = False,
                show_progress: bool = True) -> DatasetSpec | None:
    """``ddkit experts``: train a store on the recipe's training split (held-out images excluded); returns
    the spec on rank 0 (or the only process), None elsewhere."""
    with process_group(resolve_device(device)) as (shard, dev):
        splits = load_data(recipe, data_root, download=download, cache_dir=cache_dir, image_folder=image_folder,
                           shard=shard)
        if shard.leader:
            console.print(f"{describe(splits)}; {recipe.experts.num_experts} experts x {recipe.experts.epochs} "
                          f"epochs on {dev}" + (f" over {shard.world} processes" if shard.world > 1 else ""))
        train_experts(recipe, splits, out, dev, shard, show_progress)
    return splits.spec if shard.leader else None


def distill_job(recipe: Recipe, data_root: str | Path, experts_dir: str | Path, run_dir: str | Path, *,
                device: str | None = None, resume: bool = False, cache_dir: str | Path | None = None,
                image_folder: bool = False, show_progress: bool = True) -> DistillState:
    """``ddkit distill``: one run, sharded over the ranks when started by torchrun."""
    with process_group(resolve_device(device)) as (shard, dev):
        splits = load_data(recipe, data_root, cache_dir=cache_dir, image_folder=image_folder, shard=shard)
        return run_distill(recipe, splits, experts_dir, run_dir, device=dev, resume=resume, shard=shard,
                           show_progress=show_progress)


def make_submission(dataset: str, data_root: str | Path, out_dir: str | Path, *, profile: str = "full",
                    overrides: list[str] | None = None, resume: bool = False, device: str | None = None,
                    download: bool = False, experts_dir: str | Path | None = None,
                    cache_dir: str | Path | None = None, image_folder: bool = False,
                    show_progress: bool = True, recipe: str | None = None, drop_labels: bool = False) -> dict | None:
    """The whole pipeline; returns the export manifest (with per-stage timings), None on ranks other than 0."""
    recipe = load_recipe(recipe or dataset, profile, overrides, dataset=dataset)
    out_dir = Path(out_dir)
    experts_dir = Path(experts_dir) if experts_dir else out_dir / EXPERTS_SUBDIR
    run_dir = out_dir / RUN_SUBDIR
    timings: dict[str, float] = {}
    with process_group(resolve_device(device)) as (shard, dev):
        tick = time.perf_counter()
        splits = load_data(recipe, data_root, download=download, cache_dir=cache_dir, image_folder=image_folder,
                           shard=shard)
        timings["data"] = time.perf_counter() - tick
        if shard.leader:
            console.print(f"data: {describe(splits)}")

        tick = time.perf_counter()
        train_experts(recipe, splits, experts_dir, dev, shard, show_progress)
        timings["experts"] = time.perf_counter() - tick

        tick = time.perf_counter()
        run_distill(recipe, splits, experts_dir, run_dir, device=dev, resume=resume, shard=shard,
                    show_progress=show_progress)
        timings["distill"] = time.perf_counter() - tick
        if not shard.leader:
            return None
        manifest = export_run(run_dir, out_dir, drop_labels=drop_labels, extra={
            "command": {"dataset": dataset, "data_root": str(data_root), "profile": profile,
                        "method": recipe.method, "overrides": list(overrides or []), "device": str(dev),
                        "experts_dir": str(experts_dir), "world_size": shard.world},
            "seeds": {"experts": recipe.experts.seed, "distill": recipe.distill.seed, "eval": recipe.eval.seed},
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
        })
        build_report(run_dir, out_dir / REPORT_DIR)
        return manifest
