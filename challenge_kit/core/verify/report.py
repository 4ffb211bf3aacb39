"""A verify report: one row per check (PASS, WARN or FAIL with a one-line reason), and how rows are written."""

from __future__ import annotations

from dataclasses import dataclass, field

from challenge_kit.core.contract import DatasetSpec
from challenge_kit.core.errors import CHECK_FAILED, DONE

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
SHOW = 8  # list entries shown in a one-line reason


@dataclass(frozen=True)
class Check:
    """One row of the report; ``details`` holds the numbers behind the reason (for --json)."""

    name: str
    status: str
    reason: str
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "reason": self.reason, "details": self.details}


@dataclass
class Report:
    checks: list[Check]
    spec: DatasetSpec | None
    spec_source: str | None = None
    path: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return DONE if self.ok else CHECK_FAILED

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "exit_code": self.exit_code,
                "spec": self.spec.to_dict() if self.spec else None, "spec_source": self.spec_source,
                "challenge": self.spec.challenge if self.spec else None,
                "checks": [c.to_dict() for c in self.checks]}


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def _listing(items: list[str]) -> str:
    more = f", ... (+{len(items) - SHOW} more)" if len(items) > SHOW else ""
    return ", ".join(items[:SHOW]) + more


def findings(report: Report) -> list[str]:
    """The report's FAIL and WARN rows, one line each: what a scoring command prints before its score."""
    where = f"{report.path}: " if report.path else ""
    return [f"{where}{c.status} {c.name}: {c.reason}" for c in report.checks if c.status != PASS]

