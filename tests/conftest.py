"""Test session set-up: the same allocator settings the CLI uses (they halve CPU step times), a data cache
of each test's own instead of the user's ~/.cache/ddkit, and the fast scorer uncompiled (compiling costs
12-24 s per new shape; ``test_fast_scorer.py`` compiles); under CI, only a platform may skip a test
(``skip_policy.py``)."""

import pytest
from skip_policy import pytest_runtest_makereport  # noqa: F401  (a hook: under CI only platform skips)

from challenge_kit.core.devices import tune_allocator

tune_allocator()


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
