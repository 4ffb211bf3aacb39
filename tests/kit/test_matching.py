"""The matching math: exact adjoint vs unrolled autograd in float64 for every leaf (images, lr, learned soft
labels) and every method term (masks, per-step weights, intermediate targets), plus finite differences."""

import pytest
import torch
from helpers import D, _problem

from challenge_kit.matching import Matching, inner_loss, match, normalized_distance, plan_inner_steps


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _agree(problem, labels_too=False):
    exact, unrolled = match(*problem, mode="exact"), match(*problem, mode="unrolled")
    assert exact.loss.item() == pytest.approx(unrolled.loss.item(), rel=1e-12)
    assert unrolled.grad_images.abs().sum() > 0
    assert _rel(exact.grad_images, unrolled.grad_images) < 1e-6
    assert _rel(exact.grad_lr, unrolled.grad_lr) < 1e-6
    if labels_too:
        assert unrolled.grad_labels.abs().sum() > 0
        assert _rel(exact.grad_labels, unrolled.grad_labels) < 1e-6
    return exact


@pytest.mark.parametrize("seed", [3, 11])
def test_exact_gradient_equals_unrolled_in_float64(seed):
    _agree(_problem(seed=seed))


def test_exact_gradient_with_learned_soft_labels_equals_unrolled_for_all_three_leaves():
    exact = _agree(_problem(soft=True), labels_too=True)
    assert exact.grad_labels.shape == (12, 4)


def test_exact_gradient_with_parameter_mask():
    net, images, labels, lr, problem, plan = _problem(steps=3)
    mask = torch.zeros_like(problem.start, dtype=torch.bool)
    mask[problem.start.numel() // 3:] = True
    masked = Matching(problem.start, problem.anchor, problem.targets, mask=mask)
    exact = _agree((net, images, labels, lr, masked, plan))
    full = match(net, images, labels, lr, problem, plan, mode="exact")
    assert _rel(exact.grad_images, full.grad_images) > 1e-3


def test_intermediate_targets_and_step_weights_are_exact_and_change_the_gradient():
    net, images, labels, lr, problem, plan = _problem(steps=6)
    middle = problem.start + 0.004 * torch.randn_like(problem.start)
    richer = Matching(problem.start, problem.anchor, [(3, middle), *problem.targets],
                      weights=[0.5, 0.5, 2.0, 2.0, 1.0, 1.5])
    exact = _agree((net, images, labels, lr, richer, plan))
    assert len(exact.terms) == 2
    assert exact.loss.item() == pytest.approx(sum(t.item() for t in exact.terms))
    plain = match(net, images, labels, lr, problem, plan, mode="exact")
    assert _rel(exact.grad_images, plain.grad_images) > 1e-3


def test_perturbed_start_is_normalized_by_the_anchor():
    net, images, labels, lr, problem, plan = _problem(steps=0)
    moved = problem.start + 0.002 * torch.randn_like(problem.start)
    res = match(net, images, labels, lr, Matching(moved, problem.anchor, problem.targets), plan)
    target = problem.targets[0][1]
    expected = (moved - target).pow(2).sum() / (problem.anchor - target).pow(2).sum()
    assert res.loss.item() == pytest.approx(expected.item())


def test_gradient_matches_finite_difference_in_lr_and_a_soft_label():
    net, images, labels, lr, problem, plan = _problem(steps=3, soft=True)
    res = match(net, images, labels, lr, problem, plan, mode="exact")
    eps = 1e-6

    def loss(lr_=lr, labels_=labels):
        return match(net, images, labels_.detach(), lr_, problem, plan, mode="unrolled").loss.item()

    assert (loss(lr + eps) - loss(lr - eps)) / (2 * eps) == pytest.approx(res.grad_lr.item(), rel=1e-5, abs=1e-8)
    bump = torch.zeros_like(labels)
    bump[5, 2] = eps
    numeric = (loss(labels_=labels + bump) - loss(labels_=labels - bump)) / (2 * eps)
    assert numeric == pytest.approx(res.grad_labels[5, 2].item(), rel=1e-5, abs=1e-9)


def test_soft_cross_entropy_is_datm_soft_ce_and_hard_labels_are_plain_ce():
    logits = torch.randn(5, 4, dtype=D)
    targets = torch.randn(5, 4, dtype=D)
    expected = sum(-(torch.log_softmax(logits[i], 0) * torch.softmax(targets[i], 0)).sum() for i in range(5))
    assert inner_loss(logits, targets).item() == pytest.approx(expected.item())
    hard = torch.tensor([0, 3, 1, 1, 2])
    assert inner_loss(logits, hard).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, hard, reduction="sum").item())


def test_loss_is_normalized_distance_of_the_trained_student():
    net, images, labels, lr, problem, plan = _problem(steps=0)
    res = match(net, images, labels, lr, problem, plan, mode="exact")
    assert res.loss.item() == pytest.approx(1.0)
    target = problem.targets[0][1]
    assert normalized_distance(target, problem.start, target).item() == 0.0
    assert torch.count_nonzero(res.grad_images) == 0


def test_targets_outside_the_inner_loop_are_refused():
    net, images, labels, lr, problem, plan = _problem(steps=2)
    with pytest.raises(ValueError, match="targets"):
        match(net, images, labels, lr, Matching(problem.start, problem.anchor, [(3, problem.start)]), plan)
    with pytest.raises(ValueError, match="^1 inner-loss weights for 2 steps$"):
        match(net, images, labels, lr, Matching(problem.start, problem.anchor, [(2, problem.start)], weights=[1.0]),
              plan)


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
