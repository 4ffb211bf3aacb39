"""Model selection: which distilled set is exported, decided on data the distillation never saw.

Candidates (the initialization, iteration 0, included) are trained on with the scorer's recipe, all with
the same round seeds, so their differences are paired. The best candidate is then re-scored against the
initialization on fresh paired seeds that played no part in picking it: a set is only exported over its
own initialization when it still wins there. The recipe's ``eval.scorer`` says in which arithmetic; the
decision records it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.parallel import LOCAL, Shard
from challenge_kit.core.seeds import final_round_seed
from challenge_kit.recipes import EvalConfig
from challenge_kit.stats import mean_se, paired
from evaluator.fast import Arithmetic, arithmetic
from evaluator.scorer import evaluate_images


@dataclass(frozen=True)
class Rounds:
    """A set's scorer rounds on the selection split, paired by seed with every other set's scored alike."""

    mean: float
    se: float
    rounds: list[float]
    seeds: list[int]
    per_class: list[float] | None = None

    def to_dict(self) -> dict:
        out = {"mean": self.mean, "se": self.se, "rounds": self.rounds, "seeds": self.seeds}
        return out if self.per_class is None else {**out, "per_class": self.per_class}


@dataclass(frozen=True)
class Candidate:
    """An iteration's set as selection scored it (iteration 0: the initialization)."""

    iteration: int
    score: Rounds

    def to_dict(self) -> dict:
        """The keys a run's checkpoint, summary and history hold."""
        return {"iteration": self.iteration, **self.score.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> Candidate:
        """A candidate as a checkpoint holds it (``to_dict``)."""
        return cls(d["iteration"], Rounds(d["mean"], d["se"], d["rounds"], d["seeds"], d.get("per_class")))


@dataclass(frozen=True)
class Final:
    """The leader and the initialization on fresh paired rounds, and the leader's margin over them."""

    leader: Rounds
    init: Rounds
    difference: dict  # ``stats.paired``: mean, se, rounds

    def to_dict(self) -> dict:
        return {"leader": self.leader.to_dict(), "init": self.init.to_dict(), "difference": self.difference}


@dataclass(frozen=True)
class Decision:
    """Which iteration is exported and why, with everything it was decided on."""

    split: str
    scorer: Arithmetic
    candidates: list[Candidate]
    leader: int  # the iteration that scored best on the selection rounds
    export: int
    reason: str
    final: Final | None = None  # None: no fresh rounds (the initialization led, or ``final_rounds`` is 0)

    def to_dict(self) -> dict:
        """The ``selection`` record of a run's summary and checkpoint."""
        return {"split": self.split, "scorer": self.scorer.to_dict(),
                "candidates": [c.to_dict() for c in self.candidates], "leader": self.leader, "export": self.export,
                "final": None if self.final is None else self.final.to_dict(), "reason": self.reason}


def _weak(diff: dict, before: str, after: str) -> str:
    """A warning, between ``before`` and ``after``, when a gain is within 2 standard errors; else nothing."""
    return "" if diff["mean"] > 2 * diff["se"] else f"{before}within 2 standard errors: not a significant gain{after}"


class Selector:
    """Scores candidate sets on the selection split with the scorer's recipe, paired by seed."""

    def __init__(self, config: EvalConfig, spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, shard: Shard = LOCAL) -> None:
        self.config, self.spec, self.images, self.labels = config, spec, images, labels
        self.device, self.shard = device, shard
        self.how = arithmetic(config.scorer, torch.device(device))  # the recipe's word, parsed once

    @property
    def enabled(self) -> bool:
        return self.config.every > 0

    def due(self, iteration: int, last: int) -> bool:
        return self.enabled and (iteration % self.config.every == 0 or iteration == last)

    def score(self, images: torch.Tensor, rounds: int, seed: int, per_class: bool = False) -> Rounds:
        result = evaluate_images(images.detach(), self.spec, self.images, self.labels, rounds=rounds,
                                 epochs=self.config.epochs, seed=seed, device=self.device, show_progress=False,
                                 per_class=per_class, shard=self.shard, how=self.how)
        return Rounds(*mean_se(result.rounds), result.rounds, result.seeds, result.per_class)

    def candidate(self, iteration: int, images: torch.Tensor) -> Candidate:
        return Candidate(iteration, self.score(images, self.config.rounds, self.config.seed, per_class=True))

    def decide(self, candidates: list[Candidate], init: torch.Tensor, best: torch.Tensor) -> Decision:
        """Which set to export and why: the best candidate, if it beats the initialization on fresh rounds."""
        first = candidates[0]
        leader = max(candidates, key=lambda c: c.score.mean)  # ties keep the earlier one: the initialization

        def decision(export: int, reason: str, final: Final | None = None) -> Decision:
            return Decision(self.config.split, self.how, candidates, leader.iteration, export, reason, final)

        if leader.iteration == first.iteration:
            runner = max(candidates[1:], key=lambda c: c.score.mean, default=None)
            behind = "" if runner is None else (f"; the best iteration, {runner.iteration}, scored "
                                                f"{runner.score.mean:.4f} against its {first.score.mean:.4f}")
            return decision(first.iteration, f"no candidate beat the initialization{behind}")
        if self.config.final_rounds < 1:  # the selection rounds are paired (same seeds): say by how much
            diff = paired(leader.score.rounds, first.score.rounds)
            return decision(leader.iteration,
                            f"iteration {leader.iteration} scored best ({leader.score.mean:.4f} against the "
                            f"initialization's {first.score.mean:.4f}: {diff['mean']:+.4f} +- {diff['se']:.4f} over "
                            f"{diff['rounds']} paired selection rounds{_weak(diff, ', ', '')}; no final rounds)")
        seed = final_round_seed(self.config.seed)
        fresh = {"leader": self.score(best, self.config.final_rounds, seed, per_class=True),
                 "init": self.score(init, self.config.final_rounds, seed, per_class=True)}
        diff = paired(fresh["leader"].rounds, fresh["init"].rounds)
        final = Final(**fresh, difference=diff)
        margin = f"{diff['mean']:+.4f} +- {diff['se']:.4f} over {diff['rounds']} fresh paired rounds"
        if diff["mean"] > 0:
            return decision(leader.iteration, f"iteration {leader.iteration} beat the initialization by "
                                              f"{margin}{_weak(diff, ' (', ')')}", final)
        return decision(first.iteration, f"iteration {leader.iteration} led the selection rounds but not the fresh "
                                         f"ones ({margin}): exporting the initialization", final)
