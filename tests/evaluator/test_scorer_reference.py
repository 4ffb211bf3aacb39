"""The scorer end to end against the official recipe written plainly in ``references.py``: the recipe's published
constants against the kit's, and a kit-seeded round of the official loop (its network built layer by layer, torch's
SGD, DiffAugment's DSA) against ``train_rounds``, ``train`` and ``evaluate_images``: the same initial and
final weights bit for bit on the CPU, the same test accuracy, the mean ``evaluate_images`` reports, and the same
scores from the fast scorer's stacked rounds."""

import copy
import io
import re
import threading
import time
from dataclasses import dataclass, replace
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
    round_streams,
)
from rich.console import Console
from rich.progress import Progress

from challenge_kit.core import augment, contract
from challenge_kit.core.contract import CIFAR100, SPECS, default_labels
from challenge_kit.core.models import ConvNet, ModelConfig, num_parameters
from challenge_kit.core.parallel import Shard
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
    (kit,) = scorer.train_rounds(images, labels, [seed], num_classes=SPEC.num_classes, epochs=SHORT, device="cpu")
    _same(kit.state_dict(), trained.state_dict(), "trained weights")
    expected = official_test(trained, test_images, test_labels)
    assert scorer.test_accuracy(kit, test_images, test_labels) == expected
    assert scorer.test_accuracy(kit, test_images, test_labels, batch_size=7) == expected  # many batches, one count


def test_a_fresh_round_driven_by_hand_trains_as_the_official_round(data, official):
    """``fresh_round`` hands a caller the round's network and streams (to look between epochs): driving ``train``
    with them gives the official round's weights; another network is built by its name, from the same stream."""
    images, labels, _, _ = data
    seed = round_seed(SEED, 2)
    config = ModelConfig(num_classes=SPEC.num_classes, image_size=SPEC.image_size)
    net, (generator, group_generator) = scorer.fresh_round(config, seed, torch.device("cpu"))
    _same(net.state_dict(), official[seed][0], "initial weights")
    scorer.train(net, images, labels, epochs=SHORT, generator=generator, group_generator=group_generator)
    _same(net.state_dict(), official[seed][1].state_dict(), "trained weights")
    narrow, _ = scorer.fresh_round(config, seed, torch.device("cpu"), "convnet-w64")
    assert narrow.features[0].out_channels == 64 and narrow.classifier.in_features == 64 * 2 * 2


def test_other_networks_train_by_name_and_batch_norm_ones_one_at_a_time(data):
    """``arch`` builds the named network; a network with running statistics (batch norm) is never stacked: asked to
    stack two rounds, each trains exactly as it does alone."""
    images, labels, _, _ = data
    seeds = [round_seed(SEED, r) for r in range(2)]
    (wide,) = scorer.train_rounds(images, labels, seeds[:1], num_classes=SPEC.num_classes, epochs=1, device="cpu",
                                  arch="convnet-w64")
    assert wide.features[0].out_channels == 64
    pair = fast.Arithmetic(fast.FAST, "float32", False, stacked=2)
    together = scorer.train_rounds(images, labels, seeds, num_classes=SPEC.num_classes, epochs=2, device="cpu",
                                   how=pair, arch="convnet-bn")
    for seed, net in zip(seeds, together, strict=True):
        (alone,) = scorer.train_rounds(images, labels, [seed], num_classes=SPEC.num_classes, epochs=2, device="cpu",
                                       arch="convnet-bn")
        _same(net.state_dict(), alone.state_dict(), f"round {seed} of a batch-norm pair")


def test_evaluate_images_reports_the_official_rounds_and_their_plain_mean(data, official):
    images, _, test_images, test_labels = data
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False)
    rounds = [official_test(net, test_images, test_labels) for _, net in official.values()]
    assert len(set(rounds)) == ROUNDS, f"the rounds must differ for their mean to say anything: {rounds}"
    assert result.seeds == list(official)
    assert result.rounds == rounds, f"reported rounds {result.rounds}, the official recipe's {rounds}"
    assert result.mean == pytest.approx(sum(rounds) / ROUNDS, abs=1e-12), (
        f"reported mean {result.mean} is not the plain mean of the rounds {rounds}")


