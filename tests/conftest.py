"""Test session set-up: the same allocator settings the CLI uses (they halve CPU step times), a data cache
of each test's own instead of the user's ~/.cache/ddkit, the fast scorer uncompiled (compiling costs
12-24 s per new shape; ``test_fast_scorer.py`` compiles), the plan calibrated in one pass, not three (every
make-submission plans first; ``test_plan.py`` asks for more where the range is its subject), exports a bundle takes
as they are; under CI, only a platform may skip a test (``skip_policy.py``). Helpers a test imports are in
``helpers.py`` (commands, a small distillation), ``fakes.py`` (data) and ``references.py`` (the official recipe)."""

import pytest
import torch
from skip_policy import pytest_runtest_makereport  # noqa: F401  (a hook: under CI only platform skips)

import evaluator.evaluate
from challenge_kit import bundle as bundle_module
from challenge_kit import data
from challenge_kit.core.contract import SPECS
from challenge_kit.core.devices import tune_allocator
from challenge_kit.core.verify.report import Report

tune_allocator()


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    monkeypatch.setenv("DDKIT_NO_COMPILE", "1")
    monkeypatch.setenv("DDKIT_CALIBRATION_PASSES", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``), its module fixtures too:
    bitwise comparisons need the same thread count everywhere, and small convolutions run far faster on one thread
    than on two contended ones (CI has two cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_work(monkeypatch):
    """Reading data or scoring fails the test: the case must be refused before either."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the check")

    monkeypatch.setattr(data, "load_split", work)
    monkeypatch.setattr(evaluator.evaluate, "evaluate_images", work)


@pytest.fixture
def small_exports(tmp_path, monkeypatch):
    """Two exports the bundle takes as checked (the zip and its manifest are what is tested here)."""
    sources = []
    for spec in SPECS.values():
        pt = tmp_path / "exports" / spec.submission_file
        pt.parent.mkdir(exist_ok=True)
        pt.write_bytes(spec.name.encode())
        sources.append(pt)
    by_path = {str(p): (spec, p) for p, spec in zip(sources, SPECS.values(), strict=True)}
    monkeypatch.setattr(bundle_module, "checked_export", lambda source: (
        *by_path[str(source)], None, Report([], by_path[str(source)][0], "caller", str(source))))
    return sources
