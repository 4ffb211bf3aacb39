"""The kit's device paths, run on ``$DDKIT_TEST_DEVICE`` (default cpu): ``bench/gpu_acceptance.py`` runs these on
CUDA, so the first GPU run meets what is truly CUDA's, not a wrong device in the kit's own code. Each result is held
to a plain reference computed on the CPU (``references.py``): MTT's loop in float64, DiffAugment, the official scorer
loop drawing from a generator on the device; so on the default CPU they can fail too."""

import os
from dataclasses import replace

import pytest
import torch
from references import GROUPS, mtt_match, official_convnet, official_dsa, official_round

from challenge_kit.core import augment
from challenge_kit.core.contract import CIFAR100, default_labels
from challenge_kit.core.models import ConvNet, FunctionalConvNet, ModelConfig, predict
from challenge_kit.core.verify import verify_tensor
from challenge_kit.experts.training import train_epoch
from challenge_kit.matching import Matching, match, plan_inner_steps
from challenge_kit.recipes import ExpertConfig
from evaluator import scorer
from evaluator.fast import FAST, Arithmetic
from evaluator.scorer import train_rounds

pytestmark = pytest.mark.device
SPEC = replace(CIFAR100.subset(3, ipc=4), image_size=16)


@pytest.fixture
def device(monkeypatch) -> torch.device:
    """The device; TF32 convolutions off, so that what a comparison with the CPU meets is float32's rounding."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    dev = torch.device(os.environ.get("DDKIT_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("platform: DDKIT_TEST_DEVICE names cuda and there is none")
    return dev


def _trained_as(kit: torch.nn.Module, reference: torch.nn.Module, device: torch.device, bitwise: bool) -> None:
    """A network the kit trained on ``device`` against the reference's: bit for bit, or to float32 rounding."""
    expected = reference.state_dict()
    for name, value in kit.state_dict().items():
        assert value.device.type == device.type
        if bitwise:
            assert torch.equal(value.cpu(), expected[name]), f"{name} differs from the official recipe's"
        else:
            torch.testing.assert_close(value.cpu(), expected[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, name=name: f"{name}: {m}")


def _problem(net: FunctionalConvNet, device: torch.device, steps: int) -> tuple:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(SPEC.shape, generator=gen).to(device)
    start = net.init_flat(0)
    target = start + 0.01 * torch.randn(start.shape, generator=gen).to(device)
    plan = plan_inner_steps(SPEC.num_images, 6, steps, SPEC.image_size, device, generator=gen,
                            aug_generator=torch.Generator(device=device).manual_seed(1))
    return images, Matching(start, start, [(steps, target)]), plan


def test_both_gradients_are_mtts_loop_in_float64_on_the_cpu(device):
    net = FunctionalConvNet(ModelConfig.for_spec(SPEC), device=device)
    images, problem, plan = _problem(net, device, 3)
    labels, lr = default_labels(SPEC.num_classes, SPEC.ipc, device), torch.tensor(0.01, device=device)
    # the plan's own draws, on the CPU, applied by augment.apply (test_augment.py pins it against DiffAugment)
    steps = [(step.indices.cpu(), step.aug.to("cpu")) for step in plan]
    reference = official_convnet(SPEC.num_classes, SPEC.image_size, dtype=torch.float64)
    d = lambda t: t.detach().cpu().double()  # noqa: E731
    loss, grad_images, grad_lr = mtt_match(reference, d(images), labels.cpu(), d(lr), d(problem.start),
                                           d(problem.targets[0][1]), steps, augment.apply)
    for mode in ("exact", "unrolled"):
        kit = match(net, images, labels, lr, problem, plan, mode)
        assert kit.grad_images.device.type == device.type
        assert kit.loss.item() == pytest.approx(loss.item(), rel=1e-5), mode
        error = ((d(kit.grad_images) - grad_images).norm() / grad_images.norm()).item()
        assert error < 1e-4, f"{mode}: image gradient {error:.3g} from float64's"
        assert kit.grad_lr.item() == pytest.approx(grad_lr.item(), rel=1e-4), mode


def test_augmentation_on_the_device_is_diffaugment_on_the_cpu(device):
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    used = set()
    for seed in range(50):
        draws = torch.Generator().manual_seed(seed)  # group, then parameters, from one stream: DiffAugment's order
        params = augment.sample(8, 16, "cpu", generator=draws, group_generator=draws)
        expected = official_dsa(x, torch.Generator().manual_seed(seed), used)
        torch.testing.assert_close(augment.apply(x.to(device), params.to(device)).cpu(), expected, rtol=1e-5,
                                   atol=1e-5, msg=lambda m, group=params.group: f"{group}: {m}")
        if used == set(GROUPS):
            break
    assert used == set(GROUPS)


def test_a_seeded_scorer_round_on_the_device_repeats_and_is_the_official_loop(device):
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0))
    labels = default_labels(SPEC.num_classes, SPEC.ipc)
    nets = [train_rounds(images, labels, [5], num_classes=SPEC.num_classes, epochs=3, device=device)[0]
            for _ in range(2)]
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    reference = official_round(images, labels, SPEC.num_classes, 5, 3, device)[1]
    _trained_as(nets[0], reference, device, bitwise=device.type == "cpu")
    with torch.no_grad():  # the test pass on the device, from images on the CPU: the reference's count, or one off
        right = int((reference.cpu().eval()(images).argmax(1) == labels).sum())
    off = 0 if device.type == "cpu" else 1
    assert abs(round(scorer.test_accuracy(nets[0], images, labels, batch_size=5) * len(labels)) - right) <= off