def test_stacked_rounds_score_as_the_official_rounds(data, official, monkeypatch):
    """``DDKIT_STACKED_ROUNDS=2`` (a GPU's fast mode), here in float32 on the CPU: 3 rounds as a pair, then one alone.
    Each scores as its seed's official round, give or take one test image (vmap's batched convolutions round
    differently), and the official rounds lie further apart than that, so a round scored with another's streams
    would show."""
    images, _, test_images, test_labels = data
    monkeypatch.setenv(fast.STACK_ENV, "2")
    monkeypatch.setattr(fast, "native_bfloat16", lambda device: False)
    result, bar = _scored_with_a_bar(monkeypatch, data, how=fast.arithmetic(fast.FAST, torch.device("cpu")))
    assert result.to_dict()["scorer"] == {"mode": fast.FAST, "precision": "float32", "compiled": False, "stacked": 2}
    (task,) = bar.tasks  # each round trained once: the pair, then the third
    assert (task.total, task.completed) == (ROUNDS * SHORT, ROUNDS * SHORT)
    assert [s[:s.index(" test acc")] for s in bar.statuses if "test acc" in s] == ["round 1-2/3", "round 3/3"]
    rounds = [official_test(net, test_images, test_labels) for _, net in official.values()]
    one = 1 / len(test_labels)
    assert min(abs(a - b) for a, b in combinations(rounds, 2)) > one, f"rounds too close to tell apart: {rounds}"
    assert result.seeds == list(official)
    assert result.rounds == pytest.approx(rounds, abs=one), f"stacked {result.rounds}, official {rounds}"


def test_a_stack_of_three_rounds_is_named_by_its_first_and_last(data, monkeypatch):
    monkeypatch.setenv(fast.STACK_ENV, "3")
    monkeypatch.setattr(fast, "native_bfloat16", lambda device: False)
    _, bar = _scored_with_a_bar(monkeypatch, data, how=fast.arithmetic(fast.FAST, torch.device("cpu")))
    assert [s[:s.index(" test acc")] for s in bar.statuses if "test acc" in s] == ["round 1-3/3"]


def test_per_class_accuracy_is_each_classs_share_over_the_official_rounds(data, official):
    images, _, test_images, test_labels = data
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False, per_class=True)
    shares = []
    for _, net in official.values():
        with torch.no_grad():
            predicted = net.eval()(test_images).argmax(1)
        shares.append([float((predicted[test_labels == c] == c).double().mean()) for c in range(SPEC.num_classes)])
    assert result.per_class == pytest.approx([sum(s[c] for s in shares) / ROUNDS for c in range(SPEC.num_classes)],
                                                abs=1e-6)  # float32 shares
    record = result.to_dict()  # scores.json's per-dataset keys, as docs/scorer.md lists them
    assert list(record) == ["dataset", "mean", "rounds", "epochs", "seeds", "device", "official", "scorer", "spec",
                            "test_images", "seconds", "per_class"]
    assert (record["dataset"], record["spec"], record["test_images"], record["epochs"], record["device"]) == (
        SPEC.name, SPEC.to_dict(), 120, SHORT, "cpu")
    assert record["official"] is False and record["scorer"] == {"mode": "faithful", "precision": "float32",
                                                                "compiled": False, "stacked": 1}
    assert (record["mean"], record["rounds"], record["seeds"], record["per_class"]) == (
        result.mean, result.rounds, result.seeds, result.per_class)


