"""The command line's one error handler: a KitError is the user's to fix (one line), anything else is a bug (a
traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from typer.testing import CliRunner

import challenge_kit.recipes
from challenge_kit.cli import app
from challenge_kit.core.errors import KitError, KitValueError

REPO = Path(__file__).resolve().parents[2]
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


def test_a_bad_value_is_a_kit_error_and_not_a_value_error():
    """One error policy: what the user can fix is a KitError; a ValueError is a bug (a traceback, below)."""
    assert issubclass(KitValueError, KitError) and not issubclass(KitValueError, ValueError)
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


# ------------------------------------------------------------------------------------------ conventions (docs/cli.md)

SUBMISSIONS = REPO / "submissions"


def help_of(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_version_and_short_help():
    released = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    done = CliRunner().invoke(app, ["--version"])
    assert done.exit_code == 0 and done.stdout == f"ddkit {released}\n"
    assert "Usage:" in help_of() and "Usage:" in help_of("verify")


def test_the_help_groups_the_commands_main_job_first_and_shows_flags_as_flags():
    top = help_of()
    panels = [line for line in top.splitlines() if line.startswith("╭─ ")]
    assert panels[1].startswith("╭─ The main job ")  # after the options
    first = next(line for line in top.splitlines()[top.splitlines().index(panels[1]) + 1:])
    assert first.split()[1] == "make-submission"
    commands = app.registered_commands
    assert len(commands) == 19 and all(c.rich_help_panel for c in commands)
    for command in commands:
        text = help_of(command.name)
        assert "<bool>" not in text, command.name  # a flag takes no value: --json, not --json <bool>
        assert "--json" in text, command.name  # every command prints one JSON object when asked


def test_choices_are_listed_in_the_help_and_a_typo_is_answered_with_them():
    shipped = sorted(p.stem for p in SUBMISSIONS.glob("*.toml")) + sorted(p.stem for p in
                                                                         (SUBMISSIONS / "research").glob("*.toml"))
    text = " ".join(help_of("plan").split())
    assert all(name in text for name in shipped) and "full|mini|quick" in text and "cuda:N" in text
    cases = {
        ("plan", "cifar10"): "error: DATASET: unknown dataset 'cifar10'; choose cifar100 or tinyimagenet",
        ("plan", "cifar100", "--profile", "mni"): "error: --profile: unknown profile 'mni'; choose full, mini or quick",
        ("plan", "cifar100", "--device", "cdua"): "error: --device: unknown device 'cdua'; choose cpu, cuda, cuda:N "
                                                  "or mps",
        ("distill", "cifar100", "--track", "neptune=x"): "error: --track: unknown sink 'neptune'; choose tensorboard "
                                                         "or wandb",
        ("verify", "x.pt", "--dataset", "cifar"): "error: --dataset: unknown dataset 'cifar'; choose auto, cifar100 "
                                                  "or tinyimagenet",
    }
    for argv, line in cases.items():
        done = CliRunner().invoke(app, list(argv))
        assert done.exit_code == 2 and done.stderr == line + "\n", (argv, done.stderr)
    recipe = CliRunner().invoke(app, ["plan", "cifar100", "--recipe", "mdatm"])
    assert recipe.exit_code == 2 and recipe.stderr.startswith("error: --recipe: unknown recipe 'mdatm'; choose ")
    assert recipe.stderr.rstrip().endswith(" or a .toml file") and all(n in recipe.stderr for n in shipped)


def test_a_usage_error_is_one_line_and_under_json_the_refusal_object():
    for argv, said in ((["evaluate", "x.pt", "--rounds", "x"], "--rounds: "),
                       (["evaluate"], "Missing argument 'FILE'"),
                       (["plan", "cifar100", "--bogus"], "No such option: --bogus")):
        plain = CliRunner().invoke(app, argv)
        assert plain.exit_code == 2 and plain.stdout == "" and len(plain.stderr.splitlines()) == 1
        assert plain.stderr.startswith(f"error: {said}") and "╭" not in plain.stderr
        asked = CliRunner().invoke(app, [*argv, "--json"])
        line = asked.stderr.strip().removeprefix("error: ")
        assert asked.exit_code == 2 and json.loads(asked.stdout) == {"ok": False, "exit_code": 2, "error": line}
    group = CliRunner().invoke(app, ["--bogus"])
    assert group.exit_code == 2 and group.stderr.startswith("error: No such option: --bogus")


def test_the_shell_completes_commands_and_choices():
    code = "from challenge_kit.cli import app; app(prog_name='ddkit')"
    for words, expected in (("ddkit make-s", "make-submission"), ("ddkit plan ti", "tinyimagenet"),
                            ("ddkit plan cifar100 --profile q", "quick")):
        env = {**os.environ, "PYTHONPATH": str(REPO), "_DDKIT_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - 1)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert done.stdout.split() == [expected], (words, done.stdout, done.stderr)


def test_a_closed_pipe_ends_quietly():
    """``ddkit reference --help | head -20``: no 'Broken pipe' error line, no traceback (the pipe closes at a
    different moment each time, so a few tries)."""
    command = f"{sys.executable} -m challenge_kit reference --help | head -20 > /dev/null"
    for _ in range(3):
        proc = subprocess.run(command, shell=True, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "COLUMNS": "80"})
        assert proc.stderr == ""
