"""The synthetic set being distilled: the recipe's parts bound once, where the set starts, and how it steps.

The leaves are the images, the learnable inner lr and (for label-learning methods) the label logits; each
has its own SGD with momentum, as DATM's three optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from challenge_kit import parts
from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import KitValueError
from challenge_kit.core.models import FunctionalConvNet
from challenge_kit.core.seeds import distill_generators
from challenge_kit.experts.store import Trajectories
from challenge_kit.matching import MatchResult
from challenge_kit.optim import sgd_step
from challenge_kit.parts.kinds import Init, InitContext, LabelContext, Labels, Perturb, Terms, Weights
from challenge_kit.recipes import DistillConfig, Recipe
from challenge_kit.runs import DistillState


@dataclass
class Method:
    """A recipe's distillation parts, bound once to their parameters (the loop calls these, never a method's
    name); the mask is the mask part's answer for this network."""

    init: Init
    labels: Labels
    mask: torch.Tensor | None
    weights: Weights
    terms: Terms
    perturb: Perturb

    @classmethod
    def bind(cls, recipe: Recipe, net: FunctionalConvNet, device: torch.device) -> Method:
        d = recipe.distill
        mask = parts.build("mask", d)(net)
        return cls(init=parts.build("init", d), labels=parts.build("labels", d),
                   mask=None if mask is None else mask.to(device), weights=parts.build("weights", d),
                   terms=parts.build("terms", d), perturb=parts.build("perturb", d))


def check_init(images: object, spec: DatasetSpec, name: str) -> None:
    """Refuse what an init part (a user's own among them) returns unless it is the set's shape and finite, before
    a matching step runs on it."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise KitValueError(f"distill.init {name}: returned {type(images).__name__}"
                            f"{f' of {images.dtype}' if isinstance(images, torch.Tensor) else ''}, not a float tensor")
    if tuple(images.shape) != spec.shape:
        raise KitValueError(f"distill.init {name}: returned shape {tuple(images.shape)}, the set is {spec.shape} "
                            f"({spec.describe()})")
    if not bool(torch.isfinite(images).all()):
        raise KitValueError(f"distill.init {name}: returned non-finite values")


def initial_state(recipe: Recipe, spec: DatasetSpec, experts: Trajectories, net: FunctionalConvNet,
                  method: Method, real_images: torch.Tensor, real_labels: torch.Tensor,
                  device: torch.device) -> DistillState:
    """Iteration 0: the initialization part's images, the label part's labels, lr_init, T = current_max_start."""
    cfg = recipe.distill
    gen, aug = distill_generators(cfg.seed, device)
    images = method.init(InitContext(spec, real_images, real_labels, experts, net.config, gen, device))
    check_init(images, spec, cfg.init.name)
    images = images.float()
    labels = method.labels.initial(images.to(device), LabelContext(spec, experts, net, device))
    return DistillState(iteration=0, images=images.cpu(), labels=labels.detach().cpu(), lr=torch.tensor(cfg.lr_init),
                        upper=cfg.current_max_start_epoch, rng=gen.get_state(), aug_rng=aug.get_state())


class Synthetic:
    """The state's leaves on the run's device."""

    def __init__(self, state: DistillState, device: torch.device, labels_sgd: tuple[float, float] | None) -> None:
        """``labels_sgd``: the label part's (lr, momentum) when it learns the labels."""
        self.images = state.images.to(device)
        self.lr = state.lr.to(device)
        self.labels = state.labels.to(device).requires_grad_(labels_sgd is not None)
        self.labels_sgd = labels_sgd
        self.momentum = {k: v.to(device) for k, v in state.momentum.items()}

    def step(self, result: MatchResult, cfg: DistillConfig) -> torch.Tensor:
        """One SGD-with-momentum step of every leaf; returns the relative image change (on the device)."""
        before = self.images
        self.images = self._sgd("images", self.images, result.grad_images, cfg.lr_img, cfg.momentum)
        self.lr = self._sgd("lr", self.lr, result.grad_lr, cfg.lr_lr, cfg.momentum)
        if result.grad_labels is not None and self.labels_sgd is not None:
            labels = self._sgd("labels", self.labels.detach(), result.grad_labels, *self.labels_sgd)
            self.labels = labels.requires_grad_(True)
        return (self.images - before).norm() / before.norm().clamp_min(1e-12)

    def _sgd(self, name: str, value: torch.Tensor, grad: torch.Tensor, lr: float, momentum: float) -> torch.Tensor:
        value, buf = sgd_step(value, grad, lr, momentum, buf=self.momentum.get(name))
        if buf is not None:
            self.momentum[name] = buf
        return value

    def store(self, state: DistillState) -> None:
        state.images, state.lr = self.images.detach().cpu(), self.lr.detach().cpu()
        state.labels = self.labels.detach().cpu()
        state.momentum = {k: v.detach().cpu() for k, v in self.momentum.items()}

    def snapshot(self, iteration: int) -> dict:
        """A copy of the set as it is now (a selection candidate)."""
        return {"iteration": iteration, "images": self.images.detach().cpu().clone(),
                "labels": self.labels.detach().cpu().clone(), "lr": float(self.lr)}