@pytest.fixture
def gpu_default(monkeypatch):
    """A machine whose default device would be a GPU: a device named by the caller (the CPU here) must be the one
    used, all the way down (a dropped ``device`` would reach for CUDA and fail)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _progress(calls: list):
    return lambda epoch, loss, acc: calls.append((epoch, loss, acc))


def _as_recorded(calls: list, record: list) -> None:
    """The kit's per-epoch progress (index, mean loss, accuracy on the augmented batches) is the reference's."""
    assert [c[0] for c in calls] == [r[0] for r in record] == list(range(SHORT))
    assert [c[1:] for c in calls] == [pytest.approx(r[1:], rel=1e-5) for r in record]


def test_every_entry_point_passes_on_its_lr_batch_size_device_and_progress(data, gpu_default):
    """Not the recipe's lr and batch (0.05, batches of 5, 5 and 2): each entry point must hand them to the loop."""
    images, labels, test_images, test_labels = data
    lr, batch, seed = 0.05, 5, 11
    record = []
    initial, reference = official_round(images, labels, SPEC.num_classes, seed, SHORT, lr=lr, batch=batch,
                                        record=record)
    calls = []
    (kit,) = scorer.train_rounds(images, labels, [seed], num_classes=SPEC.num_classes, epochs=SHORT, lr=lr,
                                 batch_size=batch, device="cpu", progress=_progress(calls))
    _same(kit.state_dict(), reference.state_dict(), "train_rounds")
    _as_recorded(calls, record)

    net = ConvNet(ModelConfig(num_classes=SPEC.num_classes, image_size=16))
    net.load_state_dict(initial)
    _, on_device, on_cpu = round_streams(seed)
    calls = []
    scorer.train(net, images, labels, epochs=SHORT, lr=lr, batch_size=batch, progress=_progress(calls),
                 generator=torch.Generator().manual_seed(on_device),
                 group_generator=torch.Generator().manual_seed(on_cpu))
    _same(net.state_dict(), reference.state_dict(), "train")
    _as_recorded(calls, record)

    calls = []  # the fast scorer's stacked rounds: one seed twice, so each is the reference and so is their mean
    pair = scorer.train_rounds(images, labels, [seed, seed], num_classes=SPEC.num_classes, epochs=SHORT, lr=lr,
                               batch_size=batch, device="cpu", progress=_progress(calls),
                               how=fast.Arithmetic(fast.FAST, "float32", False, stacked=2))
    for kit in pair:  # vmap's batched convolutions round differently: close, not bit for bit
        torch.testing.assert_close(kit.state_dict(), reference.state_dict(), atol=1e-5, rtol=1e-5)
    _as_recorded(calls, record)


def test_the_fast_mode_trains_with_a_bfloat16_forward_where_the_device_has_one(data, official, gpu_default,
                                                                                monkeypatch):
    """The fast scorer on a CPU that computes bfloat16 natively (said so here; never compiled in this test): the
    official loop with its forward under bfloat16 autocast and its loss in float32, not the float32 loop."""
    images, labels, test_images, test_labels = data
    monkeypatch.setattr(fast, "native_bfloat16", lambda device: device.type == "cpu")
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
    seed = round_seed(SEED, 1)
    initial, reference = official_round(images, labels, SPEC.num_classes, seed, SHORT, autocast=torch.bfloat16)
    float32 = official_test(official[seed][1], test_images, test_labels)
    assert official_test(reference, test_images, test_labels) != float32, "this seed must tell the two apart"
    how = fast.arithmetic(fast.FAST, torch.device("cpu"))
    (kit,) = scorer.train_rounds(images, labels, [seed], num_classes=SPEC.num_classes, epochs=SHORT, device="cpu",
                                 how=how)
    _same(kit.state_dict(), reference.state_dict(), "fast round")
    pair = scorer.train_rounds(images, labels, [seed, seed], num_classes=SPEC.num_classes, epochs=SHORT, device="cpu",
                               how=replace(how, stacked=2))
    _same(pair[0].state_dict(), pair[1].state_dict(), "one seed stacked twice")
    for name, value in reference.state_dict().items():  # stacked under autocast: bfloat16 rounds differently again
        assert float((pair[0].state_dict()[name] - value).abs().max()) < 1e-3, name

    net = ConvNet(ModelConfig(num_classes=SPEC.num_classes, image_size=16))
    net.load_state_dict(initial)
    _, on_device, on_cpu = round_streams(seed)
    scorer.train(net, images, labels, epochs=SHORT, generator=torch.Generator().manual_seed(on_device),
                 group_generator=torch.Generator().manual_seed(on_cpu),
                 how=how)
    _same(net.state_dict(), reference.state_dict(), "train in the fast arithmetic")
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=2, epochs=SHORT, seed=SEED,
                                    device="cpu", show_progress=False, how=how)
    assert result.rounds[1] == official_test(reference, test_images, test_labels)  # round 1's seed is this one


def test_soft_labels_and_float64_images_train_as_the_official_loop(data):
    """Class probabilities as targets (the loss's soft form, the accuracy on their largest entry), and images in
    float64: the scorer trains and tests in float32, as the official network computes."""
    images, labels, test_images, test_labels = data
    soft = torch.softmax(3 * torch.randn(len(labels), SPEC.num_classes, generator=torch.Generator().manual_seed(2)), 1)
    seed, record, calls = round_seed(SEED, 2), [], []
    _, reference = official_round(images, soft, SPEC.num_classes, seed, SHORT, record=record)
    (kit,) = scorer.train_rounds(images.double(), soft, [seed], num_classes=SPEC.num_classes, epochs=SHORT,
                                 device="cpu", progress=_progress(calls))
    _same(kit.state_dict(), reference.state_dict(), "soft labels")
    _as_recorded(calls, record)
    assert scorer.test_accuracy(kit, test_images.double(), test_labels) == official_test(reference, test_images,
                                                                                         test_labels)


