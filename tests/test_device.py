"""The kit's device paths, run on ``$DDKIT_TEST_DEVICE`` (default cpu): ``bench/gpu_acceptance.py`` runs these on
CUDA, so the first GPU run meets what is truly CUDA's, not a wrong device in the kit's own code."""

import os
from dataclasses import replace

import pytest
import torch

from challenge_kit.core import augment
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.experts.training import train_epoch
from challenge_kit.matching import Matching, match, plan_inner_steps
from challenge_kit.recipes import ExpertConfig
from evaluator.fast import FAST, Arithmetic
from evaluator.scorer import train_round, train_rounds

pytestmark = pytest.mark.device
SPEC = replace(CIFAR100.subset(3, ipc=4), image_size=16)


@pytest.fixture
def device() -> torch.device:
    dev = torch.device(os.environ.get("DDKIT_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("platform: DDKIT_TEST_DEVICE names cuda and there is none")
    return dev


def _problem(net: FunctionalConvNet, device: torch.device, steps: int) -> tuple:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(SPEC.shape, generator=gen).to(device)
    start = net.init_flat(0)
    target = start + 0.01 * torch.randn(start.shape, generator=gen).to(device)
    plan = plan_inner_steps(SPEC.num_images, 6, steps, SPEC.image_size, device, generator=gen,
                            aug_generator=torch.Generator(device=device).manual_seed(1))
    return images, Matching(start, start, [(steps, target)]), plan


def test_both_gradients_agree_on_the_device(device):
    net = FunctionalConvNet(ModelConfig.for_spec(SPEC), device=device)
    images, problem, plan = _problem(net, device, 3)
    labels, lr = default_labels(SPEC.num_classes, SPEC.ipc, device), torch.tensor(0.01, device=device)
    exact, unrolled = (match(net, images, labels, lr, problem, plan, mode) for mode in ("exact", "unrolled"))
    assert exact.grad_images.device.type == device.type
    torch.testing.assert_close(exact.grad_images, unrolled.grad_images, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(exact.grad_lr, unrolled.grad_lr, rtol=1e-3, atol=1e-6)


def test_augmentation_on_the_device_is_the_cpu_one(device):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for group in augment.GROUPS:
        params = augment.sample(8, 16, "cpu", group=group, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(augment.apply(x.to(device), params.to(device)).cpu(), augment.apply(x, params),
                                   rtol=1e-4, atol=1e-5)


def test_a_seeded_scorer_round_repeats_on_the_device(device):
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0))
    labels = default_labels(SPEC.num_classes, SPEC.ipc)
    nets = [train_round(images, labels, num_classes=SPEC.num_classes, epochs=3, seed=5, device=device)
            for _ in range(2)]
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert a.device.type == device.type and torch.equal(a, b)


def test_an_expert_epoch_runs_on_the_device(device):
    net = FunctionalConvNet(ModelConfig.for_spec(SPEC), device=device)
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = default_labels(SPEC.num_classes, SPEC.ipc, device)
    p, _, loss = train_epoch(net, net.init_flat(0), None, images, labels, ExpertConfig(batch_size=4),
                             torch.Generator().manual_seed(0))
    assert p.device.type == device.type and torch.isfinite(p).all() and loss > 0


def test_stacked_rounds_train_as_each_would_alone_on_the_device(device):
    """The fast scorer's stacked path (several rounds in one vmap) keeps every round's own streams."""
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0))
    labels = default_labels(SPEC.num_classes, SPEC.ipc)
    how = Arithmetic(FAST, "float32", False, stacked=3)
    together = train_rounds(images, labels, [5, 6, 7], num_classes=SPEC.num_classes, epochs=3, device=device,
                            how=how)
    for seed, net in zip([5, 6, 7], together, strict=True):
        alone = train_round(images, labels, num_classes=SPEC.num_classes, epochs=3, seed=seed, device=device)
        for a, b in zip(alone.parameters(), net.parameters(), strict=True):
            assert b.device.type == device.type
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
