"""The label-consistency checker on realistic images: natural-like, distilled-like (noisy), real, and broken."""

import itertools
import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fakes import MINI, gradient_noise, natural, needs_mini, zca
from helpers import ddkit

from challenge_kit.core.artifact import DistilledArtifact
from challenge_kit.core.contract import (
    CIFAR100,
    MAX_SUBMISSION_BYTES,
    MAX_SUBMISSION_VALUES,
    TINYIMAGENET,
    default_labels,
    normalize,
)
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.models import ConvNet, ModelConfig, flatten_params
from challenge_kit.core.storage import save_json, save_tensors, save_torch
from challenge_kit.core.verify import (
    FAIL,
    PASS,
    WARN,
    Check,
    Report,
    best_assignment,
    channel_correlation,
    check_labels,
    check_lr,
    check_reference,
    findings,
    load_reference_model,
    spectral_exponent,
    suspected_mapping,
    verify_bytes,
    verify_path,
    verify_tensor,
)
from challenge_kit.core.verify.normalization import _other_normalization_hint

SMALL = CIFAR100.subset(10)  # 100 images of 3x32x32
SMALL16 = replace(SMALL, image_size=16)  # ZCA needs many more images than pixels to fit: keep pixels few


pytestmark = pytest.mark.usefixtures("one_thread")


def cli(*args):
    result = ddkit("verify", *args, "--json")
    return result, (json.loads(result.stdout) if result.stdout.strip() else None)


def status(report_dict: dict, name: str) -> tuple[str, str]:
    check = next(c for c in report_dict["checks"] if c["name"] == name)
    return check["status"], check["reason"]


def with_manifest(tmp_path: Path, spec, images, name: str = "cifar100.pt") -> Path:
    save_json({"spec": spec.to_dict()}, tmp_path / "manifest.json")
    return save_torch(images, tmp_path / name)


# ------------------------------------------------------------------------------------------- passing


def test_valid_submission_at_the_real_cifar100_shape(tmp_path):
    images = normalize(natural(1000, 32), CIFAR100)
    path = save_torch(images, tmp_path / "cifar100.pt")
    result, report = cli(path)
    assert result.exit_code == 0, result.output
    assert report["exit_code"] == 0 and report["ok"] and report["challenge"] is True
    assert report["spec"]["name"] == "cifar100" and report["spec_source"] == "shape"
    assert {c["status"] for c in report["checks"]} == {PASS}
    table = ddkit("verify", path)
    assert table.exit_code == 0 and "normalization" in table.stdout and "FAIL" not in table.stdout


@pytest.mark.parametrize("noise", ["gradient", "white"])
def test_distilled_like_noisy_images_pass(noise):
    images = normalize(natural(100, 32, seed=1), SMALL)
    noisy = gradient_noise(images, 1.0) if noise == "gradient" else images + images.std() * torch.randn_like(images)
    check = verify_tensor(noisy, SMALL).check("normalization")
    assert check.status == PASS, check.reason
    assert check.details["spectral_exponent"] > 1.0


def test_gaussian_noise_init_warns_but_does_not_fail():
    report = verify_tensor(torch.randn(SMALL.shape, generator=torch.Generator().manual_seed(0)), SMALL)
    check = report.check("normalization")
    assert check.status == WARN and "noise" in check.reason
    assert report.ok and report.exit_code == 0


def test_subset_spec_from_manifest_reports_not_a_challenge_spec(tmp_path):
    path = with_manifest(tmp_path, SMALL, normalize(natural(100, 32), SMALL))
    result, report = cli(path)
    assert result.exit_code == 0, result.output
    assert report["spec_source"] == "manifest.json" and report["challenge"] is False
    assert report["spec"]["num_classes"] == 10
    assert status(report, "spec")[0] == WARN and status(report, "shape")[0] == PASS
    assert verify_path(path, spec=SMALL).spec_source == "caller"


def test_half_precision_warns():
    report = verify_tensor(normalize(natural(100, 32), SMALL).half(), SMALL)
    assert report.check("dtype").status == WARN and "precision" in report.check("dtype").reason
    assert report.ok


# ------------------------------------------------------------------------------------------- failing


@pytest.mark.parametrize("case,check,words", [
    ("wrong shape", "shape", "matches no challenge dataset"),
    ("nan", "finite", "3 NaN"),
    ("dict", "type", "a dict with keys images, labels"),
    ("0-255", "normalization", "raw [0, 255] pixels"),
    ("0-1", "normalization", "raw [0, 1] pixels"),
    ("minus1-1", "normalization", "pixels in [-1, 1]"),
    ("integer", "dtype", "integer images"),
])
def test_broken_submissions_exit_1_naming_the_reason(tmp_path, case, check, words):
    pixels = natural(1000, 32)
    images = normalize(pixels, CIFAR100)
    obj = {
        "wrong shape": images[:, :, :, :31],
        "nan": images.flatten().index_fill(0, torch.tensor([0, 5, 9]), float("nan")).view_as(images),
        "dict": {"images": images, "labels": default_labels(100, 10)},
        "0-255": pixels * 255,
        "0-1": pixels,
        "minus1-1": pixels * 2 - 1,
        "integer": (pixels * 255).to(torch.uint8),
    }[case]
    result, report = cli(save_torch(obj, tmp_path / "cifar100.pt"))
    assert result.exit_code == 3, result.output
    got, reason = status(report, check)
    assert got == FAIL and words in reason, reason
    assert report["exit_code"] == 3


