"""The scorer end to end against the official recipe written plainly in ``references.py``: the recipe's published
constants against the kit's, and a kit-seeded round of the official loop (its network built layer by layer, torch's
SGD, DiffAugment's DSA) against ``train_round``, ``train_and_test`` and ``evaluate_images``: the same initial and
final weights bit for bit on the CPU, the same test accuracy, the mean ``evaluate_images`` reports, and the same
scores from the fast scorer's stacked rounds."""

from dataclasses import replace
from itertools import combinations

import pytest
import torch
from references import (
    BATCH,
    BRIGHTNESS,
    CIFAR100_PARAMETERS,
    CONTRAST,
    CROP_RATIO,
    CUTOUT_RATIO,
    DATASETS,
    DROP_EPOCH,
    EPOCHS,
    GROUPS,
    LR,
    LR_DECAY,
    MOMENTUM,
    ROTATE_DEGREES,
    ROUNDS,
    SATURATION,
    SCALE,
    SUBMISSION_SHAPES,
    WEIGHT_DECAY,
    default_label,
    official_convnet,
    official_round,
    official_test,
    round_seed,
)

from challenge_kit.core import augment, contract
from challenge_kit.core.contract import CIFAR100, SPECS, default_labels
from challenge_kit.core.models import ConvNet, ModelConfig, num_parameters
from evaluator import fast, scorer

SPEC = replace(CIFAR100.subset(4, ipc=3), image_size=16)
SHORT = 4  # epochs: the lr drops after epoch index 2 (Epoch // 2 + 1, Epoch = 3), so the last runs at a tenth
SEED = 7  # evaluate_images' rounds are seeded 7000, 7001, 7002


def test_the_kit_holds_the_recipes_published_constants():
    assert (contract.LR, contract.MOMENTUM, contract.WEIGHT_DECAY, contract.BATCH_SIZE) == (
        LR, MOMENTUM, WEIGHT_DECAY, BATCH)
    assert (contract.EPOCHS, contract.ROUNDS, contract.LR_DECAY) == (EPOCHS, ROUNDS, LR_DECAY)
    assert scorer.drop_epoch() == DROP_EPOCH == (EPOCHS - 1) // 2 + 1
    assert scorer.lr_at(0) == scorer.lr_at(DROP_EPOCH) == LR
    assert scorer.lr_at(DROP_EPOCH + 1) == scorer.lr_at(EPOCHS - 1) == pytest.approx(LR * LR_DECAY, rel=1e-15)
    for name, (classes, size, ipc, mean, std) in DATASETS.items():
        spec = SPECS[name]
        assert (spec.num_classes, spec.image_size, spec.ipc, spec.mean, spec.std, spec.channels) == (
            classes, size, ipc, mean, std, 3), name
        assert spec.shape == SUBMISSION_SHAPES[name] and spec.challenge
        assert default_labels(classes, ipc).tolist() == [default_label(i, ipc) for i in range(classes * ipc)]
        kit, official = ConvNet(ModelConfig.for_spec(spec)), official_convnet(classes, size)
        assert str(kit.features) == str(official.features) and str(kit.classifier) == str(official.classifier)
        assert {k: v.shape for k, v in kit.state_dict().items()} == {
            k: v.shape for k, v in official.state_dict().items()}, name
    assert num_parameters(ConvNet(ModelConfig.for_spec(CIFAR100))) == CIFAR100_PARAMETERS
    assert augment.GROUPS == GROUPS
    assert (augment.BRIGHTNESS, augment.SATURATION, augment.CONTRAST, augment.CROP_RATIO, augment.CUTOUT_RATIO,
            augment.SCALE, augment.ROTATE_DEGREES) == (BRIGHTNESS, SATURATION, CONTRAST, CROP_RATIO, CUTOUT_RATIO,
                                                       SCALE, ROTATE_DEGREES)
    for size, shift, side in ((32, 4, 16), (64, 8, 32)):  # the published values at the two image sizes
        assert augment.crop_shift(size) == shift == int(size * CROP_RATIO + 0.5)
        assert augment.cutout_side(size) == side == int(size * CUTOUT_RATIO + 0.5)


