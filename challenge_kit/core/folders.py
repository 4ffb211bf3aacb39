"""The folders a run writes into: checked before any work, made folder by folder, held with a lock file.

A run holds its output folder with ``.ddkit-lock`` (flock'd, naming pid, host, command and start time), so a second
run into the same folder, or into a folder inside it, refuses and names the first; the lock of a run that died is
taken over. The lock is opened without following links and must be a plain file.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from challenge_kit.core.errors import KitFileError
from challenge_kit.core.storage import (
    NO_FOLLOW,
    Staged,
    _write_failure,
    kind,
    make_folders,
    refuse_replacing,
    refuse_special,
    sync_folder,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; runs go unlocked, saying so
    fcntl = None

log = logging.getLogger(__name__)
LOCK_FILE = ".ddkit-lock"
# flock is not offered by every filesystem (some FUSE and network mounts): a run there goes on unlocked.
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


def output_folder(path: str | Path) -> Path:
    """Create ``path`` if needed and prove a file can be created in it: checked before a run does any work."""
    path = Path(path)
    try:
        if path.exists() and not path.is_dir():
            raise KitFileError(path, "is a file, not a folder")
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise KitFileError(path, f"cannot be created: {blocker} is a file")
        make_folders(path)
        probe = Staged(path / "write-check")
        probe.close()
        probe.discard()
    except OSError as e:
        raise KitFileError(path, f"cannot be written ({e.strerror or e})") from None
    return path


def output_file(path: str | Path, *, overwrite: bool = False) -> Path:
    """Check, before the work, that ``path`` can be written as a file: a plain file or new (new unless
    ``overwrite``), in a writable folder no other live run holds."""
    path = Path(path)
    if path.is_dir():
        raise KitFileError(path, "is a folder; give a file name")
    refuse_held(path.parent, itself=True)
    output_folder(path.parent)
    refuse_special(path)
    if not overwrite:
        refuse_replacing([path])
    return path


def inner_folder(root: str | Path, relative: str | Path, *, make: bool = True) -> Path:
    """``root/relative``, made folder by folder, each a real folder: the folders the kit makes inside an output
    folder are never links (one placed there, such as ``OUT/work``, would send the run's files elsewhere).
    ``make=False`` only checks what is already there."""
    path = Path(root)
    for part in Path(relative).parts:
        path = path / part
        try:
            if make:
                path.mkdir()
                sync_folder(path.parent)  # a new folder survives a power cut, as the files written into it do
        except FileExistsError:
            pass
        except OSError as e:
            raise KitFileError(path, f"cannot be created ({e.strerror or e})") from None
        if not make and not os.path.lexists(path):
            break
        mode = os.lstat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise KitFileError(path, f"is a {kind(mode)}, not a folder: the kit makes this folder itself and "
                                     "refuses anything else in its place; remove it")
    return path


# ------------------------------------------------------------------------------------------- locks

_HELD: set[tuple[int, int]] = set()  # (device, inode) of the folders this process holds


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} since {info['started']}: {info['command']}"
    except (ValueError, TypeError, KeyError):
        return "no details recorded"


def _open_lock(path: Path, flags: int) -> int:
    """The lock file opened without following a link; a link, pipe or device there is refused, naming it."""
    refuse_special(path)
    try:
        fd = os.open(path, flags | NO_FOLLOW, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise KitFileError(path, "is a symbolic link, not a lock file: refused, nothing written; remove it") \
                from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        what = kind(st.st_mode) if not stat.S_ISREG(st.st_mode) else "file with other hard links"
        raise KitFileError(path, f"is a {what}, not a lock file: refused, nothing written; remove it")
    return fd


def _lock(path: Path) -> tuple[int | None, str]:
    """An open, flock-held descriptor of ``path`` and what the file held before (a dead run's record); no
    descriptor where there are no locks."""
    while fcntl is not None:
        fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
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


def _live_holder(lock: Path) -> str | None:
    """Who holds ``lock``, when a live run of another process does; None for no lock file or a stale one.

    Probed with a shared flock, dropped at once: a holder's exclusive lock refuses it.
    """
    try:
        if not stat.S_ISREG(os.lstat(lock).st_mode):
            return None  # not a lock the kit made; the run that finds it there refuses it
        fd = os.open(lock, os.O_RDONLY | NO_FOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
    except OSError:
        return None
    finally:
        os.close(fd)


def refuse_held(folder: str | Path, *, itself: bool = False) -> None:
    """Refuse to work inside a folder another live run holds: a lock covers the folder's insides too
    (``ddkit experts --out X/work/experts`` while a make-submission holds ``X``). ``itself``: ``folder``'s own
    lock counts too (for commands that write a file without taking the folder)."""
    if fcntl is None:
        return
    real = Path(folder).resolve()
    for above in [real, *real.parents] if itself else real.parents:
        if _identity(above) in _HELD:
            continue  # held by this run
        holder = _live_holder(above / LOCK_FILE)
        if holder is not None:
            where = "in use" if above == real else f"inside {above}, which is in use"
            raise KitFileError(folder, f"{where} by another ddkit run ({holder}); wait for it to end or choose "
                                       "another output folder")


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` (checked writable, created if needed) for one run; a second live run refuses, naming this
    one, and so does a run asked to work anywhere inside it.

    The lock is an flock on ``folder/.ddkit-lock``, which the kernel drops when its process dies however it
    dies, so a lock file left by a killed run is recognised as stale without guessing from pids, across
    containers too; the file records pid, host, command line and start time for the refusal message. It is
    opened without following links and must be a plain file: a link placed there is refused, never written.
    """
    refuse_held(folder)
    folder = output_folder(folder)
    path = folder / LOCK_FILE
    fd, previous = _lock(path)
    if fd is None:
        log.warning(f"{folder}: no file locks here (filesystem or system); make sure no other run writes here")
        yield folder
        return
    held = _identity(folder)
    _HELD.add(held)
    try:
        if previous.strip():
            log.warning(f"{path}: taking over the lock of a run that is no longer running ({_holder(previous)})")
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
        except OSError as e:
            raise _write_failure(path, e) from None
        yield folder
    finally:
        _HELD.discard(held)
        try:  # remove our own lock file only, not what may have been put in its place
            if os.lstat(path).st_ino == os.fstat(fd).st_ino:
                path.unlink()
        except FileNotFoundError:
            pass
        os.close(fd)


# ------------------------------------------------------------------------------------------- formats
