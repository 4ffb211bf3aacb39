"""Test session set-up: the same allocator settings the CLI uses (they halve CPU step times), a data cache
of each test's own instead of the user's ~/.cache/ddkit, the fast scorer uncompiled (compiling costs
12-24 s per new shape; ``test_fast_scorer.py`` compiles), and the plan calibrated in one pass, not three (every
make-submission plans first; ``test_plan.py`` asks for more where the range is its subject)."""

import pytest

from challenge_kit.core.devices import tune_allocator

tune_allocator()


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
    monkeypatch.setenv("DDKIT_CALIBRATION_PASSES", "1")
