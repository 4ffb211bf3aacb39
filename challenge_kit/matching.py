"""The trajectory-matching loss and its gradient, as pure functions on a flat-parameter ConvNet.

One iteration starts a student at expert snapshot theta*_t, trains it for N SGD steps on the synthetic
images (fresh DSA each step, learnable scalar lr alpha) and compares the result with theta*_{t+M}:
L = ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2. Methods add to this without changing
the math's shape: more (step, snapshot) targets summed into L (intermediate matching), a parameter mask
(PAD's deep layers), per-step inner-loss weights (balanced loss), a perturbed start, and soft labels that
are a third leaf of the gradient (DATM) or fixed targets (TESLA's assignment).

Two ways to get dL/dx, dL/dalpha and dL/dlabels, which agree to rounding:
- ``unrolled``: keep the graph of all N steps and backpropagate once (memory grows with N);
- ``exact`` (default): the adjoint walk, which keeps only theta_k and each step's batch
  indices and augmentation parameters, and recomputes one step at a time on the way back (one
  double-backward per step), so peak memory does not depend on N.

The inner steps' forward and backward (the recomputation and double-backward of ``exact`` too) may run under
bfloat16 autocast (``distill.arithmetic = "fast"`` on a device that computes it natively); the parameters, the
adjoint, the matching distance and the image, lr and label gradients stay float32 either way.

Both shard each step's batch over the ranks of a ``torchrun`` job (``parallel.Shard``): a rank runs its
contiguous part of the batch, the step's gradient is summed over ranks (weighted by shard size, so it is
the full batch's), and the image and label gradients of each rank's rows are summed at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from challenge_kit.arithmetic import autocast_context
from challenge_kit.core import augment
from challenge_kit.core.models import FunctionalConvNet
from challenge_kit.core.parallel import LOCAL, Shard, replicated, summed
from challenge_kit.parts import GRAD_MODES


@dataclass
class InnerStep:
    """What one inner step sees: which synthetic images, augmented how."""

    indices: torch.Tensor
    aug: augment.DSAParams


@dataclass
class Matching:
    """One iteration's matching problem: where the student starts and what it must reach when.

    ``targets`` are (inner steps taken, expert snapshot) pairs, each term normalized by the expert's own
    distance from ``anchor`` (theta*_t) to that snapshot; the main term is (N, theta*_{t+M}).
    """

    start: torch.Tensor
    anchor: torch.Tensor
    targets: list[tuple[int, torch.Tensor]]
    mask: torch.Tensor | None = None
    weights: list[float] | None = None  # inner-loss multiplier per step (None: all 1)


@dataclass
class MatchResult:
    loss: torch.Tensor
    grad_images: torch.Tensor
    grad_lr: torch.Tensor
    grad_labels: torch.Tensor | None = None
    terms: list[torch.Tensor] = field(default_factory=list)  # each target's normalized distance


def plan_inner_steps(num_images: int, batch_syn: int, steps: int, image_size: int,
                     device: torch.device | str, generator: torch.Generator | None = None,
                     aug_generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> list[InnerStep]:
    """Mini-batches as chunks of a random permutation (refilled when used up), one DSA draw per step.

    Drawn up front, for the whole batch, so both gradient modes, the recomputation in the exact one and
    every rank of a sharded run see the same data.
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