def test_other_datasets_normalization_is_named():
    pixels = natural(1000, 32)
    check = verify_tensor(normalize(pixels, TINYIMAGENET), CIFAR100).check("normalization")
    assert check.status == FAIL and "tinyimagenet's mean/std" in check.reason
    # once optimized the exact evidence is gone; the channel means still point at the other normalization
    noise = 0.7 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    check = verify_tensor(normalize(pixels, TINYIMAGENET) + noise, CIFAR100).check("normalization")
    assert check.status == WARN and "tinyimagenet's mean/std" in check.reason
    assert verify_tensor(normalize(pixels, CIFAR100) + noise, CIFAR100).check("normalization").status == PASS


def test_values_out_of_a_normalized_range_are_named_by_it():
    """No negative values: raw pixels, [0, 1] or [0, 255], or something else; values far beyond what a normalized
    pixel can be (|x| over 10 times the largest, (1 - mean) / std or mean / std): [0, 255] data or a diverged set."""
    pixels = natural(100, 32)
    mean, std = torch.tensor(SMALL.mean), torch.tensor(SMALL.std)
    largest = max(float((mean / std).max()), float(((1 - mean) / std).max()))

    def values(x):
        return f"(min {float(x.min()):.3g}, max {float(x.max()):.3g}, mean {float(x.mean()):.3g})"

    brighter, raw, diverged = pixels * 1.5, pixels * 255, normalize(pixels, SMALL) * 20
    top = float(diverged.abs().quantile(0.999))
    assert 1.05 < float(brighter.abs().quantile(0.999)) < 10 * largest < top
    for images, reason in [
        (brighter, f"not mean/std normalized {values(brighter)}: no negative values, but mean/std normalized images "
                   "are about half negative"),
        (raw, f"raw [0, 255] pixels {values(raw)}: no negative values, but mean/std normalized images are about half "
              "negative"),
        (diverged, f"|values| reach {top:.3g} (99.9th percentile) {values(diverged)}; normalized cifar100 pixels stay "
                   f"within +-{largest:.2f}: [0, 255] data or a diverged set"),
    ]:
        assert verify_tensor(images, SMALL).check("normalization") == Check("normalization", FAIL, reason)


