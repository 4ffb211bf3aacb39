"""Test session set-up: the same allocator settings the CLI uses (they halve CPU step times), and a data cache
of each test's own instead of the user's ~/.cache/ddkit."""

import pytest

from challenge_kit.core.devices import tune_allocator

tune_allocator()


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
