"""Reading files that may come from strangers: safetensors and restricted ``torch.load``.

Nothing is ever unpickled without ``weights_only=True``: submissions and buffers come from strangers. A torch file is
also checked before ``torch.load`` reads it (its kind by its first bytes; a zip's directory: few records, all stored
as written and inside the file, a small pickle) and after (plain dense tensors whose values are all stored), so that
nothing in it takes more memory than its size on disk. ``Bounds`` refuse, unread, what no file of a kind can be.
One file, a little over 300 lines: the checks before and after a load share those bounds and their messages.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from challenge_kit.core.contract import Bounds
from challenge_kit.core.errors import ESCAPES, KitFileError, first_line

# What a tensor in a kit or challenge file can hold: real numbers (images) and integers (labels).
PLAIN_DTYPES = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                torch.bfloat16, torch.float32, torch.float64}
DIRECTORY_ENTRY = 1 << 10  # a torch record's zip directory entry is about 100 bytes
TAR = ("is a tar archive (torch's format before 2017), which cannot be loaded without running its pickle: refused, "
       "nothing loaded")
HEAD = 512  # enough to tell a zip, a pickle, a safetensors header and a tar header apart
ZIP_COMMENT = 0xFFFF  # the longest comment after a zip's 22-byte end record (APPNOTE 4.3.16)


class Refused(KitFileError):
    """The pickle would build more than tensors and plain containers (or is far too long for that): not loaded."""


def file_size(path: str | Path) -> int:
    """The size of the regular file at ``path``; a missing file, a folder, a link loop or a device is refused."""
    try:
        mode = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise KitFileError(path, f"a symbolic link to {os.readlink(path)}, which does not exist") from None
        raise KitFileError(path, "no such file") from None
    except OSError as e:
        what = "a symbolic link that loops" if e.errno == errno.ELOOP else "cannot be read"
        raise KitFileError(path, f"{what} ({e.strerror or e})") from None
    if stat.S_ISDIR(mode.st_mode):
        raise KitFileError(path, "is a folder, not a file")
    if not stat.S_ISREG(mode.st_mode):
        raise KitFileError(path, "is not a regular file (a device, a pipe or a socket)")
    return mode.st_size


def within(path: str | Path, bounds: Bounds | None, size: int | None = None) -> int:
    """``file_size`` (or the ``size`` of what is in memory), refused when no file of the kind can be that large."""
    size = file_size(path) if size is None else size
    if bounds is not None and size > bounds.max_bytes:
        raise KitFileError(path, f"is {size:,} bytes; {bounds.what} is at most {bounds.max_bytes:,} (every value at "
                                 "8 bytes, and torch's records): refused unread")
    return size


def _readable(path: str | Path) -> None:
    """Unreadable is not corrupt (and safetensors reports a permission error as a missing file): say which."""
    try:
        open(path, "rb").close()
    except OSError as e:
        raise KitFileError(path, f"cannot be read ({e.strerror or e})") from None


def read_metadata(path: str | Path) -> dict:
    _readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise KitFileError(path, f"not a readable safetensors file ({e})") from None
    try:
        return {k: json.loads(v) for k, v in meta.items()}
    except json.JSONDecodeError:
        return dict(meta)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    _readable(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KitFileError(path, f"not a readable safetensors file ({e})") from None
    return tensors, read_metadata(path)


def load_rows(path: str | Path, name: str, rows: list[int]) -> torch.Tensor:
    """Only the requested rows of one tensor (memory-mapped), e.g. two snapshots of a long trajectory."""
    try:
        with safe_open(str(path), framework="pt") as f:
            view = f.get_slice(name)
            return torch.stack([view[r] for r in rows])
    except (SafetensorError, OSError, ValueError, IndexError) as e:
        raise KitFileError(path, f"cannot read rows {rows} of {name!r} ({e})") from None


def load_torch(path: str | Path, bounds: Bounds | None = None):
    """``torch.load`` restricted to tensors and plain containers; anything else is refused unrun."""
    size = within(path, bounds)
    _readable(path)
    with open(path, "rb") as f:
        return _load_torch(f, path, size, bounds)


def load_torch_bytes(data: bytes, name: str, bounds: Bounds | None = None):
    """``load_torch`` of a file already in memory (a zip member): nothing is written to disk."""
    return _load_torch(io.BytesIO(data), name, within(name, bounds, len(data)), bounds)


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """What the restricted unpickler refused, without torch's advice to reload with ``weights_only=False``."""
    text = ESCAPES.sub("", str(error))
    called = re.search(r"GLOBAL ([\w.]+)", text)
    if called:
        return f"the pickle would call {called.group(1)}"
    detail = re.search(r"WeightsUnpickler error: (.+?)(?:\.\s|\.?$)", text, re.MULTILINE)
    return detail.group(1) if detail else "unsafe content"