def test_a_single_epoch_is_a_whole_round(data):
    images, labels, test_images, test_labels = data
    _, net = official_round(images, labels, SPEC.num_classes, round_seed(SEED, 0), 1)
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=1, epochs=1, seed=SEED,
                                    device="cpu", show_progress=False)
    assert (result.epochs, result.rounds) == (1, [official_test(net, test_images, test_labels)])


def test_the_record_says_official_only_for_the_leaderboards_recipe_and_times_the_run(data, monkeypatch):
    """A challenge spec at this test's size, its full budget made SHORT epochs here (1001 would take minutes):
    official with the default labels, every round and the faithful arithmetic, and only then."""
    images, labels, test_images, test_labels = data
    monkeypatch.setattr(scorer, "EPOCHS", SHORT)
    spec = replace(SPEC, challenge=True)

    def scored(**kwargs) -> dict:
        return scorer.evaluate_images(images, spec, test_images, test_labels, epochs=SHORT, seed=SEED, device="cpu",
                                      show_progress=False, **kwargs).to_dict()

    start = time.perf_counter()
    official = scored(rounds=ROUNDS)
    elapsed = time.perf_counter() - start
    assert official["official"] is True
    assert isinstance(official["seconds"], float) and 0 < official["seconds"] <= elapsed + 5e-4
    assert official["seconds"] == round(official["seconds"], 3)
    assert scored(rounds=ROUNDS, labels=labels)["official"] is False
    assert scored(rounds=ROUNDS, how=fast.arithmetic(fast.FAST, torch.device("cpu")))["official"] is False


class _Bar(Progress):
    """rich's own progress bar, drawing into a string, that keeps every status it is given."""

    made: list = []

    def __init__(self, disable: bool = False) -> None:
        super().__init__(console=Console(file=io.StringIO()), disable=disable)
        self.statuses = []
        _Bar.made.append(self)

    def add_task(self, description, **kwargs):
        self.statuses.append(kwargs.get("status"))
        return super().add_task(description, **kwargs)

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self.statuses.append(kwargs.get("status"))


def _scored_with_a_bar(monkeypatch, data, **kwargs) -> tuple[scorer.Score, _Bar]:
    images, _, test_images, test_labels = data
    _Bar.made = []
    monkeypatch.setattr(scorer, "make_progress", _Bar)
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS, epochs=SHORT, seed=SEED,
                                    device="cpu", **kwargs)
    (bar,) = _Bar.made
    return result, bar


def test_the_progress_bar_counts_every_epoch_and_ends_each_round_on_its_test_accuracy(data, official, monkeypatch):
    result, bar = _scored_with_a_bar(monkeypatch, data)  # progress is shown unless asked not to
    (task,) = bar.tasks
    assert not bar.disable and task.description == "scoring cifar100"
    assert (task.total, task.completed) == (ROUNDS * SHORT, ROUNDS * SHORT)
    _, _, test_images, test_labels = data
    expected = []
    for r, (_, net) in enumerate(official.values()):
        expected += [f"round {r + 1}/{ROUNDS} loss"] * SHORT + [
            f"round {r + 1}/{ROUNDS} test acc {official_test(net, test_images, test_labels):.4f}"]
    assert bar.statuses[0] == "", "the bar opens on an empty status (a None would be drawn as 'None')"
    assert [s if "test acc" in s else s[:len(f"round 1/{ROUNDS} loss")] for s in bar.statuses[1:]] == expected
    assert all(re.fullmatch(r"round \d/3 loss \d+\.\d{3} acc [01]\.\d{3}", s) for s in bar.statuses if "loss" in s)
    assert result.per_class is None and "per_class" not in result.to_dict()  # only when asked for

    _, bar = _scored_with_a_bar(monkeypatch, data, show_progress=False)
    assert bar.disable and all("loss" not in s for s in bar.statuses)  # no per-epoch callback either


