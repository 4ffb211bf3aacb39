"""The catalogue of the kit's own parts: each declared once, by kind, name, summary, source, where its
implementation lives and the dataclass of its parameters (each with its default and constraint).

It is plain data and imports no part module, so that a recipe's names are checked in a fraction of a second,
before torch is imported; ``Part.impl`` imports the implementation when a run needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import Field, asdict, dataclass, fields
from functools import partial
from typing import Any

from challenge_kit.core.errors import KitValueError
from challenge_kit.parts.params import below_one, fraction, non_negative, positive, signed

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
GRAD_MODES = ("exact", "unrolled")  # matching.match: the constant-memory adjoint, or autograd through N steps
# How experts' steps and matching's inner steps compute: float32, or bfloat16 autocast where the device has it
# natively (``evaluator.fast.native_bfloat16``; elsewhere "fast" computes in float32).
ARITHMETICS = ("float32", "fast")


@dataclass(frozen=True)
class Part:
    kind: str
    name: str
    summary: str
    source: str  # the paper (seed file) or "M-DATM"
    where: str  # "module.attribute" under challenge_kit.parts
    params: type | None = None  # the dataclass of its parameters (None: it has none)
    challenge: bool = False  # labels: the scorer reads sets made with them (only default-order hard labels)

    @property
    def impl(self) -> Any:
        module, _, attribute = self.where.rpartition(".")
        return getattr(importlib.import_module(f"challenge_kit.parts.{module}"), attribute)

    def bind(self, params: Any) -> Any:
        """The implementation ready to call: a class is built from the parameters, a function gets them first."""
        given = () if self.params is None else (params,)
        return self.impl(*given) if isinstance(self.impl, type) else partial(self.impl, *given)


@dataclass(frozen=True)
class Choice:
    """A chosen part: its name (a catalogue name or a user's ``module:Class``) and its own parameters (an
    instance of its parameter dataclass; None when it takes none). Unchosen parts leave no trace in a config."""

    name: str
    params: Any = None

    def to_dict(self) -> dict:
        """The recipe file's look: ``{"name": "gsam", "rho": 0.01, ...}``."""
        return {"name": self.name, **({} if self.params is None else asdict(self.params))}


# The parameters of the parts that take some, with their defaults and constraints (PARTS below names each
# part's). A name two parts of one kind share is one recipe key (given without the part's name, and kept when
# the choice moves from one to the other), so its two declarations must agree.

@dataclass(frozen=True)
class LearnedSoftParams:
    lr_labels: float = non_negative(10.0)  # DATM: SGD on the label logits
    labels_momentum: float = below_one(0.9)
    label_epoch: int = signed(-1)  # expert snapshot whose logits make soft labels (-1: the last)
    label_experts: int = non_negative(0)  # experts whose logits are averaged (0: all)


@dataclass(frozen=True)
class AssignedSoftParams:
    label_epoch: int = signed(-1)  # the first expert's snapshot whose logits are recorded as the labels


@dataclass(frozen=True)
class DeepParams:
    discard_ratio: float = fraction(0.25)  # PAD FIEM: share of the flat parameters (shallow first) left out


@dataclass(frozen=True)
class BalancedParams:
    balance_offset: float = positive(8.0)  # nu = log(|t - T+/2| + offset)


@dataclass(frozen=True)
class FilterNoiseParams:
    perturb_scale: float = non_negative(0.1)  # noise norm relative to each filter's


@dataclass(frozen=True)
class GsamParams:
    rho: float = non_negative(0.01)  # radius of the weight perturbation
    alpha: float = non_negative(0.3)  # share of the gradient's part orthogonal to the perturbed one taken off
    adaptive: bool = True  # the radius scales with each weight's size


@dataclass(frozen=True)
class SmoothParams:
    clip_start: float = fraction(0.5)  # clipped CE coefficient rises from clip_start to 1 over clip_epochs
    clip_epochs: int = non_negative(5)
    gp_weight: float = non_negative(1.0)  # gradient penalty mu and target K
    gp_target: float = non_negative(1.0)


@dataclass(frozen=True)
class EasyFirstParams:
    initial_ratio: float = fraction(0.75)  # PAD FIEX
    add_end_epoch: int = positive(20)
    drop_easy: float = fraction(0.1)
    score_models: int = positive(2)  # EL2N: models averaged, epochs each is trained
    score_epochs: int = positive(2)