def corrupt(name: str | Path, detail: str) -> KitFileError:
    return KitFileError(name, f"cannot be read as a torch file, truncated or corrupt ({detail})")


def _said(error: BaseException) -> str:
    """torch's first line up to its first sentence about ``weights_only`` (never advice for the user)."""
    kept = []
    for sentence in re.split(r"(?<=\.)\s+", first_line(error)):
        if "weights_only" in sentence:
            break
        kept.append(sentence)
    return " ".join(kept) or type(error).__name__


def _load_torch(f, name: str | Path, size: int, bounds: Bounds | None):
    _check_layout(f, name, size, bounds)
    f.seek(0)
    try:
        with warnings.catch_warnings():  # torch warns about what is refused below; the refusal says it in one line
            warnings.simplefilter("ignore")
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise Refused(name, f"refused: holds objects that are not plain tensors ({refusal_reason(e)})") from None
    except Exception as e:  # a corrupt file can make the unpickler raise anything (IndexError, KeyError...)
        if "legacy .tar format" in str(e):  # an old tar layout that the header test above does not know
            raise KitFileError(name, TAR) from None
        raise corrupt(name, _said(e)) from None
    _check_contents(obj, name, size, bounds)
    return obj


def _check_layout(f, name: str | Path, size: int, bounds: Bounds | None) -> None:
    """What the file is by its first bytes, and for a torch file, that reading it stays within its size."""
    head = f.read(HEAD)
    if size == 0:
        raise KitFileError(name, "is empty (0 bytes): truncated or corrupt")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _check_archive(f, name, size, bounds)
    if len(head) >= 9 and head[:1] != b"\x80" and head[8:9] == b"{":
        raise KitFileError(name, "is a safetensors file, not a torch file: torch.load (the scorer's reader) cannot "
                                 "read it; save the tensor with torch.save")
    if head[257:262] == b"ustar":
        raise KitFileError(name, TAR)
    if not head.strip(b"\0"):
        raise KitFileError(name, f"begins with {len(head)} zero bytes where a torch file has its header: not a torch "
                                 "file (a copy or download that never finished?)")
    if bounds is not None:
        _check_pickles(f, name, bounds)


def _directory_bytes(f, size: int) -> int:
    """The size of the zip's central directory as ``zipfile`` reads it (from the end record, or the zip64 one just
    before it), or -1 without an end record: ``zipfile`` builds an object per entry, so it is bounded first."""
    start = max(0, size - ZIP_COMMENT - 22)
    f.seek(start)
    tail = f.read()
    end = len(tail) - 22 if tail[-22:-18] == b"PK\x05\x06" else tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        return -1
    declared = int.from_bytes(tail[end + 12:end + 16], "little")
    if end >= 76 and tail[end - 20:end - 16] == b"PK\x06\x07" and tail[end - 76:end - 72] == b"PK\x06\x06":
        declared = max(declared, int.from_bytes(tail[end - 36:end - 28], "little"))
    return declared


def _check_archive(f, name: str | Path, size: int, bounds: Bounds | None) -> None:
    """A torch zip: few records, each stored as written (torch.save never compresses, and a compressed record can
    inflate far beyond the file), all inside the file, and a pickle no longer than the kind's."""
    directory = _directory_bytes(f, size)
    if directory < 0:
        raise corrupt(name, "no zip end record")
    if bounds is not None and directory > bounds.max_records * DIRECTORY_ENTRY:
        raise KitFileError(name, f"has a zip directory of {directory:,} bytes; {bounds.what} holds a tensor or a "
                                 f"dict of a few (at most {bounds.max_records} records): refused unread")
    f.seek(0)
    try:
        infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise corrupt(name, first_line(e)) from None
    if not infos:  # torch.load would call it unsafe content
        raise corrupt(name, "a zip with no records")
    if bounds is not None and len(infos) > bounds.max_records:
        raise KitFileError(name, f"holds {len(infos):,} records; {bounds.what} holds a tensor or a dict of a few "
                                 f"(at most {bounds.max_records} records): refused unread")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise KitFileError(name, f"its record {info.filename!r} is compressed (method {info.compress_type}); "
                                     "torch.save stores every record as is, and a compressed one can inflate far "
                                     "beyond the file: refused unread")
        if info.flag_bits & 0x1 or info.file_size != info.compress_size:
            raise corrupt(name, f"record {info.filename!r} is encrypted or its sizes disagree")
        if bounds is not None and info.filename.endswith("data.pkl") and info.file_size > bounds.max_pickle:
            raise Refused(name, f"its pickle is {info.file_size:,} bytes, a tensor's is a few hundred (a numpy array "
                                "or a Python list saved instead of a tensor?): refused unread")
    total = sum(info.compress_size for info in infos)
    if total > size:
        raise corrupt(name, f"its records declare {total:,} bytes, more than the file's {size:,}")


