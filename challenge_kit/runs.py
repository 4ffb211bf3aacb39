"""A distillation run's folder: the checkpoint, the live history, the summary and the chosen set.

Only the leader (rank 0) writes. The checkpoint holds everything a resumed run needs (plain tensors and
containers, ``weights_only`` loadable); ``history.jsonl`` gets one line per iteration as the run goes, so a
run can be watched, and is cut back to the checkpoint when a run resumes. The history is fsynced before each
checkpoint is written, so after a power cut it holds every iteration the checkpoint has done (and maybe later
ones and a torn last line, which its reader skips and a resume cuts).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitFileError, KitValueError
from challenge_kit.core.parallel import LOCAL, Shard
from challenge_kit.core.reading import load_torch
from challenge_kit.core.storage import append_line, make_folders, save_json, save_text, save_torch, sync_log
from challenge_kit.recipes import Recipe
from challenge_kit.recipes.identity import resume_differences

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
    streak: list[float] = field(default_factory=list)  # the losses of the skipped iterations the run ends with
    seconds: float = 0.0
    candidates: list[dict] = field(default_factory=list)
    init: dict | None = None  # the set at iteration 0: iteration, images, labels, lr
    best: dict | None = None  # the leading candidate, same keys
    decision: dict | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _differences(wrong: list[tuple]) -> str:
    """`` (eval.scorer: faithful there, fast here)``: the recipe fields a checkpoint disagrees on (up to 3)."""
    return f" ({'; '.join(f'{key}: {a} there, {b} here' for key, a, b in wrong[:3])})" if wrong else ""


class RunDir:
    def __init__(self, path: str | Path, recipe: Recipe, spec: DatasetSpec, shard: Shard = LOCAL) -> None:
        self.path, self.recipe, self.spec, self.shard = Path(path), recipe, spec, shard

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def load(self) -> DistillState:
        """The checkpoint's state, unless a setting that changes the result differs (``recipes.identity``)."""
        saved, _, state = read_checkpoint(self.checkpoint)
        wrong = resume_differences(saved["recipe"], self.recipe.to_dict(), state.iteration)
        if wrong or saved["spec"] != self.spec.to_dict():
            raise KitFileError(self.checkpoint, "checkpoint was written by a different recipe or spec; resume "
                                                f"with the same one{_differences(wrong)}")
        self._cut_history(state.iteration)
        return state

    def save(self, state: DistillState) -> None:
        if self.shard.leader:
            if (self.path / HISTORY).is_file():  # the lines the checkpoint has done reach the disk before it
                sync_log(self.path / HISTORY)
            save_torch({"recipe": self.recipe.to_dict(), "spec": self.spec.to_dict(), "state": state.to_dict()},
                       self.checkpoint)

    def record(self, row: dict) -> None:
        """Append one iteration's diagnostics to the live history."""
        if self.shard.leader:
            make_folders(self.path)
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
    """The iterations recorded so far: a line that is not one (torn by a kill mid-write, or after a power cut
    the unsynced tail as the disk left it: NUL bytes, garbage) is skipped."""
    path = Path(run_dir) / HISTORY
    rows = []
    if path.is_file():
        for line in path.read_bytes().splitlines():
            try:
                row = json.loads(line)
            except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
                continue
            if isinstance(row, dict) and isinstance(row.get("iteration"), int):
                rows.append(row)
    return rows


# A run's own files, read back: a torn, hand-edited or foreign one is named in one line, never a traceback.
STATE_TYPES = {"iteration": int, "images": torch.Tensor, "labels": torch.Tensor, "lr": torch.Tensor, "upper": int,
               "rng": torch.Tensor, "aug_rng": torch.Tensor, "momentum": dict, "skipped": int, "streak": list,
               "seconds": (int, float), "candidates": list, "init": (dict, type(None)), "best": (dict, type(None)),
               "decision": (dict, type(None))}
REQUIRED_STATE = {f.name for f in fields(DistillState) if f.default is MISSING and f.default_factory is MISSING}


def candidates_ok(candidates) -> bool:
    """Selection's candidates as a report draws them: each an iteration with its rounds, mean and s.e."""
    number = (int, float)
    return isinstance(candidates, list) and all(
        isinstance(c, dict) and isinstance(c.get("iteration"), int) and isinstance(c.get("mean"), number)
        and isinstance(c.get("se"), number) and isinstance(c.get("rounds"), list) for c in candidates)


def run_spec(d, path: Path) -> DatasetSpec:
    """The dataset spec a run file records, or a KitFileError naming the file."""
    if not isinstance(d, dict):
        raise KitFileError(path, "records no dataset spec ('spec' is missing or not an object)")
    try:
        return DatasetSpec.from_dict(d)
    except (KeyError, TypeError, ValueError, KitValueError) as e:
        what = f"no {e.args[0]!r}" if isinstance(e, KeyError) else type(e).__name__
        raise KitFileError(path, f"records no valid dataset spec ({what}); not written by `ddkit distill`, or "
                                 "edited since") from None


def read_summary(run_dir: str | Path) -> dict:
    """``run.json`` of a finished run: an object whose selection, if any, is one (its spec is ``run_spec``'s)."""
    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KitFileError(path, f"is not valid JSON ({e}): torn or edited; `ddkit distill --resume` rewrites "
                                 "it from the checkpoint") from None
    if not isinstance(summary, dict):
        raise KitFileError(path, "is not a run summary (a JSON object)")
    selection = summary.get("selection") or {}
    if not isinstance(selection, dict) or not isinstance(summary.get("recipe") or {}, dict) \
            or not candidates_ok(selection.get("candidates") or []):
        raise KitFileError(path, "is not a run summary of this kit ('recipe', 'selection' or its candidates)")
    return summary


def read_checkpoint(path: str | Path) -> tuple[dict, DatasetSpec, DistillState]:
    """A checkpoint as saved, its spec and its state, each part checked for what a resumed run and a report read."""
    path = Path(path)
    saved = load_torch(path)
    if not isinstance(saved, dict) or not isinstance(saved.get("recipe"), dict) \
            or not isinstance(saved.get("state"), dict):
        raise KitFileError(path, "is not a distillation checkpoint (recipe, spec and state)")
    spec = run_spec(saved.get("spec"), path)
    state = saved["state"]
    wrong = sorted(REQUIRED_STATE - set(state) | set(state) - set(STATE_TYPES)) \
        or [k for k, t in STATE_TYPES.items() if k in state and not isinstance(state[k], t)] \
        or ([] if candidates_ok(state.get("candidates", [])) else ["candidates"])
    if wrong:
        raise KitFileError(path, f"is not a distillation checkpoint of this kit (state: {', '.join(wrong)}); "
                                 "move it away to start the run afresh")
    return saved, spec, DistillState(**state)
