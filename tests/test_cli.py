"""The command line's one error handler: a KitError is the user's to fix (one line), anything else is a bug (a
traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import challenge_kit.recipes
from challenge_kit.cli import app
from challenge_kit.core.errors import KitError, KitValueError

REPO = Path(__file__).resolve().parents[1]
BUG = """
import challenge_kit.recipes


def bug(*args, **kwargs):
    raise ValueError("a bug, not a mistake of the user")


challenge_kit.recipes.shipped_methods = bug
from challenge_kit.cli import app

app(["methods"])
"""


def test_a_kit_error_is_one_error_line_and_exit_1(monkeypatch):
    def mistake(*args, **kwargs):
        raise KitError("recipes/x.toml: something the user can fix")

    monkeypatch.setattr(challenge_kit.recipes, "shipped_methods", mistake)
    result = CliRunner().invoke(app, ["methods"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr == "error: recipes/x.toml: something the user can fix\n"
    assert result.stdout == ""


def test_a_bad_value_is_a_kit_error_and_still_a_value_error():
    assert issubclass(KitValueError, KitError) and issubclass(KitValueError, ValueError)
    result = CliRunner().invoke(app, ["evaluate", "x.pt", "--reference", "r.pt", "--epochs", "0"])
    assert result.exit_code == 1 and result.stderr == "error: --epochs and --rounds must be at least 1\n"


def test_any_other_exception_is_a_bug_and_shows_its_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("a bug, not a mistake of the user")

    monkeypatch.setattr(challenge_kit.recipes, "shipped_methods", bug)
    result = CliRunner().invoke(app, ["methods"])
    assert isinstance(result.exception, ValueError) and result.exit_code != 0
    assert "error:" not in result.stderr

    done = subprocess.run([sys.executable, "-c", BUG], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ValueError: a bug, not a mistake of the user" in done.stderr
    assert not any(line.startswith("error:") for line in done.stderr.splitlines())