def _check_pickles(f, name: str | Path, bounds: Bounds) -> None:
    """A torch file of the pickle-stream format (``_use_new_zipfile_serialization=False``, or a bare pickle): its
    leading pickles (magic number, version, system, content) scanned, not run, no longer than the kind's."""
    f.seek(0)
    try:
        for _ in range(4):
            if not f.read(1):
                return
            f.seek(-1, io.SEEK_CUR)
            for _op, _arg, at in pickletools.genops(f):
                if at > bounds.max_pickle:
                    raise Refused(name, f"its pickle is over {bounds.max_pickle:,} bytes, a tensor's is a few hundred "
                                        "(a numpy array or a Python list saved instead of a tensor?): refused unread")
    except (ValueError, EOFError, UnicodeDecodeError) as e:
        raise corrupt(name, first_line(e)) from None


def _tensor_problem(t: torch.Tensor) -> str | None:
    """Why ``t`` is not a plain dense tensor whose every value is stored, told before anything reads its values."""
    dtype = str(t.dtype).removeprefix("torch.")
    if t.is_nested:
        return "holds a nested tensor: the scorer needs one dense tensor; save torch.stack(images)"
    if t.layout != torch.strided:
        return (f"holds a sparse tensor ({str(t.layout).removeprefix('torch.')}): the scorer needs dense values; "
                "save tensor.to_dense()")
    if t.is_quantized:
        return f"holds a quantized tensor ({dtype}): the scorer needs float values; save tensor.dequantize()"
    if t.is_meta:
        return "holds a meta tensor: a shape without values (made on device='meta')"
    if t.device.type != "cpu":
        return f"holds a tensor of device {t.device.type!r} that cannot be read on the CPU"
    if t.is_complex():
        return f"holds a {dtype} tensor: images are real numbers (the scorer's .float() would drop the imaginary part)"
    if t.dtype not in PLAIN_DTYPES:
        return f"holds a {dtype} tensor, a type no challenge file uses (float32 images, integer labels)"
    stored = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    if t.numel() > stored or any(n > 1 and s == 0 for n, s in zip(t.shape, t.stride(), strict=True)):
        return (f"holds a tensor of {t.numel():,} values over {max(stored, 0):,} stored ones (expanded or overlapping "
                "strides): save tensor.contiguous() if that is meant")
    return None


def _check_contents(obj, name: str | Path, size: int, bounds: Bounds | None) -> None:
    """Every tensor a plain dense one, their storages within the file, their values within the kind's."""
    todo, seen, storages, values = [obj], set(), {}, 0
    while todo:  # not recursive: a pickle can nest deeper than the stack, or refer to itself
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            todo += list(item)
        elif isinstance(item, torch.Tensor | torch.TypedStorage | torch.UntypedStorage):
            if isinstance(item, torch.Tensor):
                problem = _tensor_problem(item)
                if problem:
                    raise KitFileError(name, problem)
                values += item.numel()
                item = item.untyped_storage()
            elif isinstance(item, torch.TypedStorage):
                item = item.untyped()
            storages[item.data_ptr()] = max(storages.get(item.data_ptr(), item.nbytes()), item.nbytes())
    stored = sum(storages.values())
    if stored > size:  # a pickle-stream file can declare storages it never fills
        raise corrupt(name, f"its tensors declare {stored:,} bytes, more than the file's {size:,}")
    if bounds is not None and values > bounds.max_values:
        raise KitFileError(name, f"holds {values:,} values; {bounds.what} holds at most {bounds.max_values:,} "
                                 f"({bounds.largest})")


def sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
