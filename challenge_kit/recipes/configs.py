"""The typed configs of a run, one per recipe section. A field that names a kind's part holds a ``parts.Choice``:
the part's name and its own parameters, nothing of the parts not chosen."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from challenge_kit import parts
from challenge_kit.core.contract import FAST, SCORER_MODES
from challenge_kit.parts import Choice, GsamParams
from challenge_kit.parts.params import below_one, non_negative, one_of, positive, random_seed


@dataclass(frozen=True)
class ExpertConfig:
    """FTD-style expert training (flat trajectories); ``objective`` and ``schedule`` are chosen parts."""

    num_experts: int = positive(100)
    epochs: int = positive(30)
    lr: float = positive(0.01)
    momentum: float = below_one(0.0)
    weight_decay: float = non_negative(0.0)
    batch_size: int = positive(256)
    lr_decay_epoch: int = non_negative(0)  # multiply the lr by lr_decay after this epoch (0: constant lr)
    lr_decay: float = non_negative(0.5)
    objective: Choice = Choice("gsam", GsamParams())
    schedule: Choice = Choice("full")
    seed: int = random_seed(0)
    arithmetic: str = one_of("float32", parts.ARITHMETICS)  # the training steps' (docs/experts.md)


@dataclass(frozen=True)
class DistillConfig:
    """M-DATM trajectory matching (the paper's table 1); ``init`` to ``perturb`` are chosen parts."""

    iterations: int = positive(10000)
    syn_steps: int = positive(40)
    expert_epochs: int = positive(2)
    min_start_epoch: int = non_negative(0)
    current_max_start_epoch: int = non_negative(15)
    max_start_epoch: int = non_negative(20)
    interval: int = positive(100)
    batch_syn: int = positive(1000)
    lr_img: float = positive(1000.0)
    lr_lr: float = non_negative(1e-5)
    lr_init: float = positive(0.01)
    momentum: float = below_one(0.5)
    threshold: float = positive(1.0)
    grad: str = one_of("exact", parts.GRAD_MODES, "gradient mode")
    arithmetic: str = one_of("float32", parts.ARITHMETICS)  # the inner steps' (docs/mdatm.md)
    init: Choice = Choice("real_correct")
    labels: Choice = Choice("hard")
    mask: Choice = Choice("all")
    weights: Choice = Choice("uniform")
    terms: Choice = Choice("final")
    perturb: Choice = Choice("none")
    seed: int = random_seed(0)
    checkpoint_every: int = positive(100)


SPLITS = ("holdout", "test")


@dataclass(frozen=True)
class EvalConfig:
    """Model selection with the scorer's recipe on a short budget, on data neither experts nor distillation see.

    Every ``every`` iterations (and at iteration 0, the initialization) the set is trained on ``rounds`` times
    with the same seeds for every candidate; the best is re-scored against the initialization on
    ``final_rounds`` fresh paired seeds. ``split = "holdout"`` carves ``holdout_per_class`` images per class
    from the training split for this; ``"test"`` selects on the test split (DATM's practice). ``scorer``
    is the arithmetic the candidates are trained in: ``"fast"`` (``evaluator.fast``, shown to decide as the
    faithful one does) or ``"faithful"`` (float32, the official script's).
    """

    every: int = non_negative(1000)
    epochs: int = positive(300)
    rounds: int = positive(2)
    final_rounds: int = non_negative(6)
    split: str = one_of("holdout", SPLITS)
    holdout_per_class: int = non_negative(10)
    seed: int = random_seed(0)
    scorer: str = one_of(FAST, SCORER_MODES)


def section_dict(config: Any) -> dict:
    """A section as plain data, each chosen part as ``{"name": ..., its parameters}``."""
    return {f.name: (v.to_dict() if isinstance(v := getattr(config, f.name), Choice) else v) for f in fields(config)}


@dataclass(frozen=True)
class Recipe:
    dataset: str
    profile: str = "full"
    method: str = "M-DATM"
    description: str = ""
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """Plain data (what run.json and a checkpoint record), parts in the recipe file's look."""
        return {f.name: section_dict(v) if f.name in SECTIONS else v
                for f in fields(self) for v in [getattr(self, f.name)]}

    def parts(self) -> dict[str, str]:
        """The part chosen for each kind (what makes this method this method)."""
        return {kind: self.choice(kind).name for kind in parts.KINDS}

    def choice(self, kind: str) -> Choice:
        """The part chosen for ``kind``, with its parameters."""
        section, _, key = parts.FIELDS[kind].partition(".")
        return getattr(getattr(self, section), key)


SECTIONS = {"experts": ExpertConfig, "distill": DistillConfig, "eval": EvalConfig}
