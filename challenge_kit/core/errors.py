"""The kit's expected failures, each said on one line: a file and what is wrong with it, a value that cannot be
used, or a refused export. Each is a ``KitError``: what the user can fix; any other exception is a bug.

Torch-free on purpose: the command line catches these around every command, before torch is imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How every command ends, one code per cause (docs/cli.md has the table; tests/cli/test_exit_codes.py holds it), so a
# script can tell a typo from a bad file from a failed check. An interruption is 128 + the signal (interrupts).
DONE = 0
BAD_INPUT = 1  # a file, folder or value the kit refuses: a KitError
USAGE = 2  # the command line itself: an unknown option or choice, a missing argument, a value of the wrong type
CHECK_FAILED = 3  # verify read the file and a check failed
UNREADABLE = 4  # verify could not read the file at all


class KitError(Exception):
    """Something the user did or gave is wrong; the command line says the message on one line, no traceback."""

    exit_code = BAD_INPUT


class KitFileError(KitError):
    """A file cannot be read or has the wrong content; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


class KitValueError(KitError):
    """An option, recipe, dataset or device that cannot be used; the message names it and what is wrong."""


class ExportRefused(KitError):
    """Verify failed, or the artifact is not a challenge set: nothing was written."""


class NothingDistilled(KitError):
    """Every iteration of a window was skipped: the run stops, its checkpoint kept, rather than export its
    initialization as if it had distilled."""


def os_error(e: OSError) -> KitFileError:
    """An operating-system error as the kit's one-line error: the file it concerns, then what is wrong."""
    where = e.filename2 if e.filename2 is not None else e.filename  # a rename's target, not its temp file
    return KitFileError(where if where is not None else "(no file)", e.strerror or str(e) or type(e).__name__)


@contextmanager
def file_errors() -> Iterator[None]:
    """Let no OSError out of the block as a traceback: it becomes a KitFileError naming the file.

    A closed pipe (``ddkit reference --help | head``) is no file's problem: it goes through, for the caller
    to end quietly.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as e:
        raise os_error(e) from None


ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def first_line(error: BaseException) -> str:
    """An exception's first message line, without terminal escape codes (messages may go to logs)."""
    text = ESCAPES.sub("", str(error)).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
