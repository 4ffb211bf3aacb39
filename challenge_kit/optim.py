"""The optimizer step shared by expert training and distillation, as a pure function of flat tensors."""

from __future__ import annotations

import torch


def sgd_step(p: torch.Tensor, grad: torch.Tensor, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
             buf: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch.optim.SGD's update (no dampening, no Nesterov) on a flat vector; returns (p, momentum buffer)."""
    if weight_decay:
        grad = grad + weight_decay * p
    if momentum:
        buf = grad.clone() if buf is None else buf * momentum + grad
        grad = buf
    return p - lr * grad, buf
