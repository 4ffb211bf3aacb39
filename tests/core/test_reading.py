"""The safe loader (``core/reading.py``) on files written plainly here in their real formats: torch's pickle-stream
layout and its zip, safetensors by ``safetensors.torch``, bare pickles; each refusal is the whole line a user reads.

Tests of the hostile files through the commands are in ``test_untrusted.py``; these pin the loader's own promises:
the rows it reads, the bounds a zip member is held to, every tensor of a file checked wherever it sits.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import helpers
import pytest
import torch
from safetensors.torch import save_file

from challenge_kit.core.contract import MAX_SUBMISSION_VALUES, RECORD_ROOM, SUBMISSION, Bounds
from challenge_kit.core.errors import KitFileError
from challenge_kit.core.reading import TAR, load_rows, load_torch, load_torch_bytes, read_metadata

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
    assert torch.equal(load_torch_bytes(saved(torch.ones(4)), "full.pt", TINY), torch.ones(4))  # at the limit: read
    assert MAX_SUBMISSION_VALUES == 2000 * 3 * 64 * 64  # the largest submission is exactly at its limit
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


def test_the_pickle_bound_is_the_last_opcode_of_the_leading_four_pickles():
    """The pickle-stream layout's four leading pickles are scanned op by op (``pickletools.genops``, written out
    here over the bytes): a bound at the furthest opcode's offset passes, one byte less is refused; and a file of
    pickle protocol 0 (no PROTO opcode to skip) is scanned from its first byte, then refused by the loader."""
    images = torch.randn(2, 3, 4, 4)
    data = saved(images, legacy=True)
    stream, furthest = io.BytesIO(data), 0
    for _ in range(4):
        furthest = max(at for _op, _arg, at in pickletools.genops(stream))
    at_bound = Bounds("a test file", "a tensor", max_bytes=100_000, max_values=100, max_pickle=furthest)
    assert torch.equal(load_torch_bytes(data, "old.pt", at_bound), images)
    below = Bounds("a test file", "a tensor", max_bytes=100_000, max_values=100, max_pickle=furthest - 1)
    assert refusal(data, below) == (f"its pickle is over {furthest - 1:,} bytes, a tensor's is a few hundred (a numpy "
                                    "array or a Python list saved instead of a tensor?): refused unread")
    buffer = io.BytesIO()
    torch.save(images, buffer, _use_new_zipfile_serialization=False, pickle_protocol=0)
    assert buffer.getvalue()[:1] == b"L"  # the magic number as a protocol-0 LONG: no PROTO opcode first
    assert refusal(buffer.getvalue()) == "refused: holds objects that are not plain tensors (unsafe content)"


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
    brace = pickle.dumps("a{", protocol=2)  # a pickle whose ninth byte is a safetensors header's opening brace
    assert brace[8:9] == b"{" and refusal(brace, None) == f"{CORRUPT} (Invalid magic number; corrupt file?)"


def test_only_zero_bytes_make_an_empty_header():
    problem = refusal(b"X" * 600, None)
    assert problem.startswith(CORRUPT) and "zero bytes" not in problem, problem
    assert refusal(bytes(600), None).startswith("begins with 512 zero bytes")


def test_a_safetensors_file_is_named_from_its_first_nine_bytes():
    """Eight bytes of header length, then the header's ``{``: the shortest start of a safetensors file."""
    assert refusal((2).to_bytes(8, "little") + b"{") == (
        "is a safetensors file, not a torch file: torch.load (the scorer's reader) cannot read it; save the tensor "
        "with torch.save")


def zip_records(data: bytes) -> list[zipfile.ZipInfo]:
    return zipfile.ZipFile(io.BytesIO(data)).infolist()


def central(data: bytes, name: str, offset: int, value: int, width: int = 4) -> bytes:
    """``data`` with one field of ``name``'s central directory header (APPNOTE 4.3.12) set to ``value``."""
    at = data.index(b"PK\x01\x02")
    while data[at + 46:at + 46 + int.from_bytes(data[at + 28:at + 30], "little")] != name.encode():
        at = data.index(b"PK\x01\x02", at + 4)
    return data[:at + offset] + value.to_bytes(width, "little") + data[at + offset + width:]


