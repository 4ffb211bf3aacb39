"""Model selection: which distilled set is exported, decided on data the distillation never saw.

Candidates (the initialization, iteration 0, included) are trained on with the scorer's recipe, all with
the same round seeds, so their differences are paired. The best candidate is then re-scored against the
initialization on fresh paired seeds that played no part in picking it: a set is only exported over its
own initialization when it still wins there. The recipe's ``eval.scorer`` says in which arithmetic; the
decision records it.
"""

from __future__ import annotations

import torch

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.parallel import LOCAL, Shard
from challenge_kit.core.seeds import final_round_seed
from challenge_kit.recipes import EvalConfig
from challenge_kit.stats import mean_se, paired
from evaluator.fast import arithmetic
from evaluator.scorer import evaluate_images


def _weak(diff: dict, before: str, after: str) -> str:
    """A warning, between ``before`` and ``after``, when a gain is within 2 standard errors; else nothing."""
    return "" if diff["mean"] > 2 * diff["se"] else f"{before}within 2 standard errors: not a significant gain{after}"


class Selector:
    """Scores candidate sets on the selection split with the scorer's recipe, paired by seed."""

    def __init__(self, config: EvalConfig, spec: DatasetSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, shard: Shard = LOCAL) -> None:
        self.config, self.spec, self.images, self.labels = config, spec, images, labels
        self.device, self.shard = device, shard

    @property
    def enabled(self) -> bool:
        return self.config.every > 0

    def due(self, iteration: int, last: int) -> bool:
        return self.enabled and (iteration % self.config.every == 0 or iteration == last)

    def score(self, images: torch.Tensor, rounds: int, seed: int, per_class: bool = False) -> dict:
        result = evaluate_images(images.detach(), self.spec, self.images, self.labels, rounds=rounds,
                                 epochs=self.config.epochs, seed=seed, device=self.device, show_progress=False,
                                 per_class=per_class, shard=self.shard, mode=self.config.scorer)
        mean, se = mean_se(result["rounds"])
        out = {"mean": mean, "se": se, "rounds": result["rounds"], "seeds": result["seeds"]}
        if per_class:
            out["per_class"] = result["per_class"]
        return out

    def candidate(self, iteration: int, images: torch.Tensor) -> dict:
        return {"iteration": iteration, **self.score(images, self.config.rounds, self.config.seed, per_class=True)}

    def decide(self, candidates: list[dict], init: torch.Tensor, best: torch.Tensor) -> dict:
        """Which set to export and why: the best candidate, if it beats the initialization on fresh rounds."""
        first = candidates[0]
        leader = max(candidates, key=lambda c: c["mean"])  # ties keep the earlier one: the initialization
        out = {"split": self.config.split, "scorer": arithmetic(self.config.scorer, self.device).to_dict(),
               "candidates": candidates, "leader": leader["iteration"]}
        if leader["iteration"] == first["iteration"]:
            runner = max(candidates[1:], key=lambda c: c["mean"], default=None)
            behind = "" if runner is None else (f"; the best iteration, {runner['iteration']}, scored "
                                                f"{runner['mean']:.4f} against its {first['mean']:.4f}")
            return {**out, "export": first["iteration"], "reason": f"no candidate beat the initialization{behind}",
                    "final": None}
        if self.config.final_rounds < 1:  # the selection rounds are paired (same seeds): say by how much
            diff = paired(leader["rounds"], first["rounds"])
            return {**out, "export": leader["iteration"], "final": None,
                    "reason": f"iteration {leader['iteration']} scored best ({leader['mean']:.4f} against the "
                              f"initialization's {first['mean']:.4f}: {diff['mean']:+.4f} +- {diff['se']:.4f} over "
                              f"{diff['rounds']} paired selection rounds{_weak(diff, ', ', '')}; no final rounds)"}
        seed = final_round_seed(self.config.seed)
        final = {"leader": self.score(best, self.config.final_rounds, seed, per_class=True),
                 "init": self.score(init, self.config.final_rounds, seed, per_class=True)}
        diff = paired(final["leader"]["rounds"], final["init"]["rounds"])
        final["difference"] = diff
        margin = f"{diff['mean']:+.4f} +- {diff['se']:.4f} over {diff['rounds']} fresh paired rounds"
        if diff["mean"] > 0:
            return {**out, "export": leader["iteration"], "final": final,
                    "reason": f"iteration {leader['iteration']} beat the initialization by "
                              f"{margin}{_weak(diff, ' (', ')')}"}
        return {**out, "export": first["iteration"], "final": final,
                "reason": f"iteration {leader['iteration']} led the selection rounds but not the fresh ones "
                          f"({margin}): exporting the initialization"}
