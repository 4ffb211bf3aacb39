"""A distillation run's folder: the checkpoint, the live history, the summary and the chosen set.

Only the leader (rank 0) writes. The checkpoint holds everything a resumed run needs (plain tensors and
containers, ``weights_only`` loadable); ``history.jsonl`` gets one line per iteration as the run goes, so a
run can be watched, and is cut back to the checkpoint when a run resumes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.parallel import LOCAL, Shard
from challenge_kit.core.progress import make_progress
from challenge_kit.core.storage import DistilledArtifact, atomic_write, load_torch, save_json, save_torch
from challenge_kit.recipes import Recipe
from challenge_kit.selection import Selector

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
BEST = "best.safetensors"
SUMMARY = "run.json"


@dataclass
class DistillState:
    """The run between iterations: the synthetic set, its optimizers, the RNGs, selection so far."""

    iteration: int
    images: torch.Tensor
    labels: torch.Tensor
    lr: torch.Tensor
    upper: int  # T, the current upper bound of the start epoch
    rng: torch.Tensor
    aug_rng: torch.Tensor
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: int = 0
    seconds: float = 0.0
    candidates: list[dict] = field(default_factory=list)
    init: dict | None = None  # the set at iteration 0: iteration, images, labels, lr
    best: dict | None = None  # the leading candidate, same keys
    decision: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class RunDir:
    def __init__(self, path: str | Path, recipe: Recipe, spec: DatasetSpec, shard: Shard = LOCAL) -> None:
        self.path, self.recipe, self.spec, self.shard = Path(path), recipe, spec, shard

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def load(self) -> DistillState:
        saved = load_torch(self.checkpoint)
        if saved.get("recipe") != self.recipe.to_dict() or saved.get("spec") != self.spec.to_dict():
            raise KitFileError(self.checkpoint, "checkpoint was written by a different recipe or spec; resume "
                                                "with the same one")
        state = DistillState(**saved["state"])
        self._cut_history(state.iteration)
        return state

    def save(self, state: DistillState) -> None:
        if self.shard.leader:
            save_torch({"recipe": self.recipe.to_dict(), "spec": self.spec.to_dict(), "state": state.to_dict()},
                       self.checkpoint)

    def record(self, row: dict) -> None:
        """Append one iteration's diagnostics to the live history."""
        if self.shard.leader:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.path / HISTORY, "a") as f:
                f.write(json.dumps(row) + "\n")

    def history(self) -> list[dict]:
        return read_history(self.path)

    def _cut_history(self, iteration: int) -> None:
        """Drop lines past the checkpoint (they will be redone) and a torn last line."""
        if self.shard.leader and (self.path / HISTORY).is_file():
            rows = [r for r in self.history() if r["iteration"] <= iteration]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            atomic_write(self.path / HISTORY, lambda tmp: tmp.write_text(text))

    def finish(self, artifact: DistilledArtifact, summary: dict) -> None:
        if self.shard.leader:
            artifact.save(self.path / BEST)
            save_json(summary, self.path / SUMMARY)


def read_history(run_dir: str | Path) -> list[dict]:
    """The iterations recorded so far (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / HISTORY
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Monitor:
    """Everything around an iteration that is not the method: the live history, model selection, checkpoints
    and the progress bar. The loop calls ``begin`` once, ``after`` each iteration and ``finish`` at the end."""

    def __init__(self, run: RunDir, selector: Selector, generators: tuple[torch.Generator, torch.Generator],
                 show_progress: bool = True) -> None:
        self.run, self.selector, self.cfg, self.generators = run, selector, run.recipe.distill, generators
        self.bar = make_progress(disable=not show_progress or not run.shard.leader)
        self.smoothed: float | None = None

    def __enter__(self) -> Monitor:
        self.bar.__enter__()
        self.task = self.bar.add_task("distill", total=self.cfg.iterations, status="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def begin(self, state: DistillState, syn) -> None:
        """Score the initialization (candidate 0) once, before the first update."""
        if state.init is None:
            state.init = state.best = syn.snapshot(0)
            if self.selector.enabled:
                state.candidates.append(self.selector.candidate(0, syn.images))
            self.save(state, syn)
        self.bar.update(self.task, completed=state.iteration)

    def save(self, state: DistillState, syn) -> None:
        """Checkpoint: the leaves, the RNG states and selection so far."""
        syn.store(state)
        state.rng, state.aug_rng = (g.get_state() for g in self.generators)
        self.run.save(state)

    def after(self, state: DistillState, syn, row: dict) -> None:
        self.run.record(row)
        if self.selector.due(state.iteration, self.cfg.iterations):
            candidate = self.selector.candidate(state.iteration, syn.images)
            state.candidates.append(candidate)
            if candidate["mean"] > max(c["mean"] for c in state.candidates[:-1]):
                state.best = syn.snapshot(state.iteration)
        if state.iteration % self.cfg.checkpoint_every == 0 or state.iteration == self.cfg.iterations:
            self.save(state, syn)
        if row["loss"] == row["loss"]:  # not NaN
            self.smoothed = row["loss"] if self.smoothed is None else 0.9 * self.smoothed + 0.1 * row["loss"]
        last = f"{state.candidates[-1]['mean']:.3f}" if state.candidates else "-"
        self.bar.update(self.task, completed=state.iteration,
                        status=f"T {state.upper} loss {self.smoothed or float('nan'):.4f} lr {row['lr']:.5f} "
                               f"skipped {state.skipped} sel {last}")

    def finish(self, state: DistillState, syn, record_labels: Callable, experts: list[str]) -> DistillState:
        """Decide what to export (once: a resumed finished run decides nothing again) and write it."""
        if state.decision is None:
            if self.selector.enabled:
                state.decision = self.selector.decide(state.candidates, state.init["images"], state.best["images"])
            else:
                state.decision = {"split": None, "export": state.iteration, "candidates": [], "final": None,
                                  "reason": "selection off (eval.every = 0): the last iteration"}
            self.save(state, syn)
        export = state.decision["export"]
        chosen = state.init if export == 0 else state.best if state.best["iteration"] == export else \
            syn.snapshot(state.iteration)
        score = next((c["mean"] for c in state.candidates if c["iteration"] == export), None)
        recipe, spec = self.run.recipe, self.run.spec
        artifact = DistilledArtifact(chosen["images"], record_labels(chosen["labels"], chosen["images"]), spec,
                                     lr=chosen["lr"], extra={"iteration": export, "accuracy": score,
                                                             "method": recipe.method,
                                                             "labels_part": recipe.distill.labels})
        done = max(1, state.iteration)
        self.run.finish(artifact, {
            "recipe": recipe.to_dict(), "spec": spec.to_dict(), "method": recipe.method, "parts": recipe.parts(),
            "experts": experts, "iterations": state.iteration, "skipped": state.skipped,
            "seconds": state.seconds, "seconds_per_iteration": state.seconds / done,
            "selection": state.decision, "exported_iteration": export, "world_size": self.run.shard.world})
        return state
