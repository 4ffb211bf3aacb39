"""Every command line in the code blocks of the README and of docs/research.md (whose commands were run as written on
the 20-class subset) is one the kit still takes: a renamed or dropped option, command or choice fails here, not in a
reader's shell.

Each ``ddkit`` line (also inside ``docker run`` and ``torchrun ... -m challenge_kit``) runs with ``--help`` added:
the command line is parsed (an unknown command or option is refused) and nothing runs. ``python -m evaluator``
lines are parsed by the scorer's own parser, the GPU acceptance script's by its own (it stops at the missing GPU,
after parsing). Lines of other tools (pip, pytest, curl, unzip, tar, mkdir, docker build) are not the kit's, nor a
script the page writes out in a ```python block opening with ``# NAME.py``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from challenge_kit.cli import app
from evaluator.evaluate import parse_args

REPO = Path(__file__).resolve().parents[2]
PAGES = ("README.md", "docs/research.md")
OTHERS = {"pip", "curl", "unzip", "tar", "mkdir", "cd"}


def readme_lines(text: str) -> list[list[str]]:
    """The command lines of the ```bash blocks, as words: continuations joined, comments dropped, ``&&`` split."""
    lines = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                lines.append(words[:cut])
                words = words[cut + 1:]
    return lines


def kit_args(words: list[str]) -> tuple[str, list[str]] | None:
    """(which parser, its arguments) of a line that runs the kit, None for another tool's."""
    if words[0] == "ddkit":
        return "ddkit", words[1:]
    if words[0] == "docker" and words[1] == "run":
        return "ddkit", words[words.index("ddkit") + 1:]  # the image, whose entry point is ddkit
    if words[0] == "torchrun":
        return "ddkit", words[words.index("challenge_kit") + 1:]
    if words[:3] == ["python", "-m", "evaluator"]:
        return "evaluator", words[3:]
    if words[:2] == ["python", "bench/gpu_acceptance.py"]:
        return "acceptance", words[2:]
    return None


def own_scripts(text: str) -> set[str]:
    """The scripts a page writes out itself: its ```python blocks that open with ``# NAME.py``."""
    return set(re.findall(r"^```python\n# (\S+\.py)\b", text, re.M))


@pytest.mark.parametrize("page,least", [("README.md", 20), ("docs/research.md", 6)])
def test_the_readme_lines_are_found(page, least):
    text = (REPO / page).read_text()
    lines, mine = readme_lines(text), own_scripts(text)
    kit = [kit_args(w) for w in lines]
    assert sum(k is not None and k[0] == "ddkit" for k in kit) >= least
    assert all(k is not None or w[0] in OTHERS or w[:3] == ["python", "-m", "pytest"] or w[:2] == ["docker", "build"]
               or (w[0] == "python" and w[1:] and w[1] in mine)
               for w, k in zip(lines, kit, strict=True)), [w for w, k in zip(lines, kit, strict=True) if k is None]


@pytest.mark.parametrize("words", [w for page in PAGES for w in readme_lines((REPO / page).read_text())],
                         ids=shlex.join)
def test_every_readme_command_line_is_taken(words, monkeypatch):
    found = kit_args(words)
    if found is None:
        return
    which, args = found
    if which == "ddkit":
        done = CliRunner().invoke(app, [*args, "--help"])
        assert done.exit_code == 0, done.output
    elif which == "evaluator":
        parse_args(args)  # argparse exits 2 on an option it does not take
    else:
        spec = importlib.util.spec_from_file_location("gpu_acceptance", REPO / "bench" / "gpu_acceptance.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # parse, then stop: no GPU run here
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert script.main(args) == 2
        assert "no CUDA device here" in err.getvalue()