PARTS = (
    Part("init", "real", "random real images of each class", "MTT", "initializations.real"),
    Part("init", "real_correct", "real images the experts' last snapshots classify correctly (first expert first), "
         "others when too few", "DATM", "initializations.real_correct"),
    Part("init", "noise", "standard Gaussian noise", "MTT", "initializations.noise"),
    Part("init", "kmeans", "per class, the real images nearest the K-means centroids (K = IPC) of the first "
         "expert's penultimate features", "smooth experts", "initializations.representative"),
    Part("init", "herding", "per class, herding in the first expert's penultimate features: each image added "
         "brings the chosen images' mean closest to the class mean", "herding (iCaRL)", "initializations.herding"),
    Part("init", "kcenter", "per class, k-center greedy in the first expert's penultimate features: a seeded first "
         "image, then always the one farthest from those chosen", "k-center coreset", "initializations.kcenter"),
    *(Part("init", f"{score}_{pick}", f"per class, the {what} by {label} ({source})", source,
           f"initializations.{score}_{pick}")
      for score, label, source in (("el2n", "EL2N of the experts' snapshots a tenth of the way through, averaged",
                                    "EL2N"),
                                   ("forgetting", "forgetting events over the first expert's epochs", "forgetting"))
      for pick, what in (("easy", "IPC easiest"), ("hard", "IPC hardest"),
                         ("band", "IPC next-easiest after skipping the IPC easiest"))),
    Part("labels", "hard", "default-order hard labels, image i is class i // IPC (what the scorer uses)", "M-DATM",
         "labels.Hard", challenge=True),
    Part("labels", "learned_soft", "soft labels initialized from the experts' logits on the images they classify "
         "correctly, learned with their own optimizer", "DATM", "labels.LearnedSoft", LearnedSoftParams),
    Part("labels", "assigned_soft", "each iteration, the target snapshot's logits on the synthetic images are the "
         "inner-loop targets (no learned labels)", "TESLA", "labels.AssignedSoft", AssignedSoftParams),
    Part("mask", "all", "every parameter counts in the matching loss", "MTT", "matching_parts.all_parameters"),
    Part("mask", "deep", "drop the first discard_ratio of the flat parameter vector (shallow layers, FIEM)", "PAD",
         "matching_parts.deep_parameters", DeepParams),
    Part("weights", "uniform", "every inner step's loss has weight 1", "MTT", "matching_parts.uniform"),
    Part("weights", "balanced", "balanced inner-loop loss: scale by nu(start epoch), small for early starts, "
         "large for late ones", "smooth experts", "matching_parts.balanced", BalancedParams),
    Part("terms", "final", "match theta*_{t+M} after N steps", "MTT", "matching_parts.final"),
    Part("terms", "intermediate", "also match theta*_{t+i} after floor(i N / M) steps, i = 1..M-1, each "
         "normalized like the main term", "smooth experts", "matching_parts.intermediate"),
    Part("perturb", "none", "the student starts at the expert snapshot", "MTT", "matching_parts.no_perturbation"),
    Part("perturb", "filter_noise", "add Gaussian noise to each filter of theta*_t, rescaled to perturb_scale "
         "times the filter's norm", "smooth experts", "matching_parts.perturb_filters",
         FilterNoiseParams),
    Part("objective", "sgd", "cross-entropy, plain SGD step", "MTT", "expert_parts.sgd"),
    Part("objective", "gsam", "cross-entropy with GSAM around SGD (rho, alpha, adaptive): flat trajectories",
         "FTD/M-DATM", "expert_parts.gsam", GsamParams),
    Part("objective", "smooth", "clipped cross-entropy (lambda rising clip_start -> 1 over clip_epochs) plus a "
         "two-sided gradient penalty gp_weight * E[(||df/dx|| - gp_target)^2]", "smooth experts",
         "expert_parts.smooth", SmoothParams),
    Part("schedule", "full", "every real training image in every epoch", "MTT", "expert_parts.Full"),
    Part("schedule", "easy_first", "EL2N difficulty: start with the easiest initial_ratio, add harder images until "
         "epoch add_end_epoch, then drop the easiest drop_easy in one step (FIEX)", "PAD", "expert_parts.EasyFirst",
         EasyFirstParams),
)
# The init parts that are coreset selections: each is also a `ddkit baseline --method` and `compare --baseline`.
CORESETS = ("herding", "kcenter", *(f"{score}_{pick}" for score in ("el2n", "forgetting")
                                    for pick in ("easy", "hard", "band")))
REGISTRY: dict[str, dict[str, Part]] = {kind: {p.name: p for p in PARTS if p.kind == kind} for kind in KINDS}


def parameters(kind: str) -> dict[str, tuple[Field, list[str]]]:
    """Every parameter of ``kind``'s parts in catalogue order: its declaration and the parts that take it."""
    out: dict[str, tuple[Field, list[str]]] = {}
    for part in REGISTRY[kind].values():
        for f in fields(part.params) if part.params else ():
            first = out.setdefault(f.name, (f, []))[0]
            if (first.type, first.default, first.metadata) != (f.type, f.default, f.metadata):
                raise TypeError(f"{kind} parameter {f.name} is declared two ways")
            out[f.name][1].append(part.name)
    return out


def check(kind: str, name: str) -> None:
    """A KitValueError naming the known parts when ``kind``/``name`` is not one (imports nothing)."""
    if name not in REGISTRY.get(kind, {}):
        known = ", ".join(REGISTRY.get(kind, {})) or "none"
        raise KitValueError(f"unknown {kind} part {name!r}; known: {known}")


def catalogue() -> list[Part]:
    return [part for kind in KINDS for part in REGISTRY[kind].values()]
