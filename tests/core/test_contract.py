"""The challenge contract holds exactly the values of docs/contract.md."""

import json

import pytest
import torch

from challenge_kit.core.contract import (
    CIFAR100,
    SPECS,
    TINYIMAGENET,
    DatasetSpec,
    default_labels,
    denormalize,
    get_spec,
    normalize,
    spec_for_shape,
)
from challenge_kit.core.errors import KitValueError


def test_cifar100_spec_matches_spec_table():
    s = CIFAR100
    assert (s.name, s.num_classes, s.image_size, s.ipc, s.channels) == ("cifar100", 100, 32, 10, 3)
    assert s.mean == (0.5071, 0.4866, 0.4409)
    assert s.std == (0.2673, 0.2564, 0.2762)
    assert s.challenge and s.class_names is None
    assert s.shape == (1000, 3, 32, 32) and s.num_images == 1000
    assert s.submission_file == "cifar100.pt" and s.reference_file == "cifar100_test.pt"


def test_tinyimagenet_spec_matches_spec_table():
    s = TINYIMAGENET
    assert (s.name, s.num_classes, s.image_size, s.ipc, s.channels) == ("tinyimagenet", 200, 64, 10, 3)
    assert s.mean == (0.485, 0.456, 0.406)
    assert s.std == (0.229, 0.224, 0.225)
    assert s.challenge and s.class_names is None
    assert s.shape == (2000, 3, 64, 64) and s.num_images == 2000
    assert s.submission_file == "tinyimagenet.pt" and s.reference_file == "tinyimagenet_test.pt"


def test_registry_and_get_spec():
    assert set(SPECS) == {"cifar100", "tinyimagenet"}
    assert get_spec("cifar100") is CIFAR100 and get_spec("tinyimagenet") is TINYIMAGENET
    with pytest.raises(KitValueError, match="^unknown dataset 'cifar10'; expected one of cifar100, tinyimagenet$"):
        get_spec("cifar10")


def test_describe_says_the_shape_and_whether_it_is_the_challenge():
    assert CIFAR100.describe() == "cifar100: 100 classes x 10 IPC, 3x32x32, challenge"
    assert TINYIMAGENET.subset(3, ipc=2).describe() == \
        "tinyimagenet: 3 classes x 2 IPC, 3x64x64, subset (not a challenge submission)"


def test_default_labels_are_class_major():
    labels = default_labels(100, 10)
    expected = [c for c in range(100) for _ in range(10)]
    assert labels.dtype == torch.int64
    assert labels.tolist() == expected
    assert all(labels[i] == i // 10 for i in range(1000))
    assert default_labels(3, 2).tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("spec", [CIFAR100, TINYIMAGENET])
def test_normalize_is_plain_per_channel_mean_std(spec):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 5, generator=g)
    y = normalize(x, spec)
    for c in range(3):
        assert torch.allclose(y[:, c], (x[:, c] - spec.mean[c]) / spec.std[c], atol=1e-6)
    assert torch.allclose(denormalize(y, spec), x, atol=1e-6)
    # a single image (C, H, W) works the same way
    assert torch.allclose(normalize(x[0], spec), y[0])
    assert torch.allclose(denormalize(y[0], spec), x[0], atol=1e-6)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)])
def test_normalize_computes_in_the_images_dtype(dtype, atol):
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64).to(dtype)
    exact = torch.stack([(x[:, c].double() - CIFAR100.mean[c]) / CIFAR100.std[c] for c in range(3)], 1)
    y = normalize(x, CIFAR100)
    assert y.dtype == dtype and torch.allclose(y.double(), exact, rtol=0, atol=atol)
    assert denormalize(y, CIFAR100).dtype == dtype


def test_normalize_keeps_the_shape_of_one_image():
    x = torch.rand(3, 5, 5)
    assert normalize(x, CIFAR100).shape == (3, 5, 5) and denormalize(x, CIFAR100).shape == (3, 5, 5)


def test_labels_and_statistics_are_made_on_the_images_device():
    """The meta device stands in for a GPU: a tensor made on the CPU instead cannot meet the images."""
    assert default_labels(3, 2, device="meta").device.type == "meta"
    x = torch.empty(2, 3, 4, 4, device="meta")
    assert normalize(x, CIFAR100).device.type == "meta" and denormalize(x, CIFAR100).device.type == "meta"


def test_normalize_keeps_dtype_and_float64_round_trip_is_exact():
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    y = normalize(x, CIFAR100)
    assert y.dtype == torch.float64
    assert torch.allclose(denormalize(y, CIFAR100), x, atol=1e-12)


def test_normalize_refuses_integer_pixels():
    with pytest.raises(ValueError, match="floating"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), CIFAR100)


