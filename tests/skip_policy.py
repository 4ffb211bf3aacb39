"""Which skips a run may show. Under CI (``$CI`` true) a test may skip only because the platform lacks what it
needs (CUDA, root, a right of the kernel's), and its reason then starts with ``PLATFORM``; any other skip (the shared
mini set not found, a package missing) fails the test there, naming the reason. Elsewhere skips stay skips, and
``-rs`` (pyproject's addopts) prints every reason."""

import os

import pytest

PLATFORM = "platform: "


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        path, line, reason = report.longrepr
        reason = reason.removeprefix("Skipped: ")
        if not reason.startswith(PLATFORM):
            report.outcome = "failed"
            report.longrepr = f"{path}:{line + 1}: skipped under CI, where only a platform may skip a test: {reason}"