def inner_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy: class indices (hard labels), or soft targets given as logits (DATM's soft CE:
    the targets' softmax against the student's log-softmax)."""
    if targets.is_floating_point():
        return -(F.log_softmax(logits, 1) * F.softmax(targets, 1)).sum()
    return F.cross_entropy(logits, targets, reduction="sum")


def _step_grad(net: FunctionalConvNet, theta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               step: InnerStep, weight: float, shard: Shard, create_graph: bool,
               autocast: torch.dtype | None = None) -> torch.Tensor:
    """This rank's share of the gradient of the step's mean inner loss (the ranks' shares sum to it). Under
    ``autocast`` the network's forward runs in that dtype, and so (following it) its backward; the logits are
    taken back to the parameters' dtype for the loss, and the gradient comes back in it."""
    rows = shard.part(len(step.indices))
    idx = step.indices[rows]
    if len(idx) == 0:  # more ranks than images in this step: a zero share, in the graph when one is built,
        # so that this rank's backward meets the other ranks' collectives
        return theta * 0 if create_graph else torch.zeros_like(theta)
    x = augment.apply(images[idx], step.aug.take(rows))
    with autocast_context(theta.device, autocast):
        logits = net(theta, x)
    loss = inner_loss(logits.to(theta.dtype), labels[idx]) * (weight / len(step.indices))
    return torch.autograd.grad(loss, theta, create_graph=create_graph)[0]


def _weights(problem: Matching, steps: int) -> list[float]:
    return problem.weights if problem.weights is not None else [1.0] * steps


def _check(problem: Matching, steps: int) -> None:
    after = [n for n, _ in problem.targets]
    if not after or not all(0 <= n <= steps for n in after):
        raise ValueError(f"matching targets must be after 0..{steps} inner steps, got {after}")
    if len(_weights(problem, steps)) != steps:
        raise ValueError(f"{len(problem.weights)} inner-loss weights for {steps} steps")


def match_unrolled(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                   problem: Matching, plan: list[InnerStep], shard: Shard = LOCAL,
                   autocast: torch.dtype | None = None) -> MatchResult:
    """Reference gradient: differentiate through the whole unrolled inner loop."""
    _check(problem, len(plan))
    x = images.detach().requires_grad_(True)
    alpha = lr.detach().requires_grad_(True)
    learned = labels.is_floating_point() and labels.requires_grad
    y = labels.detach().requires_grad_(True) if learned else labels.detach()
    theta = problem.start.detach().requires_grad_(True)
    terms = [normalized_distance(theta, problem.anchor, t, problem.mask) for n, t in problem.targets if n == 0]
    for k, (step, weight) in enumerate(zip(plan, _weights(problem, len(plan)), strict=True), 1):
        mine = _step_grad(net, replicated(theta, shard), x, y, step, weight, shard, True, autocast)
        theta = theta - alpha * summed(mine, shard)
        terms += [normalized_distance(theta, problem.anchor, t, problem.mask) for n, t in problem.targets if n == k]
    loss = torch.stack(terms).sum()
    grads = torch.autograd.grad(loss, [x, alpha] + ([y] if learned else []), allow_unused=True)
    gx = torch.zeros_like(x) if grads[0] is None else grads[0]
    ga = torch.zeros_like(alpha) if grads[1] is None else grads[1]
    gy = (torch.zeros_like(y) if grads[2] is None else grads[2]) if learned else None
    return MatchResult(loss.detach(), shard.sum(gx), ga, None if gy is None else shard.sum(gy),
                       [t.detach() for t in terms])


def match_exact(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
                problem: Matching, plan: list[InnerStep], shard: Shard = LOCAL,
                autocast: torch.dtype | None = None) -> MatchResult:
    """Exact gradient with memory independent of N (adjoint walk over the inner steps)."""
    _check(problem, len(plan))
    weights = _weights(problem, len(plan))
    x, alpha = images.detach(), lr.detach()
    learned = labels.is_floating_point() and labels.requires_grad
    thetas = [problem.start.detach()]
    for step, weight in zip(plan, weights, strict=True):
        theta = thetas[-1].detach().requires_grad_(True)
        g = shard.sum(_step_grad(net, theta, x, labels.detach(), step, weight, shard, False, autocast))
        thetas.append((theta - alpha * g).detach())

    # dL/dtheta_k for the terms matched after k steps, added to the adjoint as the walk passes step k
    kicks: dict[int, torch.Tensor] = {}
    terms = []
    for n, target in problem.targets:
        theta_n = thetas[n].detach().requires_grad_(True)
        term = normalized_distance(theta_n, problem.anchor, target, problem.mask)
        kicks[n] = kicks.get(n, 0) + torch.autograd.grad(term, theta_n)[0]
        terms.append(term.detach())

    adjoint = kicks.get(len(plan), torch.zeros_like(thetas[0]))
    grad_x = torch.zeros_like(x)
    grad_alpha = torch.zeros_like(alpha)
    xg = x.detach().requires_grad_(True)
    yg = labels.detach().requires_grad_(True) if learned else labels.detach()
    grad_y = torch.zeros_like(yg) if learned else None
    for k in range(len(plan) - 1, -1, -1):
        theta_k = thetas[k].detach().requires_grad_(True)
        g = _step_grad(net, theta_k, xg, yg, plan[k], weights[k], shard, True, autocast)
        gl = torch.dot(g, adjoint)
        leaves = [theta_k, xg] + ([yg] if learned else [])
        grads = torch.autograd.grad(gl, leaves, allow_unused=True)  # the images unused where a rank has none
        hvp = torch.cat([grads[0], gl.detach().view(1)])
        shard.sum(hvp)  # H_k lambda and g_k . lambda over the whole batch, in one collective
        if grads[1] is not None:
            grad_x -= alpha * grads[1]
        if learned and grads[2] is not None:
            grad_y -= alpha * grads[2]
        grad_alpha -= hvp[-1]
        adjoint = adjoint - alpha * hvp[:-1] + kicks.get(k, 0)
    loss = torch.stack(terms).sum()
    return MatchResult(loss, shard.sum(grad_x), grad_alpha, None if grad_y is None else shard.sum(grad_y), terms)


def match(net: FunctionalConvNet, images: torch.Tensor, labels: torch.Tensor, lr: torch.Tensor,
          problem: Matching, plan: list[InnerStep], mode: str = "exact", shard: Shard = LOCAL,
          autocast: torch.dtype | None = None) -> MatchResult:
    """The matching loss and its gradients w.r.t. images, lr and (learned soft) labels, the inner steps run
    under ``autocast`` if given (``arithmetic.autocast_dtype``).

    ``labels`` are class indices, soft-label logits (learned when they require grad) or fixed soft targets.
    """
    if mode == "exact":
        return match_exact(net, images, labels, lr, problem, plan, shard, autocast)
    if mode == "unrolled":
        return match_unrolled(net, images, labels, lr, problem, plan, shard, autocast)
    raise ValueError(f"unknown gradient mode {mode!r}; expected one of {GRAD_MODES}")