def test_subset_is_not_a_challenge_spec_and_keeps_statistics():
    names = ("a", "b", "c")
    s = TINYIMAGENET.subset(3, names)
    assert not s.challenge
    assert (s.num_classes, s.class_names, s.ipc) == (3, names, 10)
    assert (s.mean, s.std, s.image_size, s.channels, s.name) == (
        TINYIMAGENET.mean, TINYIMAGENET.std, 64, 3, "tinyimagenet")
    assert s.shape == (30, 3, 64, 64)
    assert "not a challenge submission" in s.describe()
    assert CIFAR100.subset(5, ipc=2).shape == (10, 3, 32, 32)
    # the whole dataset with nothing changed is the challenge spec itself
    assert CIFAR100.subset(100) is CIFAR100
    assert not CIFAR100.subset(100, ipc=1).challenge


@pytest.mark.parametrize("n", [1, 2, 99])
def test_subset_takes_any_class_count_from_one(n):
    s = CIFAR100.subset(n)
    assert s.num_classes == n and s.shape == (10 * n, 3, 32, 32) and s.challenge is False


@pytest.mark.parametrize("n", [0, -1, 101])
def test_subset_rejects_bad_class_counts(n):
    with pytest.raises(KitValueError, match="1..100"):
        CIFAR100.subset(n)


@pytest.mark.parametrize("ipc", [0, -3])
def test_subset_rejects_bad_ipc(ipc):
    with pytest.raises(KitValueError, match="ipc"):
        CIFAR100.subset(10, ipc=ipc)


@pytest.mark.parametrize("spec", [CIFAR100, TINYIMAGENET, TINYIMAGENET.subset(2, ("n01", "n02"), ipc=3)])
def test_to_dict_from_dict_round_trip(spec):
    d = spec.to_dict()
    assert isinstance(d["mean"], list) and isinstance(d["std"], list)
    back = DatasetSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec


def test_to_dict_is_plain_json_data():
    assert TINYIMAGENET.subset(2, ("n01", "n02"), ipc=3).to_dict() == {
        "name": "tinyimagenet", "num_classes": 2, "image_size": 64, "ipc": 3, "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225], "channels": 3, "challenge": False, "class_names": ["n01", "n02"]}
    assert CIFAR100.to_dict()["class_names"] is None and CIFAR100.to_dict()["challenge"] is True


def test_the_smallest_spec_and_one_channel_round_trip():
    mono = DatasetSpec("mono", num_classes=1, image_size=1, ipc=1, mean=(0.5,), std=(0.25,), channels=1,
                       challenge=False)
    assert DatasetSpec.from_dict(json.loads(json.dumps(mono.to_dict()))) == mono


def test_a_dict_without_channels_or_challenge_is_three_channels_and_no_challenge():
    d = CIFAR100.to_dict()
    del d["channels"], d["challenge"]
    spec = DatasetSpec.from_dict(d)
    assert spec.channels == 3 and spec.challenge is False
    assert spec.shape == CIFAR100.shape and (spec.mean, spec.std) == (CIFAR100.mean, CIFAR100.std)


@pytest.mark.parametrize("field", ["num_classes", "image_size", "ipc", "channels"])
def test_from_dict_refuses_a_size_of_zero(field):
    d = {**CIFAR100.to_dict(), "challenge": False, field: 0}
    if field == "channels":
        d.update(mean=[], std=[])
    with pytest.raises(KitValueError, match="not a valid dataset spec"):
        DatasetSpec.from_dict(d)


def test_spec_for_shape():
    assert spec_for_shape((1000, 3, 32, 32)) is CIFAR100
    assert spec_for_shape(torch.Size([2000, 3, 64, 64])) is TINYIMAGENET
    assert spec_for_shape((1000, 3, 64, 64)) is None
    assert spec_for_shape((999, 3, 32, 32)) is None
    assert spec_for_shape((3, 32, 32)) is None


@pytest.mark.parametrize("change,match", [
    ({"mean": [0.5, 0.5]}, "not a valid dataset spec"),
    ({"std": [0.2, 0.0, 0.2]}, "not a valid dataset spec"),
    ({"ipc": 0}, "not a valid dataset spec"),
    ({"class_names": ["a"]}, "not a valid dataset spec"),
    ({"num_classes": 10}, "claims to be the 'cifar100' challenge spec"),
    ({"mean": [0.5, 0.5, 0.5]}, "claims to be the 'cifar100' challenge spec"),
    ({"name": "cifar10"}, "claims to be the 'cifar10' challenge spec"),
])
def test_from_dict_refuses_invalid_or_fake_challenge_specs(change, match):
    with pytest.raises(KitValueError, match=match):
        DatasetSpec.from_dict({**CIFAR100.to_dict(), **change})
    with pytest.raises(KeyError):
        DatasetSpec.from_dict({"name": "cifar100"})
    # the same numbers are a fine subset spec when they do not claim to be the challenge
    if "num_classes" in change:
        assert not DatasetSpec.from_dict({**CIFAR100.to_dict(), **change, "challenge": False}).challenge
