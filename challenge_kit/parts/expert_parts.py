"""How experts are trained: the objective (loss and gradient of one batch) and the data schedule (which real
images each epoch sees). A part with parameters takes them first, or is built from them (``parts.kinds``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from challenge_kit.core.models import FunctionalConvNet
from challenge_kit.parts.catalogue import EasyFirstParams, GsamParams, SmoothParams

# ---------------------------------------------------------------------------------------------- objectives

# Objectives that differentiate the network's own gradient (a double backward, which ``torch.compile``'s graphs do
# not support): the fast arithmetic runs their forward under autocast, not compiled.
SECOND_ORDER = ("smooth",)


def gsam_perturbation(p: torch.Tensor, g: torch.Tensor, rho: float, adaptive: bool = True) -> torch.Tensor:
    """e = rho * g * p^2 / (|| |p| * g || + 1e-12) (adaptive), or rho * g / (||g|| + 1e-12)."""
    if adaptive:
        return rho * g * p * p / ((p.abs() * g).norm() + 1e-12)
    return rho * g / (g.norm() + 1e-12)


def gsam_gradient(g: torch.Tensor, g_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """g_p - alpha * (g - (g . g_p / ||g_p||^2) g_p): the perturbed gradient minus alpha times the part of
    the plain gradient orthogonal to it (GSAM's surrogate-gap term)."""
    parallel = (g @ g_p) / (g_p @ g_p).clamp_min(torch.finfo(g_p.dtype).tiny)
    return g_p - alpha * (g - parallel * g_p)


def _ce_gradient(f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor,
                 y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = p.detach().requires_grad_(True)
    loss = F.cross_entropy(f(q, x), y)
    return loss.detach(), torch.autograd.grad(loss, q)[0]


def sgd(f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
        epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _ce_gradient(f, p, x, y)


def gsam(params: GsamParams, f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
         epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two passes on the same augmented batch: the plain gradient, then the one at the perturbed point."""
    loss, g = _ce_gradient(f, p, x, y)
    _, g_p = _ce_gradient(f, p + gsam_perturbation(p, g, params.rho, params.adaptive), x, y)
    return loss, gsam_gradient(g, g_p, params.alpha)


def clip_coefficient(epoch: int, start: float, epochs: int) -> float:
    """lambda for epoch index ``epoch`` (0-based): linear from ``start`` to 1 over ``epochs``, then 1."""
    if epochs <= 0:
        return 1.0
    return min(1.0, start + (1.0 - start) * epoch / epochs)


def gradient_penalty(out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, target: float) -> torch.Tensor:
    """E[(||d f_y(x) / dx||_2 - K)^2] over the batch, f_y the true-class logit (the model's output for the
    sample, as a WGAN critic's scalar); two-sided, kept differentiable in the parameters."""
    (gx,) = torch.autograd.grad(out.gather(1, y[:, None]).sum(), x, create_graph=True)
    return (gx.flatten(1).norm(dim=1) - target).pow(2).mean()


def smooth(params: SmoothParams, f: FunctionalConvNet, p: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
           epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    q = p.detach().requires_grad_(True)
    xg = x.detach().requires_grad_(True)
    out = f(q, xg)
    ce = F.cross_entropy(out, y)
    loss = clip_coefficient(epoch, params.clip_start, params.clip_epochs) * ce
    if params.gp_weight:
        loss = loss + params.gp_weight * gradient_penalty(out, xg, y, params.gp_target)
    return ce.detach(), torch.autograd.grad(loss, q)[0]


# ---------------------------------------------------------------------------------------------- schedules


class Full:
    difficulty = None

    def indices(self, order: torch.Tensor | None, n: int, epoch: int) -> torch.Tensor | None:
        return None


def easy_first_count(n: int, epoch: int, initial_ratio: float, add_end_epoch: int) -> int:
    """How many of the easiest images epoch ``epoch`` (1-based) trains on: initial_ratio of them in epoch 1,
    growing linearly to all of them in epoch ``add_end_epoch``."""
    first = math.ceil(initial_ratio * n)
    if epoch >= add_end_epoch:
        return n
    return first + (n - first) * (epoch - 1) // max(1, add_end_epoch - 1)


class EasyFirst:
    def __init__(self, params: EasyFirstParams) -> None:
        self.params = params
        self.difficulty = (params.score_models, params.score_epochs)

    def indices(self, order: torch.Tensor, n: int, epoch: int) -> torch.Tensor:
        """``order``: image indices from easiest to hardest."""
        p = self.params
        if epoch > p.add_end_epoch:
            return order[int(p.drop_easy * n):]
        return order[:easy_first_count(n, epoch, p.initial_ratio, p.add_end_epoch)]


def el2n(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Error L2-norm ||softmax(f(x)) - onehot(y)||_2 per image: larger is harder."""
    probs = F.softmax(logits.float(), 1)
    return (probs - F.one_hot(labels, probs.shape[1]).to(probs)).norm(dim=1)
