"""Files the kit writes: temporary files, atomic, durable and grouped writes, full disks, the savers.

Every artifact goes to a temporary file in the same folder and is renamed into place, so an interrupted run
never leaves a half-written file; its bytes are fsynced before the rename and its folder after it, so a power
cut never leaves a name pointing at bytes that never reached the disk. Output folders are checked and locked
before a run does any work, so it fails in its first second rather than at its first checkpoint.
Reading untrusted files is ``core/reading.py``; output folders and their locks are ``core/folders.py``. The
module is long because every way the kit writes (each format's saver, groups, logs) must share the one path.

Others may write into an output folder too (a shared scratch space, a container's volume), and the kit often
runs as root: it writes only plain files, so a link, pipe or device placed where it writes is refused, never
followed or replaced, and the folders it makes inside an output folder must be real folders. The refusals
live here and ``core/folders.py`` applies them to the folders a run writes into.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import save_file

from challenge_kit.core.errors import KitError, KitFileError

NO_SPACE = "No space left on device"
# A full disk or quota as each writer says it: an errno, or the text of safetensors' (Rust) error.
FULL = ({errno.ENOSPC, errno.EDQUOT}, ("No space left on device", "Disk quota exceeded", "os error 28", "os error 122"))
# Never follow a link at the last component, never take a terminal, never wait on a pipe.
NO_FOLLOW = os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC if hasattr(os, "O_NOFOLLOW") else 0
# A power cut keeps what was fsynced (git's and SQLite's order): a file's bytes before its name points at them,
# its folder after a name in it changed. The one place where that is skipped: where there is no folder to open
# (Windows: no os.O_DIRECTORY; its renames are the filesystem's), where the folder cannot be opened for reading,
# and where the filesystem refuses a folder's fsync (EINVAL, ENOTSUP: some network, FUSE and virtual ones).
FOLDER_SYNC_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EACCES, errno.EPERM}
KINDS = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"),
         (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device"), (stat.S_ISSOCK, "socket"))


def kind(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "special file")


def sync_folder(folder: str | Path) -> None:
    """fsync ``folder``: the names changed in it (a rename, a new file or folder) survive a power cut. Skipped
    where the platform cannot (``FOLDER_SYNC_REFUSED``)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in FOLDER_SYNC_REFUSED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in FOLDER_SYNC_REFUSED:
            raise
    finally:
        os.close(fd)


def make_folders(path: str | Path) -> Path:
    """``path`` and the folders missing above it, each new one synced into its parent: a file written inside
    survives a power cut only if the folders on its way do."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not os.path.lexists(p)]
    path.mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        sync_folder(made.parent)
    return path


def replace_synced(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` (a file or folder whose contents are synced already) to ``target``, then sync the folder
    that now holds it: the rename survives a power cut."""
    os.replace(source, target)
    sync_folder(Path(target).parent)


