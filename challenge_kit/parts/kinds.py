"""The one call shape of each kind of part, as the distillation loop and expert training make it: the part's own
parameters are already bound (``parts.build``), the run facts it needs are passed explicitly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from challenge_kit.core.models import FunctionalConvNet
    from challenge_kit.experts import Trajectories
    from challenge_kit.parts.initializations import InitContext
    from challenge_kit.parts.labels import LabelContext


class Init(Protocol):
    """The IPC images per class, in default order, that distillation starts from."""

    def __call__(self, ctx: InitContext) -> torch.Tensor: ...


class Labels(Protocol):
    """What the student is trained towards in the inner loop, and what a run records as its labels."""

    learned: bool  # the labels are a leaf of the matching gradient
    challenge: bool  # the scorer reads them (only default-order hard labels)
    sgd: tuple[float, float] | None  # lr and momentum of the learned labels' own SGD

    def initial(self, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor: ...

    def targets(self, labels: torch.Tensor, images: torch.Tensor, net: FunctionalConvNet,
                target: torch.Tensor) -> torch.Tensor: ...

    def record(self, labels: torch.Tensor, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor: ...


class Mask(Protocol):
    """Which flat parameters the matching loss compares (None: all); asked once per run."""

    def __call__(self, net: FunctionalConvNet) -> torch.Tensor | None: ...


class Weights(Protocol):
    """The inner-loss weight of each of ``steps`` inner steps from expert epoch ``start_epoch`` (None: all 1)."""

    def __call__(self, start_epoch: int, steps: int, max_start_epoch: int) -> list[float] | None: ...


class Terms(Protocol):
    """The start snapshot theta*_t and the (inner steps, expert snapshot) pairs the student is matched against."""

    def __call__(self, experts: Trajectories, expert: int, start_epoch: int, steps: int,
                 expert_epochs: int) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]: ...


class Perturb(Protocol):
    """Where the student starts, given the expert's start snapshot."""

    def __call__(self, start: torch.Tensor, net: FunctionalConvNet, generator: torch.Generator) -> torch.Tensor: ...


class Objective(Protocol):
    """An expert's (loss, gradient) on one augmented batch in epoch index ``epoch`` (0-based)."""

    def __call__(self, f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 epoch: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class Schedule(Protocol):
    """Which real images epoch ``epoch`` (1-based) trains on."""

    needs_difficulty: bool  # ``order`` (image indices from easiest to hardest) must be computed first

    def indices(self, order: torch.Tensor | None, n: int, epoch: int) -> torch.Tensor | None: ...
