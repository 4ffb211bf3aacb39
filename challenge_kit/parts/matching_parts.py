"""Parts of one matching iteration: the parameter mask, per-step inner-loss weights, the matched snapshots and
a perturbation of the start. Each is a pure function of its own parameters (first, when it has any), the run
facts it is given, the expert store and the RNG (call shapes: ``parts.kinds``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from challenge_kit.core.models import FunctionalConvNet
from challenge_kit.parts.catalogue import BalancedParams, DeepParams, FilterNoiseParams


def all_parameters(net: FunctionalConvNet) -> torch.Tensor | None:
    return None


def deep_parameters(params: DeepParams, net: FunctionalConvNet) -> torch.Tensor:
    mask = torch.ones(net.num_params, dtype=torch.bool)
    mask[: int(net.num_params * params.discard_ratio)] = False
    return mask


def uniform(start_epoch: int, steps: int, max_start_epoch: int) -> list[float] | None:
    return None


def balance(start_epoch: int, max_start_epoch: int, offset: float) -> float:
    """nu = log(|t - mid| + offset) for t >= mid, else 1 / log(|mid - t| + offset), with mid = T+ / 2."""
    mid = max_start_epoch / 2
    if start_epoch >= mid:
        return math.log(start_epoch - mid + offset)
    return 1 / math.log(mid - start_epoch + offset)


def balanced(params: BalancedParams, start_epoch: int, steps: int, max_start_epoch: int) -> list[float]:
    return [balance(start_epoch, max_start_epoch, params.balance_offset)] * steps


def intermediate_steps(steps: int, expert_epochs: int) -> list[int]:
    """n_i = floor(i * N / M) for i = 1..M-1: where the student should be at the expert's i-th epoch."""
    return [i * steps // expert_epochs for i in range(1, expert_epochs)]


def final(experts: Any, expert: int, start_epoch: int, steps: int,
          expert_epochs: int) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    rows = experts.snapshots(expert, [start_epoch, start_epoch + expert_epochs])
    return rows[0], [(steps, rows[1])]


def intermediate(experts: Any, expert: int, start_epoch: int, steps: int,
                 expert_epochs: int) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]]]:
    rows = experts.snapshots(expert, list(range(start_epoch, start_epoch + expert_epochs + 1)))
    after = intermediate_steps(steps, expert_epochs) + [steps]
    return rows[0], [(n, rows[i]) for i, n in enumerate(after, 1)]


def no_perturbation(start: torch.Tensor, net: FunctionalConvNet, generator: torch.Generator) -> torch.Tensor:
    return start


def filter_noise(start: torch.Tensor, net: FunctionalConvNet, generator: torch.Generator,
                 scale: float) -> torch.Tensor:
    """Gaussian noise per filter (each output row of a weight of 2+ dims), rescaled to ``scale`` times that
    filter's norm; biases and norm parameters are left alone (filter-wise normalization)."""
    out = start.clone()
    offset = 0
    for _, shape in net.shapes:
        n = shape.numel()
        if len(shape) >= 2:
            w = start[offset:offset + n].view(shape[0], -1)
            d = torch.randn(w.shape, generator=generator, dtype=torch.float64).to(w)
            d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12) * w.norm(dim=1, keepdim=True) * scale
            out[offset:offset + n] += d.flatten()
        offset += n
    return out


def perturb_filters(params: FilterNoiseParams, start: torch.Tensor, net: FunctionalConvNet,
                    generator: torch.Generator) -> torch.Tensor:
    return filter_noise(start, net, generator, params.perturb_scale)