def test_a_zip_is_refused_unread_by_its_directory():
    """The directory's size as the end record declares it (or the zip64 one, whichever is larger) and its count of
    records are held to the kind's, before ``zipfile`` builds an object per record."""
    few = Bounds("a test file", "4 values", max_bytes=100_000, max_values=100, max_records=4)
    three = saved({f"t{i}": torch.zeros(1) for i in range(3)})
    assert refusal(three, few) == (f"holds {len(zip_records(three)):,} records; a test file holds a tensor or a dict "
                                   "of a few (at most 4 records): refused unread")
    one = Bounds("a test file", "4 values", max_bytes=100_000, max_values=100, max_records=1)
    many = saved({f"t{i}": torch.zeros(1) for i in range(20)})
    end = many.rindex(b"PK\x05\x06")
    declared = int.from_bytes(many[end + 12:end + 16], "little")  # size of the central directory (APPNOTE 4.3.16)
    assert declared > 1024 and refusal(many, one) == (
        f"has a zip directory of {declared:,} bytes; a test file holds a tensor or a dict of a few (at most 1 "
        "records): refused unread")
    images = saved(torch.zeros(2, 3, 4, 4))
    zip64 = images.rindex(b"PK\x06\x06")  # torch writes a zip64 end record; its directory size at offset 40
    claimed = images[:zip64 + 40] + (1 << 20).to_bytes(8, "little") + images[zip64 + 48:]
    over = ("has a zip directory of 1,048,576 bytes; a challenge submission holds a tensor or a dict of a few (at most "
            "64 records): refused unread")
    assert refusal(claimed) == over
    highest = images[:zip64 + 40] + (1 << 56).to_bytes(8, "little") + images[zip64 + 48:]  # all 8 bytes are read
    assert refusal(highest).startswith("has a zip directory of 72,057,594,037,927,936 bytes")
    end = claimed.rindex(b"PK\x05\x06")  # a comment that puts the zip64 record first in the window: still read
    first = claimed[:end + 20] + (65535 + 22 - 76 - 22).to_bytes(2, "little") + claimed[end + 22:] + b"c" * 65459
    assert len(first) - 65535 - 22 == zip64 and refusal(first) == over
    locator = claimed.rindex(b"PK\x06\x07")  # without its locator the zip64 record is not zipfile's: nor ours
    unlocated = claimed[:locator] + b"XXXX" + claimed[locator + 4:]
    assert refusal(unlocated) == f"{CORRUPT} (Bad magic number for central directory)"