def test_nan_and_inf_fail_their_row_and_count_as_zero_in_the_others():
    """The normalization row judges the finite pixels: the range it prints is theirs (a NaN or inf read as 0)."""
    pixels = natural(100, 32) / 2  # raw pixels in [0, 0.5]
    flat = pixels.flatten().clone()
    flat[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    images = flat.view_as(pixels)
    finite = torch.where(images.isfinite(), images, torch.zeros(()))
    report = verify_tensor(images, SMALL)
    assert report.check("finite").reason == f"1 NaN and 2 inf values (of {images.numel():,})"
    assert report.check("normalization") == Check("normalization", FAIL, (
        f"raw [0, 1] pixels (min {float(finite.min()):.3g}, max {float(finite.max()):.3g}, mean "
        f"{float(finite.mean()):.3g}): no negative values, not normalized with cifar100's mean/std"))


@pytest.fixture(scope="module")
def whitening():
    """Natural-like 16 px images and their ZCA-whitened versions, fit on 3000 images (768 pixels each)."""
    fit = normalize(natural(3000, 16, seed=2), SMALL16)
    return fit[:100], zca(fit[:100], fit)


def test_zca_whitened_images_fail_also_after_gradient_noise(tmp_path, whitening):
    images, whitened = whitening
    path = with_manifest(tmp_path, SMALL16, whitened)
    result, report = cli(path)
    assert result.exit_code == 3
    got, reason = status(report, "normalization")
    assert got == FAIL and "ZCA-whitened" in reason
    check = verify_tensor(gradient_noise(whitened, 1.0), SMALL16).check("normalization")
    assert check.status == FAIL and "ZCA" in check.reason
    natural_check = verify_tensor(gradient_noise(images, 1.0), SMALL16).check("normalization")
    assert natural_check.status == PASS, natural_check.reason


def test_spectrum_statistics_separate_natural_whitened_and_noise(whitening):
    nat, white = whitening
    noise = torch.randn(100, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert spectral_exponent(nat) > 1.5 and spectral_exponent(white) < 0.7 and abs(spectral_exponent(noise)) < 0.3
    assert channel_correlation(nat) > 0.8 and channel_correlation(white) > 0.3
    assert abs(channel_correlation(noise)) < 0.05


@needs_mini
def test_real_tiny_imagenet_images():
    from challenge_kit.data import decode_images, tiny_classes, tiny_files

    wnids = tiny_classes(MINI)
    files, labels = tiny_files(MINI, "train", wnids)
    spec = TINYIMAGENET.subset(len(wnids), class_names=tuple(wnids), ipc=5)
    first = [files[labels.index(c) + i] for c in range(len(wnids)) for i in range(spec.ipc)]
    pixels = decode_images(first, 64).float() / 255
    assert verify_tensor(normalize(pixels, spec), spec).check("normalization").status == PASS
    wrong = verify_tensor(normalize(pixels, CIFAR100), spec).check("normalization")
    assert wrong.status == FAIL and "cifar100's mean/std" in wrong.reason
    noisy = verify_tensor(gradient_noise(normalize(pixels, spec), 1.0), spec).check("normalization")
    assert noisy.status == PASS, noisy.reason
    small = replace(spec, image_size=16)
    fit = normalize(decode_images(files, 16).float() / 255, small)  # 2000 real images, 768 pixels each
    first16 = fit[[labels.index(c) + i for c in range(len(wnids)) for i in range(spec.ipc)]]
    whitened = verify_tensor(zca(first16, fit), small).check("normalization")
    assert whitened.status == FAIL and "ZCA" in whitened.reason


# --------------------------------------------------------------------------------------------- labels


def test_soft_label_artifact_fails_with_per_class_disagreement(tmp_path):
    images = normalize(natural(100, 32), SMALL)
    soft = F.one_hot(default_labels(10, 10), 10).float() * 0.8 + 0.02
    for i in (20, 21, 22, 50):  # three images of class 2 and one of class 5 lean to another class
        soft[i] = soft[i].roll(1)
    path = DistilledArtifact(images, soft, SMALL).save(tmp_path / "best.safetensors")
    result, report = cli(path)
    assert result.exit_code == 3
    got, reason = status(report, "labels")
    assert got == FAIL and "soft labels" in reason and "class 2: 3, class 5: 1" in reason
    assert report["spec_source"] == "artifact metadata"
    assert verify_path(path).check("labels").details["disagree_per_class"] == {2: 3, 5: 1}


def test_wrong_order_hard_labels_fail_and_learned_lr_warns(tmp_path):
    images = normalize(natural(100, 32), SMALL)
    class_minor = torch.arange(10).repeat(10)  # arange(K).repeat(ipc): the classic mix-up
    path = DistilledArtifact(images, class_minor, SMALL, lr=0.0123).save(tmp_path / "a.safetensors")
    result, report = cli(path)
    assert result.exit_code == 3
    got, reason = status(report, "labels")
    assert got == FAIL and "90 of 100" in reason and "reorder the images by label" in reason
    assert status(report, "lr")[0] == WARN and "0.01" in status(report, "lr")[1]
    good = DistilledArtifact(images, default_labels(10, 10), SMALL, lr=0.0123).save(tmp_path / "b.safetensors")
    result, report = cli(good)
    assert result.exit_code == 0 and status(report, "labels")[0] == PASS


# ------------------------------------------------------------------------------------ reference model


REF = replace(CIFAR100.subset(8), image_size=16)


@pytest.fixture(scope="module")
def trained_reference():
    """A small ConvNet that separates 8 easy classes (a template each plus noise), and fresh images of them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _train_reference()


def _train_reference():
    templates = normalize(natural(REF.num_classes, 16, seed=4), REF) * 2
    sample = lambda n: (templates.repeat_interleave(n, 0)  # noqa: E731
                        + 0.7 * torch.randn(REF.num_classes * n, 3, 16, 16))
    net = ConvNet(ModelConfig.for_spec(REF, width=16, depth=2))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    labels = default_labels(REF.num_classes, 16)
    for _ in range(25):
        opt.zero_grad()
        F.cross_entropy(net(sample(16)), labels).backward()
        opt.step()
    return net, sample(REF.ipc)


def test_reference_model_agrees_with_default_order(tmp_path, trained_reference):
    net, images = trained_reference
    ckpt = save_torch(net.state_dict(), tmp_path / "convnet.pt")
    report = verify_tensor(images, REF, reference_model=ckpt)
    check = report.check("reference")
    assert check.status == PASS and check.details["agreement"] > 0.9, check.reason
    assert check.details["mapping"] == {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        untrained = ConvNet(net.config)
    weak = verify_tensor(images, REF, reference_model=untrained)
    assert weak.check("reference").status == WARN and weak.ok, weak.check("reference").reason


def test_permuted_class_order_is_found(tmp_path, trained_reference):
    net, images = trained_reference
    perm = torch.tensor([0, 3, 1, 2, 4, 7, 6, 5])  # a 3-cycle and a swap, like wnids.txt vs sorted order
    permuted = images.view(REF.num_classes, REF.ipc, 3, 16, 16)[perm].reshape(images.shape)
    path = with_manifest(tmp_path, REF, permuted)
    ckpt = save_torch({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "dp.pt")
    result = ddkit("verify", path, "--reference-model", ckpt, "--json")
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    got, reason = status(report, "reference")
    assert got == FAIL and "class 1 -> 3" in reason and "class 5 -> 7" in reason
    mapping = verify_path(path, reference_model=net).check("reference").details["mapping"]
    assert mapping == {k: int(perm[k]) for k in range(REF.num_classes) if perm[k] != k}


def test_expert_file_uses_its_last_snapshot(tmp_path, trained_reference):
    net, images = trained_reference
    config = net.config
    untrained = flatten_params(ConvNet(config))
    snapshots = torch.stack([untrained, flatten_params(net)])
    meta = {"format": "ddkit-expert", "version": 1, "spec": REF.to_dict(), "model": config.to_dict(),
            "optimizer": {}, "seed": 0, "epochs": 1, "completed_epochs": 1, "train_loss": [1.0],
            "test_acc": [0.9]}
    expert = save_tensors({"snapshots": snapshots}, tmp_path / "expert_0000.safetensors", meta)
    check = verify_tensor(images, REF, reference_model=expert).check("reference")
    assert check.status == PASS and check.details["agreement"] > 0.9, check.reason


def test_assignment_is_optimal():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 5, 6):
        for _ in range(5):
            score = rng.integers(0, 10, (n, n)).astype(float)
            perm = best_assignment(score)
            assert sorted(perm) == list(range(n))
            best = max(sum(score[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
            assert score[np.arange(n), perm].sum() == best
    confusion = np.diag(np.full(200, 10))[np.random.default_rng(1).permutation(200)]
    assert np.array_equal(confusion[np.arange(200), best_assignment(confusion)], np.full(200, 10))


def test_weak_one_way_confusion_is_not_a_permutation():
    confusion = np.diag([9, 2, 9, 9]).astype(np.int64)
    confusion[1, 1], confusion[1, 2] = 2, 8  # class 1 mostly predicted as 2, but class 2 is fine
    assert suspected_mapping(confusion, 10) == {}
    confusion[2, 2], confusion[2, 1] = 1, 8  # now 1 and 2 are swapped both ways
    assert suspected_mapping(confusion, 10) == {1: 2, 2: 1}


def test_a_cycle_counts_when_most_of_its_classes_moved():
    cycle = [1, 2, 3, 4, 0]  # rows 0..4 show classes 1, 2, 3, 4, 0
    confusion = np.zeros((6, 6), dtype=np.int64)
    confusion[5, 5] = 9
    for k, shown in enumerate(cycle):
        confusion[k, shown] = 6
    confusion[[0, 1], [0, 1]] = 4  # two classes also predicted as themselves: not clearly moved
    assert suspected_mapping(confusion, 10) == {2: 3, 3: 4, 4: 0}
    confusion[2, 2] = 4  # now only two of five moved clearly: not a permutation
    assert suspected_mapping(confusion, 10) == {}


def swap(first, second, ipc=10):
    """Classes 0 and 1 swapped: row 0 shows (images as 1, images as itself), row 1 likewise, class 2 intact."""
    confusion = np.diag([0, 0, ipc]).astype(np.int64)
    confusion[0, 1], confusion[0, 0] = first
    confusion[1, 0], confusion[1, 1] = second
    return suspected_mapping(confusion, ipc)


def test_a_class_moved_at_the_documented_thresholds():
    """Moved: at least 30% of its images (3 of 10, never fewer than 2) look like the other class, more than twice
    as many as look like itself; a 2-cycle needs both of its classes moved."""
    assert swap((3, 0), (3, 0)) == {0: 1, 1: 0}
    assert swap((2, 0), (3, 0)) == {}  # 2 of 10 is under 30%
    assert swap((2, 0), (2, 0), ipc=5) == {0: 1, 1: 0}  # 30% of 5 rounds up to 2
    assert swap((5, 2), (5, 0)) == {0: 1, 1: 0}  # 5 > 2 x 2
    assert swap((4, 2), (5, 0)) == {}  # 4 is not more than 2 x 2: one of two moved is not most of the cycle
    confusion = np.diag([0, 0, 10, 7]).astype(np.int64)
    confusion[0, 1] = confusion[1, 0] = 5
    confusion[3, 1] = 2  # two images of a third class also look like class 1: under the 3 needed
    assert suspected_mapping(confusion, 10) == {0: 1, 1: 0}
    confusion[3, 1] = 3  # now as many as needed: class 1 absorbs several classes, no evidence of a swap
    assert suspected_mapping(confusion, 10) == {}


# ---------------------------------------------------------------------------------------- unreadable


def test_truncated_and_foreign_files_exit_2(tmp_path):
    full = save_torch(normalize(natural(100, 32), SMALL), tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(full[: len(full) // 2])
    (tmp_path / "text.pt").write_text("not a tensor file\n")
    artifact = DistilledArtifact(torch.zeros(SMALL.shape), default_labels(10, 10), SMALL)
    whole = artifact.save(tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    for name in ("cut.pt", "text.pt", "cut.safetensors", "missing.pt"):
        result, report = cli(tmp_path / name)
        assert result.exit_code == 4, (name, result.output)
        assert name in result.stderr and report["exit_code"] == 4 and name in report["error"]


class Payload:
    """Unpickling this would create ``marker`` (it calls ``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickle_is_refused_unrun(tmp_path, writer):
    marker = tmp_path / "ran"
    path = tmp_path / "cifar100.pt"
    if writer == "torch.save":
        torch.save(Payload(marker), path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    result, report = cli(path)
    assert result.exit_code == 4 and not marker.exists()
    assert str(path) in result.stderr and "refused" in result.stderr
    if writer == "torch.save":
        assert "io.open" in result.stderr
        torch.load(path, weights_only=False)  # the payload is real: an unrestricted load does run it
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_numpy_array_is_named(tmp_path):
    path = tmp_path / "cifar100.pt"
    torch.save(normalize(natural(10, 32), CIFAR100).numpy(), path)
    result, report = cli(path)
    assert result.exit_code == 3
    got, reason = status(report, "type")
    assert got == FAIL and "numpy array" in reason
    assert verify_tensor(np.zeros((2, 3))).check("type").status == FAIL


# ------------------------------------------------------------------------------ each row, word for word

SIX = CIFAR100.subset(3, ipc=2)  # default labels 0 0 1 1 2 2
PERMUTED = "hard labels differ from the default order"


@pytest.mark.parametrize("labels,status_,reason,details", [
    (torch.full((5, 3), 1 / 3), FAIL, "soft labels of shape 5x3, expected 6x3", {}),
    (F.one_hot(torch.tensor([0, 1, 1, 1, 2, 0]), 3).float(), FAIL,
     "soft labels (6x3) are dropped: the scorer trains on default-order hard labels; argmax disagrees with the "
     "default-order class for 2 images (class 0: 1, class 2: 1)", {"disagree_per_class": {0: 1, 2: 1}}),
    (F.one_hot(torch.tensor([0, 0, 1, 1, 2, 2]), 3).float(), FAIL,
     "soft labels (6x3) are dropped: the scorer trains on default-order hard labels; argmax agrees with the "
     "default order, but the label distributions are lost", {"disagree_per_class": {}}),
    (torch.tensor([[0], [0], [1], [1], [2], [2]]), FAIL,
     "labels of shape 6x1: expected 6 class indices or 6x3 soft labels", {}),
    (torch.tensor([0, 0, 1, 1, 2]), FAIL, "labels of shape 5: expected 6 class indices or 6x3 soft labels", {}),
    (torch.tensor([0, 0, 1, 1, 2, 2.5]), FAIL, "hard labels hold non-integer values", {}),
    (torch.tensor([0.0, 0, 1, 1, 2, 2]), PASS, "hard labels in default order (image i is class i // ipc)", {}),
    (torch.tensor([1, 1, 0, 0, 2, 2]), FAIL, f"4 of 6 {PERMUTED} (image 0 is labelled 1, the scorer calls it class 0); "
                                             "reorder the images by label (stable sort) to fix", {"differ": 4}),
    (torch.tensor([0, 0, 1, 1, 2, 0]), FAIL, f"1 of 6 {PERMUTED} (image 5 is labelled 0, the scorer calls it class 2)",
     {"differ": 1}),
    (torch.tensor([0, 0, 1, 1, 2, 3]), FAIL, f"1 of 6 {PERMUTED} (image 5 is labelled 3, the scorer calls it class 2)",
     {"differ": 1}),
    (torch.tensor([-1, 0, 1, 1, 2, 2]), FAIL,
     f"1 of 6 {PERMUTED} (image 0 is labelled -1, the scorer calls it class 0)", {"differ": 1}),
])
def test_label_rows_word_for_word(labels, status_, reason, details):
    assert check_labels(labels, SIX) == Check("labels", status_, reason, details)


def test_lr_row_and_the_report_as_json():
    lr = check_lr(0.0123)
    assert lr == Check("lr", WARN, "learned lr 0.0123 is stored, but the scorer ignores it and trains with lr 0.01",
                       {"lr": 0.0123})
    # exit 3: a check failed (the table in docs/cli.md)
    report = Report([Check("type", PASS, "a bare torch.Tensor"), lr, Check("shape", FAIL, "wrong", {"n": 1})],
                    SIX, "caller", "s/a.pt")
    assert (report.ok, report.exit_code, report.check("shape").reason, report.check("spec")) == (False, 3, "wrong",
                                                                                                 None)
    assert findings(report) == [f"s/a.pt: WARN lr: {lr.reason}", "s/a.pt: FAIL shape: wrong"]
    assert findings(Report([lr], None)) == [f"WARN lr: {lr.reason}"]
    assert report.to_dict() == {
        "path": "s/a.pt", "ok": False, "exit_code": 3, "spec": SIX.to_dict(), "spec_source": "caller",
        "challenge": False, "checks": [
            {"name": "type", "status": PASS, "reason": "a bare torch.Tensor", "details": {}},
            {"name": "lr", "status": WARN, "reason": lr.reason, "details": {"lr": 0.0123}},
            {"name": "shape", "status": FAIL, "reason": "wrong", "details": {"n": 1}}]}
    passing = Report([Check("type", PASS, "a bare torch.Tensor")], None)
    assert (passing.ok, passing.exit_code, findings(passing)) == (True, 0, [])
    assert passing.to_dict()["spec"] is None and passing.to_dict()["challenge"] is None


def test_a_dict_of_many_keys_is_listed_eight_at_a_time():
    eight = verify_tensor({f"k{i}": torch.zeros(1) for i in range(8)}).check("type").reason
    assert eight.startswith("a dict with keys k0, k1, k2, k3, k4, k5, k6, k7, not a bare tensor")
    keys = [f"k{i}" for i in range(10)]
    row = verify_tensor({k: torch.zeros(1) for k in keys}).check("type")
    assert row.status == FAIL and row.reason == (
        "a dict with keys k0, k1, k2, k3, k4, k5, k6, k7, ... (+2 more), not a bare tensor: the scorer crashes on it")


class Lookup(torch.nn.Module):
    """A reference model whose answers the test chooses: an image whose pixels all equal c is predicted as c."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.anchor = classes, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return F.one_hot(x[:, 0, 0, 0].round().long(), self.classes).float() + self.anchor


def predicted(*rows):
    """Images whose Lookup predictions are ``rows`` (one list per class, in default order)."""
    return torch.tensor([c for row in rows for c in row], dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)


def test_reference_rows_word_for_word():
    four = CIFAR100.subset(4, ipc=5)
    agree = check_reference(predicted(*[[c] * 5 for c in range(4)]), four, Lookup(4))
    assert agree == Check("reference", PASS, "reference model agrees with the default-order labels for 100% of images "
                                             "(chance 25%); 0 classes with no agreeing image; lowest: class 0 5/5, "
                                             "class 1 5/5, class 2 5/5",
                          {"agreement": 1.0, "per_class_agreement": [1.0] * 4, "mapping": {},
                           "agreement_with_mapping": 1.0})
    swapped = check_reference(predicted([1, 1, 1, 1, 0], [0] * 5, [2] * 5, [3, 3, 3, 2, 2]), four, Lookup(4))
    assert swapped == Check("reference", FAIL, "class order looks permuted (e.g. wnids.txt order instead of sorted): "
                                               "the images of 2 classes look like another class (class 0 -> 1, class 1 "
                                               "-> 0); agreement with the default order 45%, with this mapping 85%",
                            {"agreement": 0.45, "per_class_agreement": [0.2, 0.0, 1.0, 0.6], "mapping": {0: 1, 1: 0},
                             "agreement_with_mapping": 0.85})
    assert check_reference(predicted(*[[0] * 5] * 4), four, Lookup(4)).status == PASS  # 25% is not below 25%
    eight = CIFAR100.subset(8, ipc=5)  # agreement 12.5%, with the mapping exactly 25%: not too weak to judge
    assert check_reference(predicted([1, 1, 7, 7, 7], [0, 0, 0, 7, 7], *[[7] * 5] * 6), eight, Lookup(8)).status == FAIL
    ten = CIFAR100.subset(10, ipc=5)
    sink = [[9] * 5] * 8  # classes 2..9 all look like class 9
    weak = check_reference(predicted([1, 1, 9, 9, 9], [0, 0, 9, 9, 9], *sink), ten, Lookup(10))
    lowest = "reference model agrees with the default-order labels for 10% of images (chance 10%); 9 classes with " \
             "no agreeing image; lowest: class 0 0/5, class 1 0/5, class 2 0/5"
    assert weak == Check("reference", WARN, f"{lowest}; too weak to judge the class order (a possible permutation "
                                            "moves 2 classes, agreement with it 18%)",
                         {"agreement": 0.1, "per_class_agreement": [0.0] * 9 + [1.0], "mapping": {0: 1, 1: 0},
                          "agreement_with_mapping": 0.18})
    assert check_reference(predicted(*[[9] * 5] * 10), ten, Lookup(10)) == Check(
        "reference", WARN, f"{lowest}; no consistent class permutation",
        {"agreement": 0.1, "per_class_agreement": [0.0] * 9 + [1.0], "mapping": {}, "agreement_with_mapping": 0.1})
    with pytest.raises(ValueError, match="^the reference model predicts 4 classes, cifar100: 10 classes x 5 IPC"):
        check_reference(predicted(*[[0] * 5] * 10), ten, Lookup(4))


def ref_spectral_exponent(images):
    """Radially averaged power over integer rings 1..H/4, and its log-log least-squares slope, pixel by pixel."""
    x = images.double().numpy()
    n, c, h, w = x.shape
    power = np.zeros((h, w))
    for i, j in itertools.product(range(n), range(c)):
        power += np.abs(np.fft.fft2(x[i, j] - x[i, j].mean())) ** 2 / (n * c)
    points = []
    for r in range(1, min(h, w) // 4 + 1):
        ring = [power[u, v] for u in range(h) for v in range(w) if round(np.hypot(min(u, h - u), min(v, w - v))) == r]
        points.append((np.log(r), np.log(np.mean(ring))))
    return -np.polyfit(*zip(*points, strict=True), 1)[0]


def ref_channel_correlation(images):
    x = images.double()
    x = x - x.mean((-2, -1), keepdim=True)
    pairs = [(i, j) for i in range(x.shape[1]) for j in range(i + 1, x.shape[1])]
    return float(np.mean([float((x[:, i] * x[:, j]).sum() / ((x[:, i] ** 2).sum() * (x[:, j] ** 2).sum()).sqrt())
                          for i, j in pairs]))


@pytest.mark.parametrize("shape", [(3, 3, 16, 16), (2, 3, 12, 20)])
def test_spectrum_and_channel_statistics_against_plain_loops(shape):
    g = torch.Generator().manual_seed(0)
    images = natural(shape[0], 32)[..., :shape[2], :shape[3]] + 0.05 * torch.randn(shape, generator=g)
    assert spectral_exponent(images) == pytest.approx(ref_spectral_exponent(images), abs=1e-9)
    assert channel_correlation(images) == pytest.approx(ref_channel_correlation(images), abs=1e-12)
    assert np.isnan(spectral_exponent(torch.ones(2, 3, 16, 16)))  # no variation to measure
    assert np.isnan(spectral_exponent(torch.randn(2, 3, 7, 7, generator=g)))  # one ring only


def refused(path, spec):
    with pytest.raises(KitFileError) as caught:
        load_reference_model(path, spec)
    assert caught.value.path == str(path)
    return caught.value.problem


def test_a_reference_model_that_does_not_fit_says_why(tmp_path, trained_reference):
    net, _ = trained_reference
    assert refused(save_torch([torch.zeros(1)], tmp_path / "list.pt"), REF) == \
        "holds a list, not a ConvNet state dict of tensors"
    assert refused(save_torch({"w": torch.zeros(1), "n": 3}, tmp_path / "mixed.pt"), REF) == \
        "holds a dict, not a ConvNet state dict of tensors"
    assert refused(save_torch({"w": torch.zeros(3)}, tmp_path / "flat.pt"), REF) == \
        "not a ConvNet state dict (DC/MTT layout: features.0.weight ... classifier.bias)"
    bigger = ConvNet(replace(net.config, image_size=32)).state_dict()  # its classifier takes 16 x 8 x 8 features
    assert refused(save_torch(bigger, tmp_path / "32px.pt"), REF) == (
        f"does not fit a ConvNet for {REF.describe()} (size mismatch for classifier.weight: copying a param with "
        "shape torch.Size([8, 1024]) from checkpoint, the shape in current model is torch.Size([8, 256]).)")
    ten = CIFAR100.subset(10)
    config = replace(net.config, num_classes=10)
    meta = {"format": "ddkit-expert", "version": 1, "spec": replace(ten, image_size=16).to_dict(),
            "model": config.to_dict(), "optimizer": {}, "seed": 0, "epochs": 1, "completed_epochs": 1,
            "train_loss": [1.0], "test_acc": [0.5]}
    flat = flatten_params(ConvNet(config))
    expert = save_tensors({"snapshots": torch.stack([flat, flat])}, tmp_path / "expert_0000.safetensors", meta)
    assert refused(expert, REF) == f"is a model for 10 classes of 3x16x16 images, not {REF.describe()}"


def test_a_submission_in_memory_is_judged_as_on_disk(tmp_path):
    images = normalize(natural(100, 32), SMALL)
    path = save_torch(images, tmp_path / "s.pt")
    in_memory = verify_bytes(path.read_bytes(), "bundle.zip:s.pt", SMALL)
    on_disk = verify_path(path, spec=SMALL)
    assert (in_memory.path, in_memory.spec, in_memory.spec_source) == ("bundle.zip:s.pt", SMALL, "member name")
    assert [c for c in in_memory.checks if c.name != "spec"] == [c for c in on_disk.checks if c.name != "spec"]
    assert "(spec from member name)" in in_memory.check("spec").reason and in_memory.ok
    torch.save(images.numpy(), tmp_path / "np.pt")
    row = verify_bytes((tmp_path / "np.pt").read_bytes(), "bundle.zip:np.pt", SMALL).checks
    assert row == [Check("type", FAIL, "a numpy array, not a torch.Tensor: the scorer crashes on it; "
                                       "save torch.from_numpy(array)")]
    torch.save([Payload(tmp_path / "ran"), print], tmp_path / "code.pt")
    with pytest.raises(KitFileError, match="^bundle.zip:code.pt: refused without loading: the pickle would call "
                                           "builtins.print, io.open$"):
        verify_bytes((tmp_path / "code.pt").read_bytes(), "bundle.zip:code.pt", SMALL)
    assert not (tmp_path / "ran").exists()


def test_a_member_in_memory_is_held_to_a_submissions_bounds_and_refused_as_on_disk(tmp_path):
    """A zip member's bytes meet the bounds of a submission file (its value count) and the same refusal of a legacy
    pickle that calls code, word for word, and nothing runs."""
    big = tmp_path / "big.pt"
    torch.save(torch.zeros(MAX_SUBMISSION_VALUES + 1, dtype=torch.bool), big)
    legacy = tmp_path / "legacy.pt"
    torch.save([Payload(tmp_path / "ran"), print], legacy, _use_new_zipfile_serialization=False)
    for path in (big, legacy):
        with pytest.raises(KitFileError) as on_disk:
            verify_path(path)
        with pytest.raises(KitFileError) as in_memory:
            verify_bytes(path.read_bytes(), "bundle.zip:member.pt", SMALL)
        assert (in_memory.value.problem, str(in_memory.value).split(":")[0]) == (on_disk.value.problem, "bundle.zip")
    assert on_disk.value.problem.startswith("refused: holds objects that are not plain tensors")
    assert not (tmp_path / "ran").exists()


def test_a_manifest_that_says_the_labels_were_dropped_is_a_provenance_row(tmp_path):
    """The export's manifest records a research set whose labels the challenge file cannot carry: the row says its
    note, or the plain words when there is none, and keeps what the manifest wrote."""
    path = save_torch(torch.zeros(CIFAR100.shape), tmp_path / "cifar100.pt")
    dropped = {"note": "soft labels dropped: the scorer trains on default-order hard labels", "kind": "soft"}
    save_json({"labels_dropped": dropped}, tmp_path / "manifest.json")
    assert verify_path(path).check("provenance") == Check("provenance", WARN, dropped["note"], dropped)
    save_json({"labels_dropped": {"kind": "soft"}}, tmp_path / "manifest.json")
    assert verify_path(path).check("provenance") == Check("provenance", WARN, "exported with its labels dropped",
                                                          {"kind": "soft"})
    (tmp_path / "manifest.json").write_text("{not json")
    row = verify_path(path).check("provenance")
    assert row.status == WARN and row.reason.startswith(str(tmp_path / "manifest.json")) and row.reason.endswith(
        ": ignored")


def test_where_the_spec_came_from_is_said(tmp_path):
    path = save_torch(torch.zeros(CIFAR100.shape), tmp_path / "images.pt")
    assert verify_path(path, spec=CIFAR100).spec_source == "caller"
    assert verify_path(path, dataset="cifar100").spec_source == "--dataset"
    array = tmp_path / "array.pt"
    torch.save(np.zeros((2, 3), np.float32), array)
    judged = verify_path(array)  # refused as a numpy array: no shape to resolve a spec from
    assert judged.check("type").status == FAIL and (judged.spec, judged.spec_source) == (None, None)
    given = verify_path(array, spec=CIFAR100)
    assert judged.path == str(array) and (given.spec, given.spec_source) == (CIFAR100, "caller")


def test_an_artifact_that_declares_its_own_normalization_is_judged_by_the_datasets(tmp_path):
    own = replace(CIFAR100, mean=(0.5, 0.5, 0.5), challenge=False)
    path = DistilledArtifact(torch.zeros(CIFAR100.shape), default_labels(100, 10), own).save(
        tmp_path / "set.safetensors")
    report = verify_path(path)
    assert report.spec == CIFAR100 and report.check("provenance") == Check(
        "provenance", WARN, "the artifact's metadata declares a spec that normalizes with mean (0.5, 0.5, 0.5), std "
        f"{CIFAR100.std}, not cifar100's mean/std: ignored, judged by the dataset's own")


def test_an_oversized_artifact_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.safetensors"
    save_tensors({"images": torch.zeros(2)}, path, {})
    with open(path, "r+b") as f:  # sparse: that large, nothing on disk
        f.truncate(MAX_SUBMISSION_BYTES + 1)
    with pytest.raises(KitFileError) as caught:
        verify_path(path)
    assert caught.value.problem.startswith(f"is {MAX_SUBMISSION_BYTES + 1:,} bytes; a challenge submission is at most")


def test_numpys_dtype_classes_are_a_numpy_array_too(tmp_path):
    """A pickle that names numpy's dtype classes (``numpy.dtypes.*``) besides an array's own globals is named as a
    numpy array, not refused as code."""
    path = tmp_path / "cifar100.pt"
    torch.save([np.zeros(2, np.float32), np.dtypes.Float32DType], path)
    assert any(n.startswith("numpy.dtypes.") for n in torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert verify_path(path).check("type") == Check(
        "type", FAIL, "a numpy array, not a torch.Tensor: the scorer crashes on it; save torch.from_numpy(array)")


def test_the_lowest_classes_are_listed_in_class_order_among_ties():
    """20 classes: the first ten all agree, the last ten 4 of 5: the lowest three are the first of the ties."""
    twenty = CIFAR100.subset(20, ipc=5)
    rows = [[c] * 5 for c in range(10)] + [[c] * 4 + [0] for c in range(10, 20)]
    row = check_reference(predicted(*rows), twenty, Lookup(20))
    assert row.status == PASS and row.reason.endswith("lowest: class 10 4/5, class 11 4/5, class 12 4/5")


def test_a_reference_model_that_does_not_fit_names_its_last_mismatch(tmp_path, trained_reference):
    net, _ = trained_reference
    state = net.state_dict()
    two = {**state, "features.0.weight": torch.zeros(5, 3, 3, 3), "classifier.bias": torch.zeros(7)}
    problem = refused(save_torch(two, tmp_path / "two.pt"), REF)
    assert problem.startswith(f"does not fit a ConvNet for {REF.describe()} (") and "classifier.bias" in problem
    assert "features.0.weight" not in problem


def ref_other_normalization(means: torch.Tensor, spec, other) -> bool:
    """The hint's rule, plainly: the set's mean colour projected on where ``other``'s normalization would put the
    dataset's images, t (0 here, 1 there), fires inside (0.5, 2) and more than 3 standard errors from 0."""
    e = [(m - om) / os for m, om, os in zip(spec.mean, other.mean, other.std, strict=True)]
    ee = sum(v * v for v in e)
    n = means.shape[0]
    mu = [float(means[:, c].sum()) / n for c in range(3)]
    se = [float(((means[:, c] - mu[c]) ** 2).sum() / (n - 1)) ** 0.5 / n ** 0.5 for c in range(3)]
    t = sum(m * v for m, v in zip(mu, e, strict=True)) / ee
    se_t = sum(v ** 2 * s ** 2 for v, s in zip(e, se, strict=True)) ** 0.5 / ee
    return 0.5 < t < 2 and t > 3 * se_t


def test_the_other_datasets_hint_follows_its_rule_over_many_sets():
    g = torch.Generator().manual_seed(0)
    e = (torch.tensor(CIFAR100.mean, dtype=torch.float64) - torch.tensor(TINYIMAGENET.mean)) / torch.tensor(
        TINYIMAGENET.std)
    fired = {True: 0, False: 0}
    cases = [(t, spread, n, torch.tensor([1.0, 0.3, 2.0])) for t, spread, n in itertools.product(
        [0.3, 0.45, 0.6, 1.0, 1.5, 1.9, 2.2, 3.0], [0.0, 0.02, 0.05, 0.2, 0.6], [4, 12])]
    cases += [(1.0, spread, 12, torch.tensor([1.0, 0.0, 0.0])) for spread in (0.5, 0.55, 0.6, 0.65, 0.7)]  # one channel
    for t, spread, n, channels in cases:
        means = t * e + spread * torch.randn(n, 3, generator=g, dtype=torch.float64) * channels
        images = means.view(n, 3, 1, 1).expand(n, 3, 4, 4)  # each image flat: its channel means exact
        expected = ref_other_normalization(means, CIFAR100, TINYIMAGENET)
        assert (_other_normalization_hint(images, CIFAR100) is not None) == expected, (t, spread, n)
        fired[expected] += 1
    assert min(fired.values()) >= 10  # both answers met often
    for edge in (0.5, 2.0):  # at the interval's ends exactly: outside
        assert _other_normalization_hint((edge * e).view(1, 3, 1, 1).expand(2, 3, 4, 4), CIFAR100) is None
    sits = _other_normalization_hint(e.view(1, 3, 1, 1).expand(2, 3, 4, 4), CIFAR100)
    assert sits == (f"the means sit near ({', '.join(f'{v:+.2f}' for v in e.tolist())}), where cifar100 images "
                    "normalized with tinyimagenet's mean/std would be, not near 0: check the normalization")


def test_the_spectrum_is_measured_at_any_amplitude_and_from_two_rings():
    """The fitted exponent does not depend on the images' scale (faint images included), and 8 px images (two
    rings) are measured; a channel statistic needs two channels."""
    images = natural(3, 32)[..., :8, :8]
    for faint in (images, 0.001 * images):
        assert spectral_exponent(faint) == pytest.approx(ref_spectral_exponent(images), abs=1e-6)
        assert channel_correlation(faint) == pytest.approx(ref_channel_correlation(faint), abs=1e-12)
    assert np.isnan(channel_correlation(images[:, :1]))