@pytest.fixture(scope="module")
def data():
    """Four learnable classes in default order (12 images, one batch) and 120 test images of them."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(SPEC.num_classes, 3, 1, 1, generator=g)
    train_labels = default_labels(SPEC.num_classes, SPEC.ipc)
    test_labels = torch.arange(120) % SPEC.num_classes
    draw = lambda y: centres[y] + 0.8 * torch.randn(len(y), 3, 16, 16, generator=g)  # noqa: E731
    return draw(train_labels), train_labels, draw(test_labels), test_labels


@pytest.fixture(scope="module")
def official(data):
    """Each round seed of ``evaluate_images(seed=SEED)``: the official round's (initial state, trained network)."""
    images, labels, _, _ = data
    return {s: official_round(images, labels, SPEC.num_classes, s, SHORT)
            for s in (round_seed(SEED, r) for r in range(ROUNDS))}


def _same(kit: dict, reference: dict, what: str) -> None:
    assert kit.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(kit[name], value), (
            f"{what}: {name} differs from the official recipe's (max |diff| {(kit[name] - value).abs().max():.3g})")


def test_a_seeded_round_starts_and_ends_where_the_official_recipe_does(data, official):
    images, labels, test_images, test_labels = data
    seed = round_seed(SEED, 1)
    initial, trained = official[seed]
    (start,) = scorer.train_rounds(images, labels, [seed], num_classes=SPEC.num_classes, epochs=0, device="cpu")
    _same(start.state_dict(), initial, "initial weights")
    kit = scorer.train_round(images, labels, num_classes=SPEC.num_classes, epochs=SHORT, seed=seed, device="cpu")
    _same(kit.state_dict(), trained.state_dict(), "trained weights")
    accuracy = scorer.train_and_test(images, labels, test_images, test_labels, num_classes=SPEC.num_classes,
                                     epochs=SHORT, seed=seed, device="cpu")
    assert accuracy == official_test(trained, test_images, test_labels)


def test_evaluate_images_reports_the_official_rounds_and_their_plain_mean(data, official):
    images, _, test_images, test_labels = data
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False)
    rounds = [official_test(net, test_images, test_labels) for _, net in official.values()]
    assert len(set(rounds)) == ROUNDS, f"the rounds must differ for their mean to say anything: {rounds}"
    assert result["seeds"] == list(official)
    assert result["rounds"] == rounds, f"reported rounds {result['rounds']}, the official recipe's {rounds}"
    assert result["mean"] == pytest.approx(sum(rounds) / ROUNDS, abs=1e-12), (
        f"reported mean {result['mean']} is not the plain mean of the rounds {rounds}")


def test_stacked_rounds_score_as_the_official_rounds(data, official, monkeypatch):
    """``DDKIT_STACKED_ROUNDS=2`` (a GPU's fast mode), here in float32 on the CPU: 3 rounds as a pair, then one alone.
    Each scores as its seed's official round, give or take one test image (vmap's batched convolutions round
    differently), and the official rounds lie further apart than that, so a round scored with another's streams
    would show."""
    images, _, test_images, test_labels = data
    monkeypatch.setenv(fast.STACK_ENV, "2")
    monkeypatch.setattr(fast, "native_bfloat16", lambda device: False)
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False, mode=fast.FAST)
    assert result["scorer"] == {"mode": fast.FAST, "precision": "float32", "compiled": False, "stacked": 2}
    rounds = [official_test(net, test_images, test_labels) for _, net in official.values()]
    one = 1 / len(test_labels)
    assert min(abs(a - b) for a, b in combinations(rounds, 2)) > one, f"rounds too close to tell apart: {rounds}"
    assert result["seeds"] == list(official)
    assert result["rounds"] == pytest.approx(rounds, abs=one), f"stacked {result['rounds']}, official {rounds}"


def test_per_class_accuracy_is_each_classs_share_over_the_official_rounds(data, official):
    images, _, test_images, test_labels = data
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False, per_class=True)
    shares = []
    for _, net in official.values():
        with torch.no_grad():
            predicted = net.eval()(test_images).argmax(1)
        shares.append([float((predicted[test_labels == c] == c).double().mean()) for c in range(SPEC.num_classes)])
    assert result["per_class"] == pytest.approx([sum(s[c] for s in shares) / ROUNDS for c in range(SPEC.num_classes)],
                                                abs=1e-6)  # float32 shares
    assert (result["dataset"], result["spec"], result["test_images"], result["epochs"], result["device"]) == (
        SPEC.name, SPEC.to_dict(), 120, SHORT, "cpu")
    assert result["official"] is False and result["scorer"] == {"mode": "faithful", "precision": "float32",
                                                                "compiled": False, "stacked": 1}