def test_the_end_record_is_looked_for_where_a_zip_can_have_it():
    """A zip ends with its end record and a comment of at most 65,535 bytes: the record is found behind the longest
    comment (here refused by its directory, before torch reads it), and not a byte further back."""
    commented = io.BytesIO(saved(torch.arange(4.0)))
    with zipfile.ZipFile(commented, "a") as z:
        z.comment = b"c" * 65535
    data = commented.getvalue()
    end = data.rindex(b"PK\x05\x06")
    assert len(data) - end == 22 + 65535
    none = Bounds("a test file", "4 values", max_bytes=200_000, max_values=100, max_records=0)
    assert refusal(data, none) == (f"has a zip directory of {int.from_bytes(data[end + 12:end + 16], 'little'):,} "
                                   "bytes; a test file holds a tensor or a dict of a few (at most 0 records): refused "
                                   "unread")
    too_far = b"PK\x03\x04" + b"PK\x05\x06" + bytes(18) + bytes(65536)  # a comment one byte too long
    assert refusal(too_far) == f"{CORRUPT} (no zip end record)"
    plain = saved(torch.arange(4.0))
    end = plain.rindex(b"PK\x05\x06")  # its directory offset forged into a second signature: the record is last
    forged = plain[:end + 16] + b"PK\x05\x06" + plain[end + 20:]
    assert refusal(forged, none) == (f"has a zip directory of {int.from_bytes(plain[end + 12:end + 16], 'little'):,} "
                                     "bytes; a test file holds a tensor or a dict of a few (at most 0 records): "
                                     "refused unread")
    assert refusal(b"PK\x05\x06" + bytes(18), none) == f"{CORRUPT} (a zip with no records)"  # the record alone
    # an end record that points at a directory that is not there: zipfile's own words, after the file's name
    assert refusal(b"PK\x03\x04" + bytes(200) + b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 100, 4, 0)) == (
        f"{CORRUPT} (Bad magic number for central directory)")
    assert refusal(plain[:-5]) == f"{CORRUPT} (no zip end record)"  # its last 5 bytes cut: the record is short
    inside = io.BytesIO(saved(torch.tensor(list(b"PK\x05\x06" * 8), dtype=torch.uint8)))  # signatures in a record
    with zipfile.ZipFile(inside, "a") as z:
        z.comment = b"after the end record"
    data = inside.getvalue()
    end = data.rindex(b"PK\x05\x06")  # the last signature is the end record's
    assert data.index(b"PK\x05\x06") < end and refusal(data, none) == (
        f"has a zip directory of {int.from_bytes(data[end + 12:end + 16], 'little'):,} bytes; a test file holds a "
        "tensor or a dict of a few (at most 0 records): refused unread")


def test_storages_may_take_the_whole_file_and_not_a_byte_more(tmp_path):
    """A pickle-stream file can declare storages it never fills: what they declare is held to the file's size."""
    for numel, fits in ((80, True), (81, False)):  # float32: 320 and 324 bytes, in a file padded to 320
        path = helpers.unfilled(tmp_path / f"{numel}.pt", numel)
        path.write_bytes(path.read_bytes().ljust(320, b"\0"))
        if fits:
            assert load_torch(path, SUBMISSION).shape == (numel,)
        else:
            with pytest.raises(KitFileError) as info:
                load_torch(path, SUBMISSION)
            assert info.value.problem == f"{CORRUPT} (its tensors declare 324 bytes, more than the file's 320)"