def test_an_expert_epoch_runs_on_the_device(device):
    net = FunctionalConvNet(ModelConfig.for_spec(SPEC), device=device)
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0)).to(device)
    labels = default_labels(SPEC.num_classes, SPEC.ipc, device)
    p, _, loss = train_epoch(net, net.init_flat(0), None, images, labels, ExpertConfig(batch_size=4),
                             torch.Generator().manual_seed(0))
    assert p.device.type == device.type and torch.isfinite(p).all() and loss > 0


def test_stacked_rounds_train_as_the_official_loop_on_the_device(device):
    """The fast scorer's stacked path (several rounds in one vmap) trains every round as the official loop does with
    that round's own streams (the batched convolutions round differently: within 1e-5, not bit for bit)."""
    images = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0))
    labels = default_labels(SPEC.num_classes, SPEC.ipc)
    how = Arithmetic(FAST, "float32", False, stacked=3)
    together = train_rounds(images, labels, [5, 6, 7], num_classes=SPEC.num_classes, epochs=3, device=device,
                            how=how)
    for seed, net in zip([5, 6, 7], together, strict=True):
        _trained_as(net, official_round(images, labels, SPEC.num_classes, seed, 3, device)[1], device, bitwise=False)


def test_predicting_a_cpu_pool_on_the_device_returns_cpu_logits_of_each_batch(device):
    """``predict`` with a device moves each batch there as float32 and the logits back to the pool's device: the
    same logits as the network run on the CPU over the whole pool at once."""
    torch.manual_seed(0)
    net = ConvNet(ModelConfig.for_spec(SPEC))
    pool = torch.randn(SPEC.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        expected = net.eval()(pool.float())
    net.train().to(device)
    logits = predict(net, net, pool, device, batch_size=5)
    assert logits.device == pool.device and logits.dtype == torch.float32 and net.training
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_a_set_on_the_device_is_verified_as_on_the_cpu(device):
    """``verify_tensor`` of images that still sit on the device (a distillation's, before export) reports the same
    checks, reasons and numbers as for the same images on the CPU."""
    pixels = torch.rand(SPEC.shape, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(SPEC.mean).view(1, -1, 1, 1), torch.tensor(SPEC.std).view(1, -1, 1, 1)
    images = (pixels - mean) / std
    on_cpu = verify_tensor(images, SPEC, default_labels(SPEC.num_classes, SPEC.ipc))
    on_device = verify_tensor(images.to(device), SPEC, default_labels(SPEC.num_classes, SPEC.ipc, device))
    assert on_cpu.check("normalization").status == "PASS" and on_device.to_dict() == on_cpu.to_dict()
