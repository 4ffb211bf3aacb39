"""Named parts: everything that differs between the seed methods, listed by name, chosen by the recipe.

A method is a recipe naming one part of each kind (``submissions/research/*.toml``); the distillation loop
and expert training call the chosen parts through fixed signatures and never branch on a method's name.
``ddkit methods`` lists what is here. The catalogue is plain data and imports no part module, so that a
recipe's names are checked in a fraction of a second, before torch is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from challenge_kit.core.errors import KitValueError

KINDS = {
    "init": "how the synthetic images start",
    "labels": "what the student is trained towards in the inner loop",
    "mask": "which parameters the matching loss compares",
    "weights": "the inner-loss weight of each inner step",
    "terms": "which expert snapshots the student is matched against",
    "perturb": "a change to the expert's start snapshot before the inner loop",
    "objective": "the loss and optimizer experts are trained with",
    "schedule": "which real images experts see in each epoch",
}
# The recipe field (section.key) that names each kind's part.
FIELDS = {"init": "distill.init", "labels": "distill.labels", "mask": "distill.mask",
          "weights": "distill.weights", "terms": "distill.terms", "perturb": "distill.perturb",
          "objective": "experts.objective", "schedule": "experts.schedule"}


@dataclass(frozen=True)
class Part:
    kind: str
    name: str
    summary: str
    source: str  # the paper (seed file) or "M-DATM"
    where: str  # "module.attribute" under challenge_kit.parts

    @property
    def impl(self) -> Any:
        module, _, attribute = self.where.rpartition(".")
        return getattr(importlib.import_module(f"challenge_kit.parts.{module}"), attribute)


PARTS = (
    Part("init", "real", "random real images of each class", "MTT", "initializations.real"),
    Part("init", "real_correct", "real images the experts' last snapshots classify correctly (first expert first), "
         "others when too few", "DATM", "initializations.real_correct"),
    Part("init", "noise", "standard Gaussian noise", "MTT", "initializations.noise"),
    Part("init", "kmeans", "per class, the real images nearest the K-means centroids (K = IPC) of the first "
         "expert's penultimate features", "smooth experts", "initializations.representative"),
    Part("labels", "hard", "default-order hard labels, image i is class i // IPC (what the scorer uses)", "M-DATM",
         "labels.Hard"),
    Part("labels", "learned_soft", "soft labels initialized from the experts' logits on the images they classify "
         "correctly, learned with their own optimizer", "DATM", "labels.LearnedSoft"),
    Part("labels", "assigned_soft", "each iteration, the target snapshot's logits on the synthetic images are the "
         "inner-loop targets (no learned labels)", "TESLA", "labels.AssignedSoft"),
    Part("mask", "all", "every parameter counts in the matching loss", "MTT", "matching_parts.all_parameters"),
    Part("mask", "deep", "drop the first discard_ratio of the flat parameter vector (shallow layers, FIEM)", "PAD",
         "matching_parts.deep_parameters"),
    Part("weights", "uniform", "every inner step's loss has weight 1", "MTT", "matching_parts.uniform"),
    Part("weights", "balanced", "balanced inner-loop loss: scale by nu(start epoch), small for early starts, "
         "large for late ones", "smooth experts", "matching_parts.balanced"),
    Part("terms", "final", "match theta*_{t+M} after N steps", "MTT", "matching_parts.final"),
    Part("terms", "intermediate", "also match theta*_{t+i} after floor(i N / M) steps, i = 1..M-1, each "
         "normalized like the main term", "smooth experts", "matching_parts.intermediate"),
    Part("perturb", "none", "the student starts at the expert snapshot", "MTT", "matching_parts.no_perturbation"),
    Part("perturb", "filter_noise", "add Gaussian noise to each filter of theta*_t, rescaled to perturb_scale "
         "times the filter's norm", "smooth experts", "matching_parts.perturb_filters"),
    Part("objective", "sgd", "cross-entropy, plain SGD step", "MTT", "expert_parts.sgd"),
    Part("objective", "gsam", "cross-entropy with GSAM around SGD (rho, alpha, adaptive): flat trajectories",
         "FTD/M-DATM", "expert_parts.gsam"),
    Part("objective", "smooth", "clipped cross-entropy (lambda rising clip_start -> 1 over clip_epochs) plus a "
         "two-sided gradient penalty gp_weight * E[(||df/dx|| - gp_target)^2]", "smooth experts",
         "expert_parts.smooth"),
    Part("schedule", "full", "every real training image in every epoch", "MTT", "expert_parts.Full"),
    Part("schedule", "easy_first", "EL2N difficulty: start with the easiest initial_ratio, add harder images until "
         "epoch add_end_epoch, then drop the easiest drop_easy in one step (FIEX)", "PAD", "expert_parts.EasyFirst"),
)
REGISTRY: dict[str, dict[str, Part]] = {kind: {p.name: p for p in PARTS if p.kind == kind} for kind in KINDS}


def check(kind: str, name: str) -> None:
    """A KitValueError naming the known parts when ``kind``/``name`` is not one (imports nothing)."""
    if name not in REGISTRY.get(kind, {}):
        known = ", ".join(REGISTRY.get(kind, {})) or "none"
        raise KitValueError(f"unknown {kind} part {name!r}; known: {known}")


def get(kind: str, name: str) -> Any:
    """The implementation of ``kind``/``name``; a KitValueError names the known ones."""
    check(kind, name)
    return REGISTRY[kind][name].impl


def catalogue() -> list[Part]:
    return [part for kind in KINDS for part in REGISTRY[kind].values()]