def test_records_that_misstate_their_sizes_are_corrupt():
    data = saved(torch.arange(4.0))
    pickle_name = next(i.filename for i in zip_records(data) if i.filename.endswith("data.pkl"))
    tensor_name = next(i.filename for i in zip_records(data) if i.filename.endswith("data/0"))
    encrypted = central(data, pickle_name, 8, 1, 2)  # general purpose flag, bit 0
    assert refusal(encrypted) == f"{CORRUPT} (record {pickle_name!r} is encrypted or its sizes disagree)"
    inflated = central(data, tensor_name, 24, 1 << 20)  # uncompressed size
    assert refusal(inflated) == f"{CORRUPT} (record {tensor_name!r} is encrypted or its sizes disagree)"
    beyond = central(central(data, tensor_name, 20, 1 << 20), tensor_name, 24, 1 << 20)  # both sizes
    declared = sum(i.compress_size for i in zip_records(beyond))
    assert refusal(beyond) == f"{CORRUPT} (its records declare {declared:,} bytes, more than the file's {len(data):,})"
    values = saved(list(range(RECORD_ROOM // 4)))
    size = next(i.file_size for i in zip_records(values) if i.filename.endswith("data.pkl"))
    assert size > RECORD_ROOM and refusal(values) == (
        f"its pickle is {size:,} bytes, a tensor's is a few hundred (a numpy array or a Python list saved instead of "
        "a tensor?): refused unread")


def test_a_zips_bounds_are_inclusive():
    """A zip with exactly as many records as its kind allows, and a pickle exactly as long, is read; and records
    whose sizes sum to the file's exactly pass that check (torch then finds the file corrupt)."""
    data = saved({f"t{i}": torch.zeros(1) for i in range(3)})
    records = zip_records(data)
    pickle_size = next(i.file_size for i in records if i.filename.endswith("data.pkl"))
    exact = Bounds("a test file", "4 values", max_bytes=len(data), max_values=100, max_records=len(records),
                   max_pickle=pickle_size)
    assert set(load_torch_bytes(data, "three.pt", exact)) == {"t0", "t1", "t2"}
    tensor = next(i for i in records if i.filename.endswith("data/0"))
    filled = len(data) - sum(i.compress_size for i in records) + tensor.compress_size
    whole = central(central(data, tensor.filename, 20, filled), tensor.filename, 24, filled)
    assert sum(i.compress_size for i in zip_records(whole)) == len(whole)
    problem = refusal(whole)
    assert problem.startswith(CORRUPT) and "its records declare" not in problem, problem


class _Opens:
    """Unpickling this would create ``marker`` (it calls ``open(marker, "w")``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_no_setting_of_torchs_turns_the_restricted_load_off(tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes torch.load unpickle anything where ``weights_only`` is not
    passed: the loader still refuses the payload unrun, as torch.load left alone would not."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker, path = tmp_path / "ran", tmp_path / "payload.pt"
    torch.save(_Opens(marker), path)
    with pytest.raises(KitFileError, match="refused: holds objects that are not plain tensors"):
        load_torch(path, SUBMISSION)
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own warning that the setting is in force
        torch.load(path)  # the setting is real: torch's default load runs the payload
    assert marker.exists()


def test_a_tensor_saved_on_a_gpu_loads_on_the_cpu():
    """A user's submission saved from CUDA names ``cuda:0`` for its storage: read onto the CPU on any machine."""
    plain = zipfile.ZipFile(io.BytesIO(saved(torch.arange(4.0))))
    cuda = io.BytesIO()
    with zipfile.ZipFile(cuda, "w") as z:  # the same records, the storage's location rewritten as torch.save writes it
        for info in plain.infolist():
            body = plain.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in body
                body = body.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            z.writestr(info.filename, body)
    loaded = load_torch_bytes(cuda.getvalue(), "gpu.pt", SUBMISSION)
    assert loaded.device.type == "cpu" and torch.equal(loaded, torch.arange(4.0))


def test_a_tar_without_the_ustar_mark_is_named_by_torch_and_refused(tmp_path):
    """Tars of the oldest (v7) layout have no ``ustar`` mark for the header test to see; torch still knows one."""
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name in ("storages", "tensors", "pickle"):
            info = tarfile.TarInfo(name)
            info.size = len(pickle.dumps(0))
            archive.addfile(info, io.BytesIO(pickle.dumps(0)))
    raw = bytearray(tar.getvalue())
    for at in range(0, len(raw), 512):  # each header: the mark blanked, the checksum (POSIX, octal) made again
        if raw[at + 257:at + 262] == b"ustar":
            raw[at + 257:at + 265] = bytes(8)
            raw[at + 148:at + 156] = b" " * 8
            raw[at + 148:at + 156] = b"%06o\x00 " % sum(raw[at:at + 512])
    path = tmp_path / "old.pt"
    path.write_bytes(bytes(raw))
    assert tarfile.open(path).getnames() == ["storages", "tensors", "pickle"]
    with pytest.raises(KitFileError) as info:
        load_torch(path)
    assert str(info.value) == f"{path}: {TAR}"


def test_what_is_not_a_file_is_named(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    os.mkfifo(tmp_path / "pipe.pt")
    for name, problem in [("empty.pt", "is empty (0 bytes): truncated or corrupt"),
                          ("folder.pt", "is a folder, not a file"),
                          ("pipe.pt", "is not a regular file (a device, a pipe or a socket)"),
                          ("absent.pt", "no such file"),
                          ("empty.pt/inside.pt", "cannot be read (Not a directory)"),
                          ("x" * 300 + ".pt", "cannot be read (File name too long)")]:
        with pytest.raises(KitFileError) as info:
            load_torch(tmp_path / name, SUBMISSION)
        assert str(info.value) == f"{tmp_path / name}: {problem}"
