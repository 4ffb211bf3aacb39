"""Under CI a test that cannot run fails instead of skipping, unless a platform lacks what it needs; elsewhere it
skips, and the summary names why."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
CASES = '''
import pytest
from fakes import MINI, needs_mini


def test_platform():
    pytest.skip("platform: no CUDA here")


def test_other():
    pytest.skip("the data is not here")


@needs_mini
def test_mini():
    assert (MINI / "wnids.txt").is_file()
'''


def run_cases(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"PYTHONPATH": os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
                "DDKIT_SHARED_DATA": str(tmp_path / "no-shared-data")})
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-rs",
                           "-q", "test_cases.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_only_a_platform_may_skip(tmp_path):
    done = run_cases(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert done.stdout.splitlines()[-1].startswith("1 failed, 1 skipped, 1 error"), done.stdout  # the mini's: setup
    assert "skipped under CI, where only a platform may skip a test: the data is not here" in done.stdout
    assert "skipped under CI, where only a platform may skip a test: " \
           f"{tmp_path / 'no-shared-data' / 'tiny-imagenet-mini'} is not here" in done.stdout
    assert "SKIPPED [1] test_cases.py:7: platform: no CUDA here" in done.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_elsewhere_every_skip_is_a_skip_with_its_reason(tmp_path, ci):
    done = run_cases(tmp_path, ci)
    assert done.returncode == 0 and "3 skipped" in done.stdout.splitlines()[-1], done.stdout
    assert "the data is not here" in done.stdout and "tiny-imagenet-mini is not here" in done.stdout