def refuse_special(path: str | Path) -> None:
    """An existing ``path`` must be a plain file: the kit never writes through a link nor replaces a pipe, a
    device, a socket or a folder (as root, replacing ``/dev/null`` would break the whole system)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise KitFileError(path, f"is a {kind(mode)}, not a plain file: refused, nothing written; remove it or "
                                 "choose another name")


def refuse_replacing(paths: Iterable[str | Path], problem: str = "already exists; pass --overwrite to replace it"
                     ) -> None:
    """Stop, before any work, at the first of ``paths`` that exists: a command replaces only its own work.

    The rule: a command writes new files. It replaces an existing one only when told: ``--resume`` (the
    folder holds this command's own earlier run, continued) or ``--overwrite`` (replace what is there); the
    caller skips this check then. A file a run rewrites as it goes (checkpoint, history) is its own.
    """
    for path in paths:
        if os.path.lexists(path):
            raise KitFileError(path, problem)


def _write_failure(path: Path, e: BaseException) -> KitFileError | None:
    """A failed write as one line naming ``path`` (the target, never the temporary file): a full disk said as
    such, whatever the writer raised; None for what is not about the file (a bug keeps its traceback)."""
    codes, texts = FULL
    if getattr(e, "errno", None) in codes or any(t in str(e) for t in texts):
        return KitFileError(path, f"cannot be written: {NO_SPACE}")
    if isinstance(e, OSError):
        return KitFileError(path, f"cannot be written ({e.strerror or e})")
    return None


def _member_failure(e: Exception, tmp: Path | None, target: Path) -> KitFileError | None:
    """A member's failed write said about its target: a writer that itself writes atomically names the
    temporary file it was given, the user knows only the target."""
    if isinstance(e, KitFileError) and tmp is not None and e.path == str(tmp):
        return KitFileError(target, e.problem)
    return None if isinstance(e, KitError) else _write_failure(target, e)


class Staged:
    """A new temporary file beside ``target``, made as a plain ``open(target, "w")`` would make it (mode 0666
    less the umask: mkstemp's 0600 would leave a submission written by root in Docker unreadable to the host
    user), held open from its creation so that the kit's own writers never reopen it by name."""

    def __init__(self, target: Path) -> None:
        refuse_special(target)
        make_folders(target.parent)
        self.target = target
        while True:
            self.path = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            try:  # O_EXCL: never a file (or link) that was there before
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | NO_FOLLOW, 0o666)
                break
            except FileExistsError:
                continue
        self.mode = stat.S_IMODE(os.fstat(self.fd).st_mode)

    def seal(self) -> None:
        """Check that the temporary name still holds a plain file (a writer may have replaced it, as safetensors
        does; a link swapped in is refused), give it its mode and fsync its bytes: the name it gets must never
        point, after a power cut, at bytes that are not on the disk."""
        try:
            fd = os.open(self.path, os.O_RDONLY | NO_FOLLOW)
        except OSError:
            raise KitFileError(self.target, "its temporary file was replaced by a link while being written; "
                                            "refused, nothing written") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KitFileError(self.target, "its temporary file was replaced while being written; refused")
            # some writers (safetensors) replace the file, and its mode with it; by descriptor: never a link's target
            os.fchmod(fd, self.mode) if hasattr(os, "fchmod") else os.chmod(self.path, self.mode)
            ours = os.fstat(self.fd)
            # our own descriptor is writable (Windows syncs only those); a replaced file through the one read now
            os.fsync(self.fd if (ours.st_dev, ours.st_ino) == (st.st_dev, st.st_ino) else fd)
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Rename the sealed file into place, if the target is still a plain file or absent."""
        refuse_special(self.target)
        os.replace(self.path, self.target)

    def discard(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def close(self) -> None:
        os.close(self.fd)


_STAGED: dict[Path, Staged] = {}  # temporary file -> its stage, while a write is under way


@contextmanager
def temp_stream(tmp: Path) -> Iterator[BinaryIO]:
    """The staged temporary file ``tmp`` as a binary stream on the descriptor that created it: a link or
    file swapped in at its name is never written through."""
    with os.fdopen(os.dup(_STAGED[Path(tmp)].fd), "wb") as f:
        yield f


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """SIGINT and SIGTERM held back while a group's renames run (microseconds): one that arrives then is sent
    again after the last rename, so an interruption lands before the first or after the last, never between.

    Python handlers stand in for the signals meanwhile, not a thread's signal mask: the kernel hands a signal to
    any thread that does not block it (torch's worker threads among them), and Python then runs its handler in
    the main thread whatever that thread's mask says. Off the main thread, where handlers cannot be set, the
    renames run as they are.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    kinds = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]  # None: not Python's
    previous = {s: signal.signal(s, lambda number, frame: caught.append(number)) for s in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def write_together(writes: list[tuple[str | Path, Callable[[Path], None]]]) -> list[Path]:
    """Files that belong together (an export and its manifest) replaced together or not at all.

    Each ``write(tmp)`` fills a temporary file beside its target; only when every one has succeeded, and every
    one's bytes are fsynced, are they renamed into place, in the order given (put the manifest last), and their
    folders fsynced after the last rename. A failed write, a full disk included, leaves every target as it was
    and no temporary file, and is said in one line naming its target.
    """
    stages: list[Staged] = []
    try:
        for n, (target, write) in enumerate(writes):
            try:
                stages.append(Staged(Path(target)))
                _STAGED[stages[-1].path] = stages[-1]
                write(stages[-1].path)
            except Exception as e:
                failure = _member_failure(e, stages[-1].path if stages else None, Path(target))
                if failure is None:
                    raise
                others = [Path(t).name for i, (t, _) in enumerate(writes) if i != n]
                if others:
                    failure = KitFileError(failure.path, f"{failure.problem}; {', '.join(others)} unchanged")
                raise failure from None
        for stage in stages:
            try:
                stage.seal()
            except OSError as e:
                raise _write_failure(stage.target, e) from None
        with _uninterrupted():
            for stage in stages:
                try:
                    stage.commit()
                except OSError as e:
                    raise _write_failure(stage.target, e) from None
        for folder in dict.fromkeys(stage.target.parent for stage in stages):
            try:
                sync_folder(folder)
            except OSError as e:
                raise _write_failure(folder, e) from None
    finally:
        for stage in stages:
            _STAGED.pop(stage.path, None)
            stage.close()
            stage.discard()
    return [stage.target for stage in stages]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it into place and fsync the
    folder (``write_together`` with one file): ``path`` must be a plain file or absent, and a failed write
    leaves it as it was. Every file the kit publishes is written here."""
    return write_together([(path, write)])[0]


def append_line(path: str | Path, line: str) -> None:
    """Append one line to a plain file of the kit's own (a live log), never through a link or into a device.
    Not synced line by line: the log's owner calls ``sync_log`` at the points it must survive a power cut."""
    path = Path(path)
    refuse_special(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | NO_FOLLOW, 0o666)
    except OSError as e:
        raise _write_failure(path, e) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KitFileError(path, "is not a plain file: refused, nothing written")
        os.write(fd, line.encode())
    except OSError as e:
        raise _write_failure(path, e) from None
    finally:
        os.close(fd)


def sync_log(path: str | Path) -> None:
    """fsync an ``append_line`` log and its folder: every line appended so far survives a power cut (after one,
    the log is what was synced plus, maybe, a torn or garbled tail that its reader skips)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sync_folder(path.parent)
    except OSError as e:
        raise _write_failure(path, e) from None


class _Recorded:
    """A stream that keeps the first error its writes raised: torch.save reports a failed write as its own
    ``RuntimeError: ... unexpected pos``, which hides the cause (a full disk)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.error = stream, None

    def write(self, data) -> int:
        try:
            return self.stream.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.stream.flush()

    @property
    def name(self) -> str | None:
        """The wrapped file's name, as the file itself would give it."""
        return getattr(self.stream, "name", None)


def torch_to(obj, stream: BinaryIO) -> None:
    """``torch.save`` to an open stream, a failed write raised as the OSError it was."""
    recorded = _Recorded(stream)
    try:
        torch.save(obj, recorded)
        stream.flush()
    except RuntimeError:
        if recorded.error is None:
            raise
        raise recorded.error from None


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` through an open handle: a path would name the archive's inner folder after the random
    temporary file, so identical content would not give identical bytes (and sha256) from run to run."""

    def write(tmp: Path) -> None:
        with temp_stream(tmp) as f:
            torch_to(obj, f)

    return atomic_write(path, write)


def write_bytes(tmp: Path, data: bytes) -> None:
    """Fill a staged temporary file (a ``write_together`` writer's part)."""
    with temp_stream(tmp) as f:
        f.write(data)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def save_bytes(data: bytes, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: write_bytes(tmp, data))


def save_text(text: str, path: str | Path) -> Path:
    return save_bytes(text.encode(), path)


def save_json(obj, path: str | Path) -> Path:
    return save_bytes(json_bytes(obj), path)


def _sort_metadata(path: Path) -> None:
    """safetensors writes its metadata in hash-map order, which changes from call to call: rewrite the header
    in place with the keys sorted (the same JSON reordered has the same length), so that identical content
    gives identical bytes. safetensors renamed its own file onto ``path``: opened again, never through a link."""
    fd = os.open(path, os.O_RDWR | NO_FOLLOW)
    with os.fdopen(fd, "r+b") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KitFileError(path, "was replaced while being written; refused")
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
