"""The one call shape of each kind of part, as the distillation loop and expert training make it: the part's own
parameters are already bound (``parts.build``), the run facts it needs are passed explicitly. A user's part is
checked against its kind's protocol when the recipe loads (``misfit``)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from challenge_kit.core.contract import DatasetSpec
    from challenge_kit.core.models import FunctionalConvNet, ModelConfig


class Experts(Protocol):
    """What a part reads of a store's complete experts (``experts.store.Trajectories`` is them; the parts sit
    below the store and name only this)."""

    epochs: int

    @property
    def count(self) -> int: ...

    def snapshots(self, expert: int, epochs: list[int]) -> torch.Tensor: ...

    def snapshot(self, expert: int, epoch: int) -> torch.Tensor: ...

    def last(self, expert: int = 0) -> torch.Tensor: ...


@dataclass
class InitContext:
    """What an initialization may use: the real training pool, the experts, the seeded generator."""

    spec: DatasetSpec
    images: torch.Tensor  # challenge-normalized real training images (the pool; held-out images excluded)
    labels: torch.Tensor
    experts: Experts
    model: ModelConfig
    generator: torch.Generator
    device: torch.device


@dataclass
class LabelContext:
    """What a label part may use: the experts and a functional network to run their snapshots."""

    spec: DatasetSpec
    experts: Experts
    net: FunctionalConvNet
    device: torch.device


@runtime_checkable
class Init(Protocol):
    """The IPC images per class, in default order, that distillation starts from."""

    def __call__(self, ctx: InitContext) -> torch.Tensor: ...


@runtime_checkable
class Labels(Protocol):
    """What the student is trained towards in the inner loop, and what a run records as its labels."""

    learned: bool  # the labels are a leaf of the matching gradient
    challenge: bool  # the scorer reads them (only default-order hard labels): the set exports as a submission
    sgd: tuple[float, float] | None  # lr and momentum of the learned labels' own SGD

    def initial(self, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor: ...

    def targets(self, labels: torch.Tensor, images: torch.Tensor, net: FunctionalConvNet,
                target: torch.Tensor) -> torch.Tensor: ...

    def record(self, labels: torch.Tensor, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor: ...


@runtime_checkable
class Mask(Protocol):
    """Which flat parameters the matching loss compares (None: all); asked once per run."""

    def __call__(self, net: FunctionalConvNet) -> torch.Tensor | None: ...


@runtime_checkable
class Weights(Protocol):
    """The inner-loss weight of each of ``steps`` inner steps from expert epoch ``start_epoch`` (None: all 1)."""

    def __call__(self, start_epoch: int, steps: int, max_start_epoch: int) -> list[float] | None: ...


@runtime_checkable
class Terms(Protocol):
    """The start snapshot theta*_t and the (inner steps, expert snapshot) pairs the student is matched against."""

    def __call__(self, experts: Experts, expert: int, start_epoch: int, steps: int,
                 expert_epochs: int) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]: ...


@runtime_checkable
class Perturb(Protocol):
    """Where the student starts, given the expert's start snapshot."""

    def __call__(self, start: torch.Tensor, net: FunctionalConvNet, generator: torch.Generator) -> torch.Tensor: ...


@runtime_checkable
class Objective(Protocol):
    """An expert's (loss, gradient) on one augmented batch in epoch index ``epoch`` (0-based)."""

    def __call__(self, f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 epoch: int) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class Schedule(Protocol):
    """Which real images epoch ``epoch`` (1-based) trains on."""

    # EL2N difficulty ranks the images first (``order``, easiest first): (networks averaged, epochs each), or None
    difficulty: tuple[int, int] | None

    def indices(self, order: torch.Tensor | None, n: int, epoch: int) -> torch.Tensor | None: ...


PROTOCOLS: dict[str, type] = {"init": Init, "labels": Labels, "mask": Mask, "weights": Weights, "terms": Terms,
                              "perturb": Perturb, "objective": Objective, "schedule": Schedule}


def methods(protocol: type) -> dict[str, list[str]]:
    """A protocol's methods and the arguments each is called with (less ``self``)."""
    return {name: list(inspect.signature(f).parameters)[1:] for name, f in vars(protocol).items()
            if inspect.isfunction(f) and (name == "__call__" or not name.startswith("_"))}


def _defined(cls: type, name: str) -> Any:
    """``name`` as the class (or a base other than ``object``) defines it, descriptors unresolved; None if not."""
    return next((vars(k)[name] for k in cls.__mro__[:-1] if name in vars(k)), None)


def _takes(method: Any, count: int) -> bool:
    """Whether ``method`` as found on a class can be called on an instance with ``count`` positional arguments."""
    target, bound = (method.__func__, 0) if isinstance(method, staticmethod) else \
        (method.__func__, 1) if isinstance(method, classmethod) else (method, 1)
    try:
        inspect.signature(target).bind(*[None] * (bound + count))
    except (TypeError, ValueError):
        return False
    return True


def misfit(kind: str, cls: type) -> str | None:
    """What keeps class ``cls`` from being a part of ``kind`` (an attribute or method of the kind's protocol
    missing, or a method its call cannot reach with the protocol's arguments), or None."""
    protocol = PROTOCOLS[kind]
    for name in protocol.__annotations__:
        if not hasattr(cls, name):
            return f"has no class attribute {name!r} (the {kind} protocol, parts/kinds.py {protocol.__name__})"
    for name, args in methods(protocol).items():
        method = _defined(cls, name)
        shape = f"{name}({', '.join(args)})"
        if method is None or not callable(getattr(method, "__func__", method)):
            return f"has no method {shape} (the {kind} protocol, parts/kinds.py {protocol.__name__})"
        if not _takes(method, len(args)):
            return f"cannot be called as {shape} (the {kind} protocol, parts/kinds.py {protocol.__name__})"
    return None
