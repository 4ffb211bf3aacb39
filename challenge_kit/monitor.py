"""What happens around a distillation iteration that is not the method: the live history (and the tracking sinks),
model selection, checkpoints and the progress bar, a run that stopped distilling, and at the end the decision of
what to export."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from challenge_kit import parts
from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.errors import NothingDistilled
from challenge_kit.core.progress import make_progress
from challenge_kit.runs import DistillState, RunDir
from challenge_kit.selection import Candidate, Selector
from challenge_kit.stats import ema
from challenge_kit.tracking import Tracker

WINDOW = 10  # a run whose last WINDOW iterations (every one of a shorter run) were all skipped stops


def nothing_distilled(run: str, iteration: int, losses: list[float], threshold: float) -> str:
    """Why the last ``len(losses)`` iterations were all skipped, as the run saw it: non-finite losses, losses above
    the threshold, or both."""
    bad = sum(not math.isfinite(x) for x in losses)
    finite = [x for x in losses if math.isfinite(x)]
    not_finite = "an expert's start and target snapshots are the same or nearly (the loss divides by their " \
                 "squared distance, 0), or the set holds non-finite values: check the store with `ddkit info`"
    above = f"loss {min(finite, default=0):.4g} above the threshold {threshold:g} at best (distill.threshold: " \
            "the match diverged): lower distill.lr_img or distill.lr_lr, or check the experts"
    cause = (f"every loss was infinite or NaN: {not_finite}" if bad == len(losses) else above if not bad else
             f"{bad} losses were infinite or NaN ({not_finite}), {len(losses) - bad} above the threshold ({above})")
    return f"{run}: distillation stopped at iteration {iteration}: its last {len(losses)} iterations were all " \
           f"skipped, nothing distilled; {cause}; the checkpoint is kept, nothing exported"


class Monitor:
    """Everything around an iteration that is not the method: the live history, model selection, checkpoints
    and the progress bar. The loop calls ``begin`` once, ``after`` each iteration and ``finish`` at the end."""

    def __init__(self, run: RunDir, selector: Selector, generators: tuple[torch.Generator, torch.Generator],
                 show_progress: bool = True, tracker: Tracker | None = None) -> None:
        self.run, self.selector, self.cfg, self.generators = run, selector, run.recipe.distill, generators
        self.tracker = tracker or Tracker([], run.spec)
        self.bar = make_progress(disable=not show_progress or not run.shard.leader)
        self.smoothed: float | None = None

    def __enter__(self) -> Monitor:
        self.bar.__enter__()
        self.task = self.bar.add_task("distill", total=self.cfg.iterations, status="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)
        self.tracker.close()

    def begin(self, state: DistillState, syn) -> None:
        """Score the initialization (candidate 0) once, before the first update; a resumed run that has no
        iteration left and stopped distilling stops again."""
        if state.iteration >= self.cfg.iterations and self.stalled(state):
            raise self.nothing_distilled(state)
        if state.init is None:
            state.init = state.best = syn.snapshot(0)
            if self.selector.enabled:
                state.candidates.append(self.selector.candidate(0, syn.images).to_dict())
                self.tracker.selection(state.candidates[-1], syn.images)
            self.save(state, syn)
        self.bar.update(self.task, completed=state.iteration)

    def save(self, state: DistillState, syn) -> None:
        """Checkpoint: the leaves, the RNG states and selection so far."""
        syn.store(state)
        state.rng, state.aug_rng = (g.get_state() for g in self.generators)
        self.run.save(state)

    def stalled(self, state: DistillState) -> bool:
        """Whether the last ``WINDOW`` iterations (every one of a shorter run) were all skipped."""
        return len(state.streak) >= min(WINDOW, self.cfg.iterations) > 0

    def nothing_distilled(self, state: DistillState) -> NothingDistilled:
        return NothingDistilled(nothing_distilled(str(self.run.path), state.iteration, state.streak[-WINDOW:],
                                                  self.cfg.threshold))

    def after(self, state: DistillState, syn, row: dict) -> None:
        state.streak = state.streak + [row["loss"]] if row["skipped"] else []
        self.run.record(row)
        self.tracker.iteration(row)
        if self.stalled(state):  # before selection: the set has not changed in WINDOW iterations
            self.save(state, syn)  # what the run computed is kept
            raise self.nothing_distilled(state)
        if self.selector.due(state.iteration, self.cfg.iterations):
            candidate = self.selector.candidate(state.iteration, syn.images).to_dict()
            state.candidates.append(candidate)
            self.tracker.selection(candidate, syn.images)
            if candidate["mean"] > max(c["mean"] for c in state.candidates[:-1]):
                state.best = syn.snapshot(state.iteration)
        if state.iteration % self.cfg.checkpoint_every == 0 or state.iteration == self.cfg.iterations:
            self.save(state, syn)
        self.smoothed = ema(self.smoothed, row["loss"])
        last = f"{state.candidates[-1]['mean']:.3f}" if state.candidates else "-"
        self.bar.update(self.task, completed=state.iteration,
                        status=f"T {state.upper} loss {self.smoothed or float('nan'):.4f} lr {row['lr']:.5f} "
                               f"skipped {state.skipped} sel {last}")

    def finish(self, state: DistillState, syn, record_labels: Callable, experts: dict) -> DistillState:
        """Decide what to export (once: a resumed finished run decides nothing again) and write it; ``experts``
        (the store's files and the settings that trained them) goes into the summary as it is."""
        if state.decision is None:
            if self.selector.enabled:
                state.decision = self.selector.decide([Candidate.from_dict(c) for c in state.candidates],
                                                      state.init["images"], state.best["images"]).to_dict()
            else:
                state.decision = {"split": None, "export": state.iteration, "candidates": [], "final": None,
                                  "reason": "selection off (eval.every = 0): the last iteration"}
            self.save(state, syn)
        export = state.decision["export"]
        chosen = state.init if export == 0 else state.best if state.best["iteration"] == export else \
            syn.snapshot(state.iteration)
        score = next((c["mean"] for c in state.candidates if c["iteration"] == export), None)
        recipe, spec = self.run.recipe, self.run.spec
        labels = recipe.distill.labels.name
        challenge = parts.part("labels", labels).challenge  # the scorer reads its sets: export reads this
        artifact = DistilledArtifact(chosen["images"], record_labels(chosen["labels"], chosen["images"]), spec,
                                     lr=chosen["lr"], extra={"iteration": export, "accuracy": score,
                                                             "method": recipe.method, "labels_part": labels,
                                                             "challenge_labels": challenge})
        done = max(1, state.iteration)
        self.run.finish(artifact, {
            "recipe": recipe.to_dict(), "spec": spec.to_dict(), "method": recipe.method, "parts": recipe.parts(),
            **experts, "iterations": state.iteration, "skipped": state.skipped,
            "seconds": state.seconds, "seconds_per_iteration": state.seconds / done,
            "selection": state.decision, "exported_iteration": export, "world_size": self.run.shard.world})
        return state
