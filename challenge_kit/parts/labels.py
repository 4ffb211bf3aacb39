"""Label targets: what the student is trained towards in the inner loop, and what a run records as labels.

The challenge scorer only ever trains on default-order hard labels, so ``hard`` is the one part whose sets
export as submissions; the others make research artifacts that export refuses unless the
labels are explicitly dropped.
"""

from __future__ import annotations

import torch

from challenge_kit.core.contract import default_labels
from challenge_kit.core.models import FunctionalConvNet, predict
from challenge_kit.parts.catalogue import AssignedSoftParams, LearnedSoftParams
from challenge_kit.parts.kinds import LabelContext


def logits(net: FunctionalConvNet, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return predict(net.module, lambda x: net(theta, x), images)


def _snapshot(ctx: LabelContext, expert: int, label_epoch: int) -> torch.Tensor:
    epoch = ctx.experts.epochs if label_epoch < 0 else label_epoch
    return ctx.experts.snapshot(expert, epoch).to(ctx.device)


class Hard:
    learned = False
    challenge = True
    sgd: tuple[float, float] | None = None

    def initial(self, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor:
        return default_labels(ctx.spec.num_classes, ctx.spec.ipc, ctx.device)

    def targets(self, labels: torch.Tensor, images: torch.Tensor, net: FunctionalConvNet,
                target: torch.Tensor) -> torch.Tensor:
        return labels

    def record(self, labels: torch.Tensor, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor:
        return labels


class LearnedSoft(Hard):
    learned = True
    challenge = False

    def __init__(self, params: LearnedSoftParams) -> None:
        self.params = params
        self.sgd = (params.lr_labels, params.labels_momentum)

    def initial(self, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor:
        """DATM: per image, the mean logits of the experts that classify it correctly (all experts when none)."""
        truth = default_labels(ctx.spec.num_classes, ctx.spec.ipc, ctx.device)
        wanted = self.params.label_experts
        count = ctx.experts.count if wanted <= 0 else min(wanted, ctx.experts.count)
        total = torch.zeros(len(images), ctx.spec.num_classes, device=ctx.device)
        right_total = torch.zeros_like(total)
        right_count = torch.zeros(len(images), 1, device=ctx.device)
        for e in range(count):
            out = logits(ctx.net, _snapshot(ctx, e, self.params.label_epoch), images)
            right = (out.argmax(1) == truth).unsqueeze(1).to(out.dtype)
            total += out
            right_total += out * right
            right_count += right
        return torch.where(right_count > 0, right_total / right_count.clamp_min(1), total / count)

    def record(self, labels: torch.Tensor, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor:
        return labels.detach()


class AssignedSoft(Hard):
    challenge = False

    def __init__(self, params: AssignedSoftParams) -> None:
        self.params = params

    def targets(self, labels: torch.Tensor, images: torch.Tensor, net: FunctionalConvNet,
                target: torch.Tensor) -> torch.Tensor:
        return logits(net, target, images.detach())

    def record(self, labels: torch.Tensor, images: torch.Tensor, ctx: LabelContext) -> torch.Tensor:
        """What a user would train these images with: the first expert's logits at the label epoch."""
        return logits(ctx.net, _snapshot(ctx, 0, self.params.label_epoch), images.detach())
