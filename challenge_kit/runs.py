"""A distillation run's folder: the checkpoint, the live history, the summary and the chosen set.

Only the leader (rank 0) writes. The checkpoint holds everything a resumed run needs (plain tensors and
containers, ``weights_only`` loadable); ``history.jsonl`` gets one line per iteration as the run goes, so a
run can be watched, and is cut back to the checkpoint when a run resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.parallel import LOCAL, Shard
from challenge_kit.core.reading import load_torch
from challenge_kit.core.storage import append_line, save_json, save_text, save_torch
from challenge_kit.recipes import Recipe

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.jsonl"
BEST = "best.safetensors"
SUMMARY = "run.json"
RUN_FILES = (CHECKPOINT, HISTORY, BEST, SUMMARY)  # what a run writes: its own, continued with --resume


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
            append_line(self.path / HISTORY, json.dumps(row) + "\n")

    def history(self) -> list[dict]:
        return read_history(self.path)

    def _cut_history(self, iteration: int) -> None:
        """Drop lines past the checkpoint (they will be redone) and a torn last line."""
        if self.shard.leader and (self.path / HISTORY).is_file():
            rows = [r for r in self.history() if r["iteration"] <= iteration]
            text = "".join(json.dumps(r) + "\n" for r in rows)
            save_text(text, self.path / HISTORY)

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
