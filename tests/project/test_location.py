"""The suite passes wherever the kit is checked out: here, hardening cases run from a copy of this checkout in a
folder only root may enter (as root's home is), where the permission switch must not hide the kit's own files."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from skip_policy import PLATFORM

REPO = Path(__file__).resolve().parents[2]
COPIED = ("challenge_kit", "evaluator", "submissions", "tests", "pyproject.toml")  # what is there of them
CASES = ["tests/cli/test_hardening.py::test_read_only_output[make-submission]",  # reads the recipe, then is refused
         "tests/cli/test_hardening.py::test_unreadable_input[distill]"]
# pytest on the copy, once the kit is known to be imported from there
RUN = ("import sys, challenge_kit, pytest\n"
       "assert challenge_kit.__file__.startswith(sys.argv[1]), challenge_kit.__file__\n"
       "sys.exit(pytest.main(sys.argv[2:]))")


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason=PLATFORM + "not root: a non-root tester's own checkout is open to it, "
                                                         "and the hardening cases switch nothing for it")
def test_hardening_cases_pass_from_a_checkout_only_root_may_enter(tmp_path):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    checkout = private / "ddkit"
    for name in COPIED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / name).is_file():
            shutil.copy(REPO / name, checkout / name)
    assert private.stat().st_mode & 0o777 == 0o700 and private.stat().st_uid == 0
    path = [str(checkout), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    proc = subprocess.run([sys.executable, "-c", RUN, str(checkout), "-q", "-rs", "-p", "no:cacheprovider",
                           "--basetemp", str(tmp_path / "basetemp"), *CASES],
                          cwd=checkout, env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
                          capture_output=True, text=True, timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode == 0 and "skipped" in summary:  # the switch itself is not available here
        pytest.skip(PLATFORM + "; ".join(re.findall(r"^SKIPPED \[\d+\] (.*)$", proc.stdout, re.M)))
    assert proc.returncode == 0 and re.match(rf"{len(CASES)} passed\b", summary), proc.stdout[-4000:] + proc.stderr
