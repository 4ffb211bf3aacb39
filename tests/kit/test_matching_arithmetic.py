"""The matching's fast arithmetic: inner steps under bfloat16 autocast give the float32 loss and gradients within
what bfloat16's rounding allows, and the recipe word says where it is used."""

import pytest
import torch
import torch.nn.functional as F

from challenge_kit import matching
from challenge_kit.arithmetic import autocast_dtype
from challenge_kit.core.contract import default_labels
from challenge_kit.core.models import FunctionalConvNet, ModelConfig
from challenge_kit.matching import Matching, match, plan_inner_steps
from evaluator.fast import native_bfloat16

CPU = torch.device("cpu")


def test_fast_inner_steps_agree_with_float32_at_the_mini_profiles_shape():
    """The mini profile's network and images (20 classes x 10, 64 px, width 128, depth 3), a student started near
    an init and matched to a snapshot that moved, 3 inner steps of 8 images (the profile runs 8 of 40: fewer keep
    the test at seconds). bfloat16 keeps 8 significant bits, a relative rounding of 2^-9 = 0.2% per value; the
    forward, backward and double backward each round, and the errors of the convolutions' many products partly
    cancel. The issue's rule for using it is an image-gradient cosine of at least 0.99 (bench/RESULTS.md measures
    it over a real run: 0.995 here). The loss, a ratio of float32 distances between float32 parameters, moves only
    by the rounding of the student's steps, lr times a gradient about 1e-2 of the distance (5e-6 relative here):
    1e-4. The image gradient's norm and the lr gradient (a sum over every step and parameter) within 2% (0.07% and
    0.3% here)."""
    g = torch.Generator().manual_seed(0)
    net = FunctionalConvNet(ModelConfig(num_classes=20, image_size=64, width=128, depth=3))
    images = torch.randn(200, 3, 64, 64, generator=g)  # challenge-normalized scale
    labels = default_labels(20, 10)
    anchor = net.init_flat(1)
    start = anchor + 0.001 * torch.randn(anchor.shape, generator=g)
    target = anchor + 0.01 * torch.randn(anchor.shape, generator=g)
    plan = plan_inner_steps(200, 8, 3, 64, CPU, generator=torch.Generator().manual_seed(1),
                            aug_generator=torch.Generator().manual_seed(2))
    lr = torch.tensor(0.01)
    problem = Matching(start, anchor, [(3, target)])
    exact = match(net, images, labels, lr, problem, plan)
    fast = match(net, images, labels, lr, problem, plan, autocast=torch.bfloat16)
    assert {fast.loss.dtype, fast.grad_images.dtype, fast.grad_lr.dtype} == {torch.float32}  # accumulated so
    assert fast.loss.item() == pytest.approx(exact.loss.item(), rel=1e-4)
    assert F.cosine_similarity(fast.grad_images.flatten(), exact.grad_images.flatten(), 0) >= 0.99
    assert fast.grad_images.norm().item() == pytest.approx(exact.grad_images.norm().item(), rel=0.02)
    assert fast.grad_lr.item() == pytest.approx(exact.grad_lr.item(), rel=0.02)
    assert not torch.equal(fast.grad_images, exact.grad_images)  # it did compute in bfloat16


def test_the_fast_word_means_bfloat16_only_where_the_device_computes_it_natively():
    assert autocast_dtype("float32", CPU) is None
    assert autocast_dtype("fast", CPU) == (torch.bfloat16 if native_bfloat16(CPU) else None)
    assert autocast_dtype("fast", torch.device("meta")) is None
    with pytest.raises(ValueError, match="unknown arithmetic 'bf16'"):
        autocast_dtype("bf16", CPU)


@pytest.mark.parametrize("mode", ["exact", "unrolled"])
@pytest.mark.parametrize("autocast", [torch.bfloat16, None])
def test_each_inner_forward_runs_in_the_arithmetic_and_each_inner_loss_in_float32(mode, autocast, monkeypatch):
    """The fast arithmetic reaches every inner step of both gradient modes (the exact one's recomputation too): the
    network's logits come out in bfloat16, and the inner loss (its softmax and sum) sees them back in float32, the
    parameters' dtype, as the fast scorer's loss does. In float32 (None), everything stays float32."""
    forwards, losses = [], []
    inner_loss = matching.inner_loss
    monkeypatch.setattr(matching, "inner_loss", lambda logits, y: losses.append(logits.dtype) or inner_loss(logits, y))
    net = FunctionalConvNet(ModelConfig(num_classes=4, image_size=16, width=8, depth=2))

    def spy(theta, x):
        logits = net(theta, x)
        forwards.append(logits.dtype)
        return logits

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(12, 3, 16, 16, generator=g), default_labels(4, 3)
    anchor = net.init_flat(0)
    target = anchor + 0.01 * torch.randn(anchor.shape, generator=g)
    plan = plan_inner_steps(12, 4, 3, 16, CPU, generator=torch.Generator().manual_seed(1),
                            aug_generator=torch.Generator().manual_seed(2))
    result = match(spy, images, labels, torch.tensor(0.01), Matching(anchor, anchor, [(3, target)]), plan,
                   mode=mode, autocast=autocast)
    assert len(forwards) == len(losses) >= 3 and torch.isfinite(result.grad_images).all()
    assert set(forwards) == {autocast or torch.float32} and set(losses) == {torch.float32}
