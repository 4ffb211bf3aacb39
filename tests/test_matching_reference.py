"""The matching loss and its gradients against MTT's unrolled inner loop written plainly in float64
(``references.mtt_match``): the student a list of parameter tensors on a network the test builds, N SGD steps on the
mean cross-entropy of each step's augmented batch, and ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2
(MTT, DATM); its gradients by autograd through that loop."""

import pytest
import torch
from references import mtt_match, official_convnet

from challenge_kit.core import augment
from challenge_kit.core.contract import default_labels
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.matching import Matching, match, plan_inner_steps

D = torch.float64
CLASSES, IPC, SIZE, WIDTH, DEPTH = 4, 3, 16, 8, 2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("mode", ["exact", "unrolled"])
def test_matching_is_mtts_unrolled_loop(mode):
    g = torch.Generator().manual_seed(0)
    net = FunctionalConvNet(ModelConfig(num_classes=CLASSES, image_size=SIZE, width=WIDTH, depth=DEPTH), dtype=D)
    images = torch.randn(CLASSES * IPC, 3, SIZE, SIZE, generator=g, dtype=D)
    labels = default_labels(CLASSES, IPC)
    start = net.init_flat(1)  # theta*_t
    target = start + 0.01 * torch.randn(start.shape, generator=g, dtype=D)  # theta*_{t+M}
    lr = torch.tensor(0.05, dtype=D)
    # 4 steps in batches of 5 of the 12 images: 5, 5, 2, then a fresh permutation's first 5
    plan = plan_inner_steps(len(images), 5, 4, SIZE, "cpu", generator=torch.Generator().manual_seed(3),
                            aug_generator=torch.Generator().manual_seed(4), dtype=D)
    assert [len(step.indices) for step in plan] == [5, 5, 2, 5]

    # Both sides are fed this one plan (each step's indices and DSA parameters): its draws are the kit's by design
    # (one plan serves both gradient modes and every rank), so what differs can only be the math on them. The plan's
    # parameters are applied by the kit's augment.apply, whose ops test_augment.py and test_scorer_fidelity.py pin
    # against DiffAugment.
    reference = official_convnet(CLASSES, SIZE, width=WIDTH, depth=DEPTH, dtype=D)
    loss, grad_images, grad_lr = mtt_match(reference, images, labels, lr, start, target,
                                           [(step.indices, step.aug) for step in plan], augment.apply)
    kit = match(net, images, labels, lr, Matching(start, start, [(len(plan), target)]), plan, mode=mode)

    assert kit.loss.item() == pytest.approx(loss.item(), rel=1e-12), "matching loss"
    assert _rel(kit.grad_images, grad_images) < 1e-12, f"image gradient off by {_rel(kit.grad_images, grad_images):.3g}"
    assert kit.grad_lr.item() == pytest.approx(grad_lr.item(), rel=1e-12), "lr gradient"
