"""Named parts: everything that differs between the seed methods, registered by name, chosen by the recipe.

A method is a recipe naming one part of each kind (``submissions/research/*.toml``); the distillation loop
and expert training call the chosen parts through fixed signatures and never branch on a method's name.
``ddkit methods`` lists what is registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    impl: Any


REGISTRY: dict[str, dict[str, Part]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str, summary: str, source: str) -> Callable:
    """Decorator: file ``impl`` under ``kind``/``name`` with a one-line summary."""
    if kind not in KINDS:
        raise ValueError(f"unknown part kind {kind!r}")

    def add(impl):
        if name in REGISTRY[kind]:
            raise ValueError(f"part {kind}/{name} registered twice")
        REGISTRY[kind][name] = Part(kind, name, summary, source, impl)
        return impl

    return add


def get(kind: str, name: str) -> Any:
    """The implementation of ``kind``/``name``; a ValueError names the known ones."""
    try:
        return REGISTRY[kind][name].impl
    except KeyError:
        known = ", ".join(REGISTRY.get(kind, {})) or "none"
        raise ValueError(f"unknown {kind} part {name!r}; known: {known}") from None


def catalogue() -> list[Part]:
    return [part for kind in KINDS for part in REGISTRY[kind].values()]


# The parts themselves (imported for their registrations).
from challenge_kit.parts import expert_parts, initializations, labels, matching_parts  # noqa: E402, F401