def test_labels_given_are_the_labels_trained_on(data, gpu_default):
    """Not the default order: image i of class (i // 3 + 1) % 4. Scored on the device asked for."""
    images, labels, test_images, test_labels = data
    shifted = (labels + 1) % SPEC.num_classes
    _, net = official_round(images, shifted, SPEC.num_classes, round_seed(SEED, 0), SHORT)
    result = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=1, epochs=SHORT, seed=SEED,
                                    device="cpu", labels=shifted, show_progress=False)
    assert result.rounds == [official_test(net, test_images, test_labels)] and result.official is False


def test_per_class_accuracy_with_a_class_missing_from_the_test_set(data, official):
    """Class 3 has no test image (its share is 0, not a division by zero) and class 2 has one."""
    images, _, test_images, test_labels = data
    keep = (test_labels < 2) | (torch.arange(len(test_labels)) == 2)
    result = scorer.evaluate_images(images, SPEC, test_images[keep], test_labels[keep], rounds=ROUNDS, epochs=SHORT,
                                    seed=SEED, device="cpu", show_progress=False, per_class=True)
    shares = []
    for _, net in official.values():
        with torch.no_grad():
            right = net.eval()(test_images[keep]).argmax(1) == test_labels[keep]
        shares.append([float(right[test_labels[keep] == c].double().mean()) for c in range(3)] + [0.0])
    assert result.per_class == pytest.approx([sum(s[c] for s in shares) / ROUNDS for c in range(4)], abs=1e-6)


@dataclass(frozen=True)
class _Rank(Shard):
    """A rank of a job whose ranks are threads of this process, taking turns (``turn``: torch's global RNG, which a
    round's init seeds, is one per process): ``gather`` is all_gather_object's exchange (every rank's object, in rank
    order, on every rank); ``sent`` keeps what this rank contributed."""

    turn: object = None  # a threading.Lock
    meet: threading.Barrier | None = None
    slots: list | None = None
    sent: list | None = None

    def gather(self, obj) -> list:
        self.sent.append(copy.deepcopy(obj))  # as it was sent: the caller may change it after
        self.slots[self.rank] = obj
        self.turn.release()
        try:
            self.meet.wait()
            out = list(self.slots)
            self.meet.wait()
        finally:
            self.turn.acquire()
        return out


def _two_ranks(data, seed, show_progress=False):
    """``evaluate_images`` run as ranks 0 and 1 of a two-rank job: (each rank's result, what each contributed)."""
    images, _, test_images, test_labels = data
    turn, meet, slots = threading.Lock(), threading.Barrier(2, timeout=120), [None, None]
    ranks = [_Rank(r, 2, turn, meet, slots, []) for r in range(2)]
    results, errors = [None, None], []

    def run(r):
        with turn:
            try:
                results[r] = scorer.evaluate_images(images, SPEC, test_images, test_labels, rounds=ROUNDS,
                                                    epochs=SHORT, seed=seed, device="cpu",
                                                    show_progress=show_progress, shard=ranks[r])
            except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
                errors.append(e)
                meet.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, [rank.sent for rank in ranks]


def test_two_ranks_split_the_rounds_and_report_what_one_process_does(data, official, monkeypatch):
    """Seeded: each rank trains its rounds (0 and 2, then 1), and both report the official rounds of every seed;
    only rank 0 shows progress."""
    _Bar.made = []
    monkeypatch.setattr(scorer, "make_progress", _Bar)
    results, sent = _two_ranks(data, SEED, show_progress=True)
    _, _, test_images, test_labels = data
    rounds = [official_test(net, test_images, test_labels) for _, net in official.values()]
    for result in results:
        assert result.seeds == list(official) and result.rounds == rounds
    assert [sorted(part) for part in (sent[0][-1], sent[1][-1])] == [[0, 2], [1]]
    (leader,) = [bar for bar in _Bar.made if not bar.disable]
    assert [s for s in leader.statuses if "test acc" in s] == [f"round {r + 1}/3 test acc {rounds[r]:.4f}"
                                                               for r in (0, 2)]


def test_two_unseeded_ranks_run_the_seeds_rank_0_drew(data):
    results, sent = _two_ranks(data, None)
    drawn = sent[0][0]  # rank 0's fresh seeds, the first thing it gave
    assert len(drawn) == ROUNDS and drawn != sent[1][0]
    images, labels, test_images, test_labels = data
    rounds = [official_test(official_round(images, labels, SPEC.num_classes, s, SHORT)[1], test_images, test_labels)
              for s in drawn]
    for result in results:
        assert result.seeds == drawn and result.rounds == rounds
