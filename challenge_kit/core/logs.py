"""Where the kit's log records reach a person: library modules only call ``logging.getLogger(__name__)``;
a process's entry point (the ``ddkit`` command line, an ``ablate`` variant's process) calls ``show_logs`` once.

On a terminal a rich handler draws them on the console the progress bars use (so a line never tears a live bar);
anywhere else each record is one plain ``level: message`` line. Both go to stderr, so ``--json`` keeps stdout
pure JSON.
"""

from __future__ import annotations

import logging

from rich.logging import RichHandler

from challenge_kit.core.progress import console

OURS = ("challenge_kit", "evaluator")  # the loggers that say what they do (info); any other only its warnings


class PlainLines(logging.Handler):
    """One ``level: message`` line per record, on the console's stream as it is at the time (a test swaps it)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> logging.Handler:
    """Install the one handler on the root logger (replacing one installed before) and let the kit's loggers
    speak from ``level``; returns the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "ddkit", False)]:
        root.removeHandler(old)
    handler: logging.Handler
    if console.is_terminal and not console.is_dumb_terminal:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False,
                              rich_tracebacks=False)
    else:
        handler = PlainLines()
    handler.ddkit = True
    root.addHandler(handler)
    for name in OURS:
        logging.getLogger(name).setLevel(level)
    return handler
