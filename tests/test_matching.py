import pytest
import torch

from challenge_kit.matching import match, normalized_distance, plan_inner_steps
from challenge_kit.models import FunctionalConvNet, ModelConfig


def _problem(dtype=torch.float64, steps=6, batch_syn=5, seed=3):
    torch.manual_seed(0)
    net = FunctionalConvNet(ModelConfig(num_classes=4, image_size=16, width=8, depth=2), dtype=dtype)
    images = torch.randn(12, 3, 16, 16, dtype=dtype)
    labels = torch.arange(4).repeat_interleave(3)
    start = net.init_flat(1)
    target = start + 0.01 * torch.randn_like(start)
    lr = torch.tensor(0.05, dtype=dtype)
    plan = plan_inner_steps(12, batch_syn, steps, 16, "cpu", generator=torch.Generator().manual_seed(seed),
                            aug_generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    return net, images, labels, lr, start, target, plan


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("seed", [3, 11])
def test_exact_gradient_equals_unrolled_in_float64(seed):
    problem = _problem(seed=seed)
    exact = match(*problem, mode="exact")
    unrolled = match(*problem, mode="unrolled")
    assert exact.loss.item() == pytest.approx(unrolled.loss.item(), rel=1e-12)
    assert unrolled.grad_images.abs().sum() > 0
    assert _rel(exact.grad_images, unrolled.grad_images) < 1e-6
    assert _rel(exact.grad_lr, unrolled.grad_lr) < 1e-6


def test_exact_gradient_with_parameter_mask():
    net, images, labels, lr, start, target, plan = _problem(steps=3)
    mask = torch.zeros_like(start, dtype=torch.bool)
    mask[start.numel() // 3:] = True
    exact = match(net, images, labels, lr, start, target, plan, mode="exact", mask=mask)
    unrolled = match(net, images, labels, lr, start, target, plan, mode="unrolled", mask=mask)
    assert _rel(exact.grad_images, unrolled.grad_images) < 1e-6
    full = match(net, images, labels, lr, start, target, plan, mode="exact")
    assert _rel(exact.grad_images, full.grad_images) > 1e-3


def test_gradient_matches_finite_difference_in_lr():
    net, images, labels, lr, start, target, plan = _problem(steps=3)
    res = match(net, images, labels, lr, start, target, plan, mode="exact")
    eps = 1e-6
    up = match(net, images, labels, lr + eps, start, target, plan, mode="unrolled").loss
    down = match(net, images, labels, lr - eps, start, target, plan, mode="unrolled").loss
    numeric = ((up - down) / (2 * eps)).item()
    assert numeric == pytest.approx(res.grad_lr.item(), rel=1e-5, abs=1e-8)


def test_loss_is_normalized_distance_of_the_trained_student():
    net, images, labels, lr, start, target, plan = _problem(steps=0)
    res = match(net, images, labels, lr, start, target, plan, mode="exact")
    assert res.loss.item() == pytest.approx(1.0)
    assert normalized_distance(target, start, target).item() == 0.0
    assert torch.count_nonzero(res.grad_images) == 0


def test_plan_covers_permutation_chunks_and_is_seeded():
    a = plan_inner_steps(10, 4, 5, 16, "cpu", generator=torch.Generator().manual_seed(0),
                         aug_generator=torch.Generator().manual_seed(1))
    b = plan_inner_steps(10, 4, 5, 16, "cpu", generator=torch.Generator().manual_seed(0),
                         aug_generator=torch.Generator().manual_seed(1))
    assert [len(s.indices) for s in a] == [4, 4, 2, 4, 4]
    assert sorted(torch.cat([s.indices for s in a[:3]]).tolist()) == list(range(10))
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s.indices, t.indices) and s.aug.group == t.aug.group
        assert all(torch.equal(s.aug.values[k], t.aug.values[k]) for k in s.aug.values)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="gradient mode"):
        match(*_problem(steps=1), mode="tesla")
