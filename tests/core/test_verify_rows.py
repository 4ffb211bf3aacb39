"""The format rows word for word (type, spec, shape, dtype, finite), and which rows ``verify_tensor`` writes in which
order with the spec it settles on: each expected line written out here as a user reads it."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from challenge_kit.core.contract import CIFAR100, TINYIMAGENET, default_labels, normalize
from challenge_kit.core.verify import FAIL, PASS, WARN, Check, verify_tensor
from challenge_kit.core.verify.format import check_dtype, check_finite, check_shape, check_spec, check_type

SMALL = CIFAR100.subset(10)  # 100 images of 3x32x32
NOT_BARE = "not a bare tensor: the scorer crashes on it"


def shaped(*shape: int) -> torch.Tensor:
    """A tensor of that shape that takes no memory (the checks read only its shape)."""
    return torch.zeros(1).expand(*shape)


@pytest.mark.parametrize("obj,reason", [
    ({"images": shaped(2, 3, 4, 4), "labels": torch.zeros(2)},
     f"a dict with keys images, labels, {NOT_BARE}; save the tensor itself, e.g. torch.save(obj['images'], path)"),
    ({"x": torch.zeros(2), 5: "five", "video": shaped(1, 2, 3, 4, 4)}, f"a dict with keys x, 5, video, {NOT_BARE}"),
    (np.zeros((2, 3), np.float32), "a numpy array (float32, 2x3), not a torch.Tensor: the scorer crashes on it; "
                                   "save torch.from_numpy(array)"),
    ([torch.zeros(1)] * 3, f"a list of 3 items, {NOT_BARE}"),
    ((torch.zeros(1),) * 2, f"a tuple of 2 items, {NOT_BARE}"),
    (5, "a int, not a bare torch.Tensor"),
    (None, "a NoneType, not a bare torch.Tensor"),
])
def test_what_is_not_a_bare_tensor_is_named(obj, reason):
    assert check_type(obj) == Check("type", FAIL, reason)
    assert check_type(torch.zeros(1)) == Check("type", PASS, "a bare torch.Tensor")


def test_the_spec_row_says_where_it_came_from_and_what_the_scorer_accepts():
    mine = replace(SMALL, name="mine", challenge=False)
    assert check_spec(CIFAR100, "--dataset") == Check("spec", PASS, f"{CIFAR100.describe()} (spec from --dataset)")
    assert check_spec(CIFAR100, None) == Check("spec", PASS, CIFAR100.describe())
    assert check_spec(SMALL, "caller") == Check("spec", WARN, f"{SMALL.describe()} (spec from caller); the scorer "
                                                              "only accepts 1000x3x32x32")
    assert check_spec(mine, None) == Check("spec", WARN, mine.describe())


@pytest.mark.parametrize("shape,spec,reason", [
    ((5, 3, 32, 32), None, "5x3x32x32 matches no challenge dataset (expected cifar100 1000x3x32x32, tinyimagenet "
                           "2000x3x64x64)"),
    ((2000, 3, 64, 64), CIFAR100, "2000x3x64x64 is not the 1000x3x32x32 that cifar100 needs (tinyimagenet's shape: "
                                  "wrong dataset?)"),
    ((1000, 3, 32, 32), SMALL, "1000x3x32x32 is not the 100x3x32x32 that cifar100 needs"),
    ((200, 3, 32, 32), CIFAR100, "200x3x32x32 is not the 1000x3x32x32 that cifar100 needs (a subset export of 20 "
                                 "classes? the scorer needs all 100)"),
    ((205, 3, 32, 32), CIFAR100, "205x3x32x32 is not the 1000x3x32x32 that cifar100 needs"),
    ((1010, 3, 32, 32), CIFAR100, "1010x3x32x32 is not the 1000x3x32x32 that cifar100 needs"),
    ((200, 3, 31, 31), CIFAR100, "200x3x31x31 is not the 1000x3x32x32 that cifar100 needs"),
    ((400, 3, 64, 64), TINYIMAGENET, "400x3x64x64 is not the 2000x3x64x64 that tinyimagenet needs (a subset export of "
                                     "40 classes? the scorer needs all 200)"),
])
def test_a_wrong_shape_is_named_with_what_it_may_be(shape, spec, reason):
    assert check_shape(shaped(*shape), spec) == Check("shape", FAIL, reason)
    assert check_shape(shaped(*CIFAR100.shape), CIFAR100) == Check("shape", PASS, "1000x3x32x32 = 100 classes x 10 "
                                                                                  "per class")


GRAD = "; saved with requires_grad=True (detach before saving)"


@pytest.mark.parametrize("dtype,grad,status,reason", [
    (torch.uint8, False, FAIL, "uint8: integer images; the scorer casts with .float() and trains on the raw values "
                               "(normalize to float32 first)"),
    (torch.float16, False, WARN, "float16: precision loss (relative step 1e-03); the scorer casts to float32"),
    (torch.bfloat16, True, WARN, f"bfloat16: precision loss (relative step 8e-03); the scorer casts to float32{GRAD}"),
    (torch.float64, False, WARN, "float64: the scorer casts to float32; save float32"),
    (torch.float64, True, WARN, f"float64: the scorer casts to float32; save float32{GRAD}"),
    (torch.float32, True, WARN, f"float32{GRAD}"),
    (torch.float32, False, PASS, "float32"),
])
def test_the_dtype_row(dtype, grad, status, reason):
    images = torch.zeros(2, 3, 4, 4, dtype=dtype, requires_grad=grad)
    assert check_dtype(images) == Check("dtype", status, reason)


def test_the_finite_row_counts_nan_and_inf():
    values = torch.tensor([0.0, float("nan"), float("inf"), -float("inf"), 1.0] + [0.0] * 7)
    assert check_finite(values) == Check("finite", FAIL, "1 NaN and 2 inf values (of 12)", {"nan": 1, "inf": 2})
    assert check_finite(torch.zeros(3)) == Check("finite", PASS, "no NaN or inf")
    assert check_finite(torch.zeros(3, dtype=torch.int64)) == Check("finite", PASS, "integer values")


def test_verify_tensor_writes_its_rows_in_order_with_the_spec_it_settled_on():
    images = normalize(torch.rand(CIFAR100.shape, generator=torch.Generator().manual_seed(0)), CIFAR100)
    by_shape = verify_tensor(images)
    assert (by_shape.spec, by_shape.spec_source, by_shape.path) == (CIFAR100, "shape", None)
    assert [c.name for c in by_shape.checks] == ["type", "spec", "shape", "dtype", "finite", "normalization"]
    odd = verify_tensor(torch.zeros(5, 3, 8, 8), path="odd.pt")
    assert (odd.spec, odd.spec_source, odd.path) == (None, None, "odd.pt")
    assert [c.name for c in odd.checks] == ["type", "shape", "dtype", "finite"]
    given = verify_tensor(images[:100], SMALL, default_labels(10, 10), 0.01)
    assert (given.spec, given.spec_source) == (SMALL, "caller")
    assert [c.name for c in given.checks] == ["type", "spec", "shape", "dtype", "finite", "normalization", "labels",
                                              "lr"]
    assert verify_tensor(images[:100], SMALL, spec_source="--dataset").spec_source == "--dataset"
    assert verify_tensor([images]).checks == [check_type([images])]


def test_a_reference_model_is_skipped_by_name_when_the_shape_is_not_the_specs():
    report = verify_tensor(torch.zeros(90, 3, 32, 32), SMALL, reference_model=nn.Identity())
    assert report.checks[-1] == Check("reference", WARN, "skipped: the images do not have the spec's shape")
