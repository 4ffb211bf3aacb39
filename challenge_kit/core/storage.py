"""Files the kit writes: atomic writes, output checks, run locks.

Every artifact goes to a temporary file in the same folder and is renamed into place, so an
interrupted run never leaves a half-written file. Output folders are checked and locked
before a run does any work, so it fails in its first second rather than at its first checkpoint.
Reading untrusted files is ``core/reading.py``.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import secrets
import socket
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from challenge_kit.core.errors import KitFileError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked, saying so
    fcntl = None

LOCK_FILE = ".ddkit-lock"
# flock is not offered by every filesystem (some FUSE and network mounts): a run there goes on unlocked.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def _new_temp(path: Path) -> Path:
    """A new empty file beside ``path``, created as a plain ``open(path, "w")`` would create it: mode 0666 less
    the umask. mkstemp's 0600 would leave a submission written by root in Docker unreadable to the host user."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file, and its mode with it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def output_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and prove a file can be created in it: checked before a run does any work."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise KitFileError(path, "is a file, not a folder")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise KitFileError(path, f"cannot be created: {blocker} is a file")
        path.mkdir(parents=True, exist_ok=True)
        _new_temp(path / "write-check").unlink()
    except OSError as e:
        raise KitFileError(path, f"cannot be written ({e.strerror or e})") from None
    return path


def output_file(path: str | Path) -> Path:
    """Check, before the work, that ``path`` can be written as a file."""
    path = Path(path)
    if path.is_dir():
        raise KitFileError(path, "is a folder; give a file name")
    output_folder(path.parent)
    return path


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, TypeError, KeyError):
        return "no details recorded"


def _lock(path: Path) -> tuple[int | None, str]:
    """An open, flock-held descriptor of ``path`` and what the file held before (a dead run's record); no
    descriptor where there are no locks."""
    while fcntl is not None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
            os.close(fd)
            raise KitFileError(path.parent, f"in use by another ddkit run ({holder}); wait for it to end or "
                                            "choose another output folder") from None
        except OSError as e:
            os.close(fd)
            if e.errno in NO_LOCKS:
                return None, ""
            raise
        try:  # the holder may have removed the file between our open and our flock: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, os.pread(fd, 1 << 16, 0).decode(errors="replace")
        except FileNotFoundError:
            pass
        os.close(fd)
    return None, ""


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (checked writable, created if needed) for one run; a second live run refuses, naming this one.

    The lock is an flock on ``folder/.ddkit-lock``, which the kernel drops when its process dies however it
    dies, so a lock file left by a killed run is recognised as stale without guessing from pids, across
    containers too; the file records pid, host, command line and start time for the refusal message.
    """
    folder = output_folder(folder)
    path = folder / LOCK_FILE
    fd, previous = _lock(path)
    if fd is None:
        print(f"note: {folder}: no file locks here (filesystem or system); make sure no other run writes here",
              file=sys.stderr)
        yield folder
        return
    try:
        if previous.strip():
            print(f"note: {path}: taking over the lock of a run that is no longer running ({_holder(previous)})",
                  file=sys.stderr)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield folder
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` through an open handle: a path would name the archive's inner folder after the random
    temporary file, so identical content would not give identical bytes (and sha256) from run to run."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, write)


def save_json(obj, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def _sort_metadata(path: Path) -> None:
    """safetensors writes its metadata in hash-map order, which changes from call to call: rewrite the header
    in place with the keys sorted (the same JSON reordered has the same length), so that identical content
    gives identical bytes."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        if meta is None:
            return
        text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) > size:
            raise ValueError(f"{path}: sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(text.ljust(size))


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """safetensors with JSON-encoded metadata values (safetensors metadata is str -> str), keys sorted."""
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_metadata(tmp)

    return atomic_write(path, write)
