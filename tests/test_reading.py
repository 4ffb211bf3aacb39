"""The safe loader (``core/reading.py``) on files written plainly here in their real formats: torch's pickle-stream
layout and its zip, safetensors by ``safetensors.torch``, bare pickles; each refusal is the whole line a user reads.

Tests of the hostile files through the commands are in ``test_untrusted.py``; these pin the loader's own promises:
the rows it reads, the bounds a zip member is held to, every tensor of a file checked wherever it sits.
"""

from __future__ import annotations

import io
import pickle

import pytest
import torch
from safetensors.torch import save_file

from challenge_kit.core.contract import RECORD_ROOM, SUBMISSION, Bounds
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.reading import load_rows, load_torch, load_torch_bytes, read_metadata

CORRUPT = "cannot be read as a torch file, truncated or corrupt"
# a kind of file with small limits, so that a few values are over them
TINY = Bounds("a test file", "4 values", max_bytes=100_000, max_values=4)


def saved(obj, legacy: bool = False) -> bytes:
    """``torch.save``'s bytes: its zip, or its pickle-stream layout (``_use_new_zipfile_serialization=False``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def refusal(data: bytes, bounds: Bounds | None = SUBMISSION, name: str = "bundle.zip:cifar100.pt") -> str:
    """The line a refused file gives, checked to name the file first."""
    with pytest.raises(KitFileError) as info:
        load_torch_bytes(data, name, bounds)
    assert info.value.path == name and str(info.value) == f"{name}: {info.value.problem}"
    return info.value.problem


def test_rows_of_a_safetensors_file_are_those_written(tmp_path):
    path = tmp_path / "expert.safetensors"
    snapshots = torch.arange(12.0).view(4, 3)
    save_file({"snapshots": snapshots}, str(path), metadata={"note": "not JSON", "epochs": "3"})
    assert torch.equal(load_rows(path, "snapshots", [3, 0]), torch.stack([snapshots[3], snapshots[0]]))
    assert read_metadata(path) == {"note": "not JSON", "epochs": "3"}  # not all JSON: the text as written
    for name, rows, why in [("trajectory", [0], "File does not contain tensor trajectory"),
                            ("snapshots", [4], "index 4 is out of bounds for dimension 0 with size 4")]:
        with pytest.raises(KitFileError) as info:
            load_rows(path, name, rows)
        assert str(info.value) == f"{path}: cannot read rows {rows} of {name!r} ({why})"


def test_a_truncated_safetensors_header_names_the_file(tmp_path):
    path = tmp_path / "expert.safetensors"
    save_file({"snapshots": torch.zeros(4)}, str(path))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(KitFileError) as info:
        read_metadata(path)
    assert str(info.value) == (f"{path}: not a readable safetensors file (Error while deserializing header: invalid "
                               "header length)")


def test_a_zip_member_is_held_to_the_bounds_of_its_kind():
    two = saved({"images": torch.zeros(3), "labels": torch.zeros(2)})
    assert refusal(two, TINY) == "holds 5 values; a test file holds at most 4 (4 values)"  # counted over all tensors
    small = Bounds("a test file", "4 values", max_bytes=len(two) - 1, max_values=4)
    assert refusal(two, small) == (f"is {len(two):,} bytes; a test file is at most {len(two) - 1:,} (every value at 8 "
                                   "bytes, and torch's records): refused unread")
    assert load_torch_bytes(two, "bundle.zip:cifar100.pt", None)["images"].shape == (3,)


def test_a_pickle_stream_file_is_scanned_within_its_bounds():
    """torch's pickle-stream layout: magic number, version, system, content, then the storages; its content pickle
    is scanned (not run) and refused unread when longer than a tensor's can be."""
    images = torch.randn(2, 3, 4, 4)
    assert torch.equal(load_torch_bytes(saved(images, legacy=True), "old.pt", SUBMISSION), images)
    values = list(range(RECORD_ROOM // 4))  # a Python list saved instead of a tensor: a pickle over the bound
    assert refusal(saved(values, legacy=True)) == (
        f"its pickle is over {RECORD_ROOM:,} bytes, a tensor's is a few hundred (a numpy array or a Python list saved "
        "instead of a tensor?): refused unread")
    assert load_torch_bytes(saved(values, legacy=True), "old.pt", None) == values  # unbounded: loaded
    assert refusal(saved({"a": images}, legacy=True)[:200]) == f"{CORRUPT} (not enough data in stream to read uint1)"


@pytest.mark.parametrize("keep, detail", [(10, "EOFError"),
                                          (-10, "unexpected EOF, expected 10 more bytes. The file might be "
                                                "corrupted.")])
def test_a_truncated_pickle_stream_file_says_what_torch_saw(tmp_path, keep, detail):
    data = saved({"a": torch.randn(50, 50)}, legacy=True)
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:keep])
    with pytest.raises(KitFileError) as info:
        load_torch(path)
    assert str(info.value) == f"{path}: {CORRUPT} ({detail})"


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_every_tensor_is_checked_wherever_it_sits():
    """A sparse tensor behind a nested dict, a list and a tensor saved twice is found; values are counted over every
    tensor, one saved twice once."""
    images = torch.zeros(2)
    sparse = torch.sparse_coo_tensor([[0]], [1.0], (4,), check_invariants=True)
    hidden = {"labels": sparse, "notes": {"classes": [1, 2]}, "images": images, "again": images}
    assert refusal(saved(hidden)) == "holds a sparse tensor (sparse_coo): the scorer needs dense values; save " \
                                     "tensor.to_dense()"
    shared = {"images": images, "again": images, "more": [torch.zeros(3)]}
    assert refusal(saved(shared), TINY) == "holds 5 values; a test file holds at most 4 (4 values)"
    storage = load_torch_bytes(saved(torch.zeros(3).storage()), "storage.pt", SUBMISSION)
    assert isinstance(storage, torch.TypedStorage) and storage.size() == 3


def test_views_are_refused_only_where_they_repeat_values():
    """An expanded view repeats one stored value: refused even where its storage holds enough others; a view from
    an offset is measured from there; a dimension of one value may have any stride."""
    contiguous = ": save tensor.contiguous() if that is meant"
    assert refusal(saved(torch.zeros(10)[:1].expand(2))) == (
        f"holds a tensor of 2 values over 10 stored ones (expanded or overlapping strides){contiguous}")
    overlapping = torch.zeros(5000)[1000:].as_strided((1000, 3, 32, 32), (1, 1, 1, 1))
    assert refusal(saved(overlapping)) == (
        f"holds a tensor of 3,072,000 values over 4,000 stored ones (expanded or overlapping strides){contiguous}")
    row = torch.arange(3.0).as_strided((1, 3), (0, 1))
    assert torch.equal(load_torch_bytes(saved(row), "row.pt", SUBMISSION), row)


def test_a_bare_pickle_is_not_a_torch_file():
    assert refusal(pickle.dumps({"a": 1}, protocol=2), None) == f"{CORRUPT} (Invalid magic number; corrupt file?)"
