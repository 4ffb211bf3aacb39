"""The trajectory-matching loss and its gradient, as pure functions on a flat-parameter ConvNet.

One M-DATM iteration starts a student at expert snapshot theta*_t, trains it for N SGD steps on the
synthetic images (fresh DSA each step, learnable scalar lr alpha) and compares the result with
theta*_{t+M}:  L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2.

Two ways to get dL/dx and dL/dalpha, which agree to rounding:
- ``unrolled``: keep the graph of all N steps and backpropagate once (memory grows with N);
- ``exact`` (default): the adjoint walk of SPEC section 5, which keeps only theta_k and each step's
  batch indices and augmentation parameters, and recomputes one step at a time on the way back
  (one double-backward per step), so peak memory does not depend on N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from challenge_kit import augment
from challenge_kit.models import FunctionalConvNet

GRAD_MODES = ("exact", "unrolled")


@dataclass
class InnerStep:
    """What one inner step sees: which synthetic images, augmented how."""

    indices: torch.Tensor
    aug: augment.DSAParams


@dataclass
class MatchResult:
    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor


def plan_inner_steps(num_images: int, batch_syn: int, steps: int, image_size: int,
                     device: torch.device | str, generator: torch.Generator | None = None,
                     aug_generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> list[InnerStep]:
    """Mini-batches as chunks of a random permutation (refilled when used up), one DSA draw per step.

    Drawn up front so both gradient modes (and the recomputation in the exact one) see the same data.
    """
    plan: list[InnerStep] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(num_images, generator=generator).split(batch_syn))
        idx = chunks.pop(0).to(device)
        params = augment.sample(len(idx), image_size, device, generator=aug_generator,
                                group_generator=generator, dtype=dtype)
        plan.append(InnerStep(idx, params))
    return plan


def normalized_distance(theta: torch.Tensor, start: torch.Tensor, target: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """||theta - target||^2 / ||start - target||^2, optionally over a subset of parameters (PAD's FIEM)."""
    if mask is not None:
        theta, start, target = theta[mask], start[mask], target[mask]
    return (theta - target).pow(2).sum() / (start - target).pow(2).sum()


def _step_grad(net: FunctionalConvNet, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               step: InnerStep, create_graph: bool) -> torch.Tensor:
    """Gradient of the inner cross-entropy at ``theta`` on this step's augmented batch."""
    x = augment.apply(images[step.indices], step.aug)
    loss = F.cross_entropy(net(theta, x), labels[step.indices])
    return torch.autograd.grad(loss, theta, create_graph=create_graph)[0]


def match_unrolled(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                   start: torch.Tensor, target: torch.Tensor, plan: list[InnerStep],
                   mask: torch.Tensor | None = None) -> MatchResult:
    """Reference gradient: differentiate through the whole unrolled inner loop."""
    x = images.detach().requires_grad_(True)
    alpha = lr.detach().requires_grad_(True)
    theta = start.detach().requires_grad_(True)
    for step in plan:
        theta = theta - alpha * _step_grad(net, theta, x, labels, step, create_graph=True)
    loss = normalized_distance(theta, start, target, mask)
    gx, ga = torch.autograd.grad(loss, [x, alpha])
    return MatchResult(loss.detach(), gx, ga)


def match_exact(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                start: torch.Tensor, target: torch.Tensor, plan: list[InnerStep],
                mask: torch.Tensor | None = None) -> MatchResult:
    """Exact gradient with memory independent of N (adjoint walk, SPEC section 5)."""
    x = images.detach()
    alpha = lr.detach()
    thetas = [start.detach()]
    for step in plan:
        theta = thetas[-1].detach().requires_grad_(True)
        g = _step_grad(net, theta, x, labels, step, create_graph=False)
        thetas.append((theta - alpha * g).detach())

    theta_n = thetas.pop().requires_grad_(True)
    loss = normalized_distance(theta_n, start, target, mask)
    (adjoint,) = torch.autograd.grad(loss, theta_n)

    grad_x = torch.zeros_like(x)
    grad_alpha = torch.zeros_like(alpha)
    xg = x.detach().requires_grad_(True)
    for step, theta_k in zip(reversed(plan), reversed(thetas), strict=True):
        theta_k = theta_k.detach().requires_grad_(True)
        g = _step_grad(net, theta_k, xg, labels, step, create_graph=True)
        gl = torch.dot(g, adjoint)
        hvp, dx = torch.autograd.grad(gl, [theta_k, xg])
        grad_x -= alpha * dx
        grad_alpha -= gl.detach()
        adjoint = adjoint - alpha * hvp
    return MatchResult(loss.detach(), grad_x, grad_alpha)


def match(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
          start: torch.Tensor, target: torch.Tensor, plan: list[InnerStep], mode: str = "exact",
          mask: torch.Tensor | None = None) -> MatchResult:
    if mode == "exact":
        return match_exact(net, images, labels, lr, start, target, plan, mask)
    if mode == "unrolled":
        return match_unrolled(net, images, labels, lr, start, target, plan, mask)
    raise ValueError(f"unknown gradient mode {mode!r}; expected one of {GRAD_MODES}")
