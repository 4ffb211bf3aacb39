"""The matching loss and its gradients against MTT's unrolled inner loop written plainly in float64
(``references.mtt_match``): the student a list of parameter tensors on a network the test builds, N SGD steps on the
mean cross-entropy of each step's augmented batch, and ||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2
(MTT, DATM); its gradients by autograd through that loop."""

import pytest
import torch
from references import mtt_match, official_convnet, trajectory_match

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


def _problem(labels_kind: str):
    """12 images in steps of 11, 1, 11 (the second step one image), a perturbed start, and labels of a kind."""
    g = torch.Generator().manual_seed(1)
    net = FunctionalConvNet(ModelConfig(num_classes=CLASSES, image_size=SIZE, width=WIDTH, depth=DEPTH), dtype=D)
    images = torch.randn(CLASSES * IPC, 3, SIZE, SIZE, generator=g, dtype=D)
    labels = default_labels(CLASSES, IPC)
    if labels_kind != "hard":  # logits whose softmax is the target; DATM learns them
        labels = torch.randn(len(labels), CLASSES, generator=g, dtype=D).requires_grad_(labels_kind == "learned soft")
    anchor = net.init_flat(2)
    start = anchor + 0.001 * torch.randn(anchor.shape, generator=g, dtype=D)
    snapshots = [anchor + 0.01 * torch.randn(anchor.shape, generator=g, dtype=D) for _ in range(4)]
    plan = plan_inner_steps(len(images), 11, 3, SIZE, "cpu", generator=torch.Generator().manual_seed(5),
                            aug_generator=torch.Generator().manual_seed(6), dtype=D)
    assert [len(step.indices) for step in plan] == [11, 1, 11]
    assert all(v.dtype in (D, torch.bool, torch.long) for step in plan for v in step.aug.values.values())
    return net, images, labels, torch.tensor(0.05, dtype=D), anchor, start, snapshots, plan


@pytest.mark.parametrize("labels_kind", ["hard", "fixed soft", "learned soft"])
@pytest.mark.parametrize("mode", ["exact", "unrolled"])
def test_targets_at_any_step_and_step_weights_sum_as_the_papers_define_them(mode, labels_kind):
    """Intermediate targets (one at the start, two after the same step, none after the last), the balanced loss's
    step weights and soft labels, fixed or learned: the loss, each term and every gradient as the plain loop gives."""
    net, images, labels, lr, anchor, start, snapshots, plan = _problem(labels_kind)
    targets = [(0, snapshots[0]), (1, snapshots[1]), (1, snapshots[2]), (2, snapshots[3])]
    weights = [0.5, 2.0, 1.5]
    reference = trajectory_match(official_convnet(CLASSES, SIZE, width=WIDTH, depth=DEPTH, dtype=D), images, labels,
                                 lr, start, anchor, targets, [(step.indices, step.aug) for step in plan],
                                 augment.apply, weights)
    kit = match(net, images, labels, lr, Matching(start, anchor, targets, weights=weights), plan, mode=mode)

    assert kit.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12), "matching loss"
    assert [t.item() for t in kit.terms] == pytest.approx([t.item() for t in reference.terms], rel=1e-12), "terms"
    assert _rel(kit.grad_images, reference.grad_images) < 1e-12, "image gradient"
    assert kit.grad_lr.item() == pytest.approx(reference.grad_lr.item(), rel=1e-12), "lr gradient"
    if reference.grad_labels is None:
        assert kit.grad_labels is None, "labels that do not require grad are not learned"
    else:
        assert _rel(kit.grad_labels, reference.grad_labels) < 1e-12, "label gradient"


@pytest.mark.parametrize("labels_kind", ["hard", "learned soft"])
@pytest.mark.parametrize("mode", ["exact", "unrolled"])
def test_a_target_at_the_start_alone_has_zero_gradients(mode, labels_kind):
    net, images, labels, lr, anchor, start, snapshots, plan = _problem(labels_kind)
    kit = match(net, images, labels, lr, Matching(start, anchor, [(0, snapshots[0])]), plan, mode=mode)
    reference = trajectory_match(official_convnet(CLASSES, SIZE, width=WIDTH, depth=DEPTH, dtype=D), images, labels,
                                 lr, start, anchor, [(0, snapshots[0])], [(s.indices, s.aug) for s in plan],
                                 augment.apply)
    assert kit.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12) and reference.loss > 0
    assert torch.equal(kit.grad_images, torch.zeros_like(images)) and kit.grad_lr.item() == 0.0
    if labels_kind == "learned soft":
        assert torch.equal(kit.grad_labels, torch.zeros_like(labels))


@pytest.mark.parametrize("mode", ["exact", "unrolled"])
def test_a_parameter_mask_counts_only_its_entries_in_every_term_the_start_too(mode):
    """PAD's parameter selection: every term, the one at the start included, measures only the masked entries (here
    every third parameter value), as the plain loop's distance does."""
    net, images, labels, lr, anchor, start, snapshots, plan = _problem("hard")
    mask = torch.arange(anchor.numel()) % 3 == 0
    targets = [(0, snapshots[0]), (2, snapshots[1]), (3, snapshots[2])]
    reference = trajectory_match(official_convnet(CLASSES, SIZE, width=WIDTH, depth=DEPTH, dtype=D), images, labels,
                                 lr, start, anchor, targets, [(step.indices, step.aug) for step in plan],
                                 augment.apply, mask=mask)
    kit = match(net, images, labels, lr, Matching(start, anchor, targets, mask=mask), plan, mode=mode)
    assert [t.item() for t in kit.terms] == pytest.approx([t.item() for t in reference.terms], rel=1e-12), "terms"
    assert kit.loss.item() == pytest.approx(reference.loss.item(), rel=1e-12), "matching loss"
    assert _rel(kit.grad_images, reference.grad_images) < 1e-12, "image gradient"
    assert kit.grad_lr.item() == pytest.approx(reference.grad_lr.item(), rel=1e-12), "lr gradient"
