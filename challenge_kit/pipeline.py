"""The main job as readable recipes: data -> experts -> distillation -> verify -> export (-> report).

Each stage resumes on its own: complete experts are reused, an interrupted distillation continues
from its checkpoint with ``resume``, and export only ever writes verified files. Before any data is read a
run has its recipe validated, its device proven usable and its output folders checked and locked, so what
would fail late fails in the first second. Started by torchrun, experts are spread over the ranks and each
distillation step's batch is sharded; rank 0 locks, writes and reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from challenge_kit import data
from challenge_kit.context import RunContext
from challenge_kit.core.contract import DatasetSpec, get_spec
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.folders import inner_folder, run_lock
from challenge_kit.core.parallel import LOCAL, RankZero, Shard, rank_indices
from challenge_kit.core.progress import expert_progress, make_progress
from challenge_kit.core.storage import refuse_replacing
from challenge_kit.distill import distill
from challenge_kit.experts import training as expert_training
from challenge_kit.export import export_files, export_run
from challenge_kit.recipes import Recipe
from challenge_kit.report import REPORT_DIR, build_report
from challenge_kit.runs import RUN_FILES, DistillState

log = logging.getLogger(__name__)
EXPERTS_SUBDIR = "work/experts"
RUN_SUBDIR = "work/distill"
RESUME_HINT = "a run already exists here; pass --resume to continue it or choose another --out"
SUBMISSION_HINT = "already exists (an earlier run's, or another file); pass --resume to continue that run, or " \
    "choose another --out"


@dataclass
class Splits:
    """The real data of one run: what experts and distillation learn from, what selects, what is reported."""

    spec: DatasetSpec
    train: tuple[torch.Tensor, torch.Tensor]
    select: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    selection: str  # "holdout", "test" or "none"


def fetch_data(recipe: Recipe, ctx: RunContext) -> None:
    """``--download``: rank 0 puts the dataset into the data root before anything reads it."""
    if ctx.shard.leader and ctx.data.download and not ctx.data.image_folder:
        data.fetch(recipe.dataset, ctx.data.root)


def load_data(recipe: Recipe, ctx: RunContext) -> Splits:
    """Train and test splits of ``ctx.data``, challenge-normalized, with the selection split the recipe asks for
    carved out.

    ``eval.split = "holdout"`` keeps ``holdout_per_class`` seeded images per class out of the training split
    (experts and distillation never see them, whether or not selection runs, so a store serves both);
    ``"test"`` selects on the test split. Under torchrun, rank 0 decodes first (and fills the cache) while
    the others wait.
    """
    source, shard = ctx.data, ctx.shard
    kw = {"cache_dir": source.cache_dir, "image_folder": source.image_folder}
    if not shard.leader:
        shard.barrier()
    train_x, train_y, spec = data.load_split(recipe.dataset, source.root, "train", **kw)
    test_x, test_y, _ = data.load_split(recipe.dataset, source.root, "test", **kw)
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


CPU_PATH = "ddkit make-submission tinyimagenet --data-root data/tiny-20 --out out/mini --profile mini"


def announce_plan(recipe: Recipe, layout: data.Layout, device: torch.device, shard: Shard = LOCAL,
                  allow_long_run: bool = False, show_plan: Callable[[dict], None] | None = None) -> dict:
    """The bill (``ddkit plan``'s, calibrated here on the images counted in the data root) goes to ``show_plan``
    (the CLI's table opens the log) before any image is decoded. A distillation iteration that cannot fit in one
    process's device is refused, and so is a run the plan puts at more than a day here unless ``allow_long_run``:
    both before any work."""
    from challenge_kit.plan import make_plan, too_long, train_images

    plan = make_plan(recipe, layout.spec, train_images(recipe, layout.spec, counted=layout.train_images), device,
                     source=layout.root)
    bill = plan.to_dict()
    if show_plan is not None:
        show_plan(bill)
    if shard.world == 1 and (problem := plan.too_big()):  # ranks split the batch: the count is one process's
        raise KitValueError(f"--device {device}: {problem}")
    if (problem := too_long(plan)) is not None:
        if not allow_long_run:
            raise KitValueError(f"--profile {recipe.profile}: {problem}; on a CPU take the README's CPU path "
                                f"({CPU_PATH}), or pass --allow-long-run to go on")
        log.warning(f"{problem}: going on (--allow-long-run)")
    return bill


def train_experts(recipe: Recipe, splits: Splits, experts_dir: str | Path, ctx: RunContext,
                  replace: bool = False) -> None:
    """This rank's share of the store's experts (rank r trains r, r + K, ...); every rank waits for all."""
    e, shard = recipe.experts, ctx.shard
    indices = rank_indices(e.num_experts, shard.rank, shard.world)
    with make_progress(disable=not ctx.progress or not shard.leader) as bar:
        progress = expert_progress(bar, len(indices), e.epochs)
        expert_training.train_experts(*splits.train, *splits.test, splits.spec, e, experts_dir, indices=indices,
                                      device=ctx.device, progress=progress, replace=replace)
    shard.barrier()


def run_distill(recipe: Recipe, splits: Splits, experts_dir: str | Path, run_dir: str | Path, ctx: RunContext, *,
                resume: bool = False) -> DistillState:
    select_x, select_y = splits.select or (None, None)
    return distill(recipe, splits.spec, experts_dir, run_dir, real_images=splits.train[0],
                   real_labels=splits.train[1], select_images=select_x, select_labels=select_y, ctx=ctx,
                   resume=resume)


def leader_lock(folder: str | Path, shard: Shard):
    """Rank 0 holds the folder's run lock (the other ranks work under it)."""
    return run_lock(folder) if shard.leader else nullcontext()


def experts_job(recipe: Recipe, out: str | Path, ctx: RunContext, *, replace: bool = False
                ) -> RankZero[DatasetSpec]:
    """``ddkit experts``: train a store on the recipe's training split (held-out images excluded); returns
    the spec (rank 0's)."""
    with ctx.joined() as ctx, leader_lock(out, ctx.shard):
        shard = ctx.shard
        fetch_data(recipe, ctx)
        splits = load_data(recipe, ctx)
        if shard.leader:
            log.info(f"{describe(splits)}; {recipe.experts.num_experts} experts x {recipe.experts.epochs} epochs on "
                     f"{ctx.device}" + (f" over {shard.world} processes" if shard.world > 1 else ""))
        train_experts(recipe, splits, out, ctx, replace)
    return RankZero.make(shard, lambda: splits.spec)


def distill_job(recipe: Recipe, experts_dir: str | Path, run_dir: str | Path, ctx: RunContext, *,
                resume: bool = False) -> DistillState:
    """``ddkit distill``: one run, sharded over the ranks when started by torchrun."""
    with ctx.joined() as ctx, leader_lock(run_dir, ctx.shard):
        if ctx.shard.leader and not resume:
            refuse_replacing([Path(run_dir) / name for name in RUN_FILES], RESUME_HINT)
        splits = load_data(recipe, ctx)
        return run_distill(recipe, splits, experts_dir, run_dir, ctx, resume=resume)


def run_export(run_dir: str | Path, out_dir: str | Path, *, reference_model: str | Path | None = None,
               drop_labels: bool = False, overwrite: bool = False) -> dict:
    """``ddkit export``: an earlier export in ``out_dir`` is replaced only with ``overwrite``."""
    with run_lock(out_dir):
        return export_run(run_dir, out_dir, reference_model=reference_model, drop_labels=drop_labels,
                          overwrite=overwrite)


def own_folders(recipe: Recipe, out_dir: Path, *, default_store: bool, resume: bool) -> None:
    """Before any work, in the locked folder: the subfolders the pipeline makes are real folders, never links
    placed there, and without ``resume`` nothing of an earlier run (or anyone else's file) would be replaced."""
    if not resume:
        refuse_replacing([*export_files(get_spec(recipe.dataset), out_dir),
                          *(out_dir / RUN_SUBDIR / name for name in RUN_FILES)], SUBMISSION_HINT)
    subfolders = (RUN_SUBDIR, REPORT_DIR, *((EXPERTS_SUBDIR,) if default_store else ()))
    for make in (False, True):  # all checked before any is made
        for sub in subfolders:
            inner_folder(out_dir, sub, make=make)


def make_submission(recipe: Recipe, out_dir: str | Path, ctx: RunContext, *, resume: bool = False,
                    experts_dir: str | Path | None = None, drop_labels: bool = False, replace_experts: bool = False,
                    allow_long_run: bool = False, command: dict | None = None,
                    show_plan: Callable[[dict], None] | None = None) -> RankZero[dict]:
    """The whole pipeline on ``ctx.data``; returns the export manifest (with per-stage timings), rank 0's.

    ``out_dir`` is this run's own: without ``resume`` it must hold no earlier run or export (refused before any
    work, naming the file); with it, the run continues and its outputs are replaced. The plan comes before the
    data is decoded (``announce_plan``).
    """
    out_dir = Path(out_dir)
    default_store = experts_dir is None
    experts_dir = Path(experts_dir) if experts_dir else out_dir / EXPERTS_SUBDIR
    run_dir = out_dir / RUN_SUBDIR
    source = ctx.data
    timings: dict[str, float] = {}
    with ctx.joined() as ctx, leader_lock(out_dir, ctx.shard):
        shard, bill = ctx.shard, None
        if shard.leader:
            own_folders(recipe, out_dir, default_store=default_store, resume=resume)
            fetch_data(recipe, ctx)
            tick = time.perf_counter()
            bill = announce_plan(recipe, data.data_layout(recipe.dataset, source.root,
                                                          image_folder=source.image_folder), ctx.device,
                                 shard, allow_long_run, show_plan)
            timings["plan"] = time.perf_counter() - tick
        shared_store = not experts_dir.resolve().is_relative_to(out_dir.resolve())
        with leader_lock(experts_dir, shard) if shared_store else nullcontext():
            tick = time.perf_counter()
            splits = load_data(recipe, ctx)
            timings["data"] = time.perf_counter() - tick
            if shard.leader:
                log.info(f"data: {describe(splits)}")

            tick = time.perf_counter()
            train_experts(recipe, splits, experts_dir, ctx, replace_experts)
            timings["experts"] = time.perf_counter() - tick

            tick = time.perf_counter()
            run_distill(recipe, splits, experts_dir, run_dir, ctx, resume=resume)
            timings["distill"] = time.perf_counter() - tick
            return RankZero.make(shard, lambda: export_submission(recipe, run_dir, out_dir, ctx, experts_dir, bill,
                                                                  timings, drop_labels, command))


def export_submission(recipe: Recipe, run_dir: Path, out_dir: Path, ctx: RunContext, experts_dir: Path, bill: dict,
                      timings: dict[str, float], drop_labels: bool, command: dict | None) -> dict:
    """Rank 0's end of the pipeline: the verified export, its manifest (how it was made) and the report."""
    source = ctx.data
    names = data.class_words(recipe.dataset, source.root, image_folder=source.image_folder)
    # own_folders refused an earlier export unless resume, which replaces it
    manifest = export_run(run_dir, out_dir, drop_labels=drop_labels, names=names, overwrite=True, extra={
        "command": {**(command or {}), "data_root": str(source.root), "device": str(ctx.device),
                    "experts_dir": str(experts_dir), "world_size": ctx.shard.world},
        "seeds": {"experts": recipe.experts.seed, "distill": recipe.distill.seed,
                  "eval": recipe.eval.seed},
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "plan": {"device": bill["device"], "run_seconds": bill["run_seconds"],
                 "stages": {st["name"]: {k: st[k] for k in ("units", "total_flops", "total_seconds",
                                                             "peak_bytes")} for st in bill["stages"]}},
    })
    build_report(run_dir, out_dir / REPORT_DIR, names)
    return manifest
