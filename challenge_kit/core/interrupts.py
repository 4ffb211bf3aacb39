"""SIGTERM stops a run the way Ctrl-C does, so that one clean-up path serves both.

``docker stop``, Slurm pre-emption, ``timeout`` and torchrun (stopping its other ranks) send SIGTERM, whose default
kills the process at once: temporary files stay behind. Raised as a ``KeyboardInterrupt`` in the main thread, it
runs every ``finally`` written for Ctrl-C instead: ``atomic_write`` removes its temporary file, ``run_lock``
releases the folder, and a checkpoint, written atomically, stays the last complete one. The process then exits
128 + the signal's number, as a shell reports a process the signal killed: 130 for Ctrl-C, 143 for SIGTERM.

Installed around each command by the command line's handler and around scoring by ``python -m evaluator``;
torch-free, as the command line's handler is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: a ``KeyboardInterrupt``, so what cleans up after Ctrl-C cleans up after it too."""

    signum = signal.SIGTERM


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` in the main thread; the previous handler comes back after.

    Only the first SIGTERM raises: a repeat during the clean-up is ignored so that the clean-up finishes
    (SIGKILL still stops the process at once). Outside the main thread, where Python cannot take signals, a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt ``error`` is, or the one it hid: a clean-up step that fails while an interrupt unwinds
    raises its own error (torch.save's zip writer, stopped mid-file, says "unexpected pos"), the interrupt its
    context."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


def interrupted_line(interrupt: KeyboardInterrupt, what: str, how_to_continue: str) -> str:
    """The one line said when a run stops on a signal: which signal, what stopped, how to continue."""
    name = NAMES[getattr(interrupt, "signum", signal.SIGINT)]
    return f"interrupted by {name}: {what} stopped; {how_to_continue}"


def speaks() -> bool:
    """Whether this process says the line: the only one, or rank 0 of a torchrun job (every rank gets the signal)."""
    return os.environ.get("RANK", "0") == "0"
