"""The exit codes of docs/cli.md: the table there is the kit's (``core/errors``), and each cause ends with its code.

Each row is reached for real: a good file and a broken one for ``verify``, a typo for usage, a missing store for bad
input, and Ctrl-C and SIGTERM sent to the process while a command runs.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from fakes import distilled_images
from typer.testing import CliRunner

import challenge_kit.recipes
from challenge_kit.cli import app
from challenge_kit.core import errors
from challenge_kit.core.contract import CIFAR100

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def table() -> dict[int, str]:
    """The rows of the docs' exit-code table: code -> meaning."""
    text = DOCS.read_text().split("## Exit codes", 1)[1]
    return {int(code): meaning for code, meaning in re.findall(r"^\| (\d+) \| (.+) \|$", text, re.M)}


def test_the_documented_table_is_the_kits():
    rows = table()
    assert sorted(rows) == [0, 1, 2, 3, 4, 130, 143]
    assert (errors.DONE, errors.BAD_INPUT, errors.USAGE, errors.CHECK_FAILED, errors.UNREADABLE) == (0, 1, 2, 3, 4)
    assert rows[1].startswith("bad input") and rows[2].startswith("usage") and "check failed" in rows[3]
    assert "could not be read" in rows[4] and "SIGINT" in rows[130] and "SIGTERM" in rows[143]


def stopped_by(monkeypatch, sig: int) -> int:
    """``ddkit methods``, with the signal arriving while it works."""
    def work(*args, **kwargs):
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the signal lands before this ends
        raise AssertionError("not interrupted")

    monkeypatch.setattr(challenge_kit.recipes, "shipped_methods", work)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own: Ctrl-C raises KeyboardInterrupt
    try:
        return CliRunner().invoke(app, ["methods"]).exit_code
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("code", sorted(table()))
def test_each_cause_ends_with_its_code(tmp_path, monkeypatch, code):
    good, broken, text = tmp_path / "cifar100.pt", tmp_path / "nan" / "cifar100.pt", tmp_path / "text.pt"
    torch.save(distilled_images(CIFAR100), good)
    broken.parent.mkdir()
    torch.save(torch.full(CIFAR100.shape, float("nan")), broken)
    text.write_text("not a tensor")
    argv = {0: ["verify", good], 1: ["info", tmp_path / "no-store"], 2: ["plan", "cifar10"], 3: ["verify", broken],
            4: ["verify", text]}
    if code in argv:
        assert CliRunner().invoke(app, [str(a) for a in argv[code]]).exit_code == code
    else:
        assert stopped_by(monkeypatch, signal.SIGINT if code == 130 else signal.SIGTERM) == code
