"""What every rule returns (`Finding`) and the verdict derived from a list of them.

Shared by the export, sweep and bench rules, so a verdict reads the same wherever it is shown:
the worst severity wins and the summary lists the failing and warning titles, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

SEVERITIES = ("ok", "info", "warn", "fail")
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}


@dataclass(frozen=True)
class Finding:
    """One computed statement about a result; `figures` holds the numbers it rests on."""

    rule_id: str
    severity: str
    title: str
    message: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True)
class Verdict:
    """The overall status ('ok' | 'warn' | 'fail') and a one-line summary built from findings."""

    status: str
    summary: str
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"status": self.status, "summary": self.summary,
                "failures": list(self.failures), "warnings": list(self.warnings)}


def verdict(findings: Sequence[Finding]) -> Verdict:
    """Worst severity wins; the summary lists the failing and warning titles, nothing else."""
    failures = tuple(f.title for f in findings if f.severity == "fail")
    warnings = tuple(f.title for f in findings if f.severity == "warn")
    if failures:
        summary = "FAIL: " + "; ".join(failures)
        if warnings:
            summary += ". Also: " + "; ".join(warnings)
        return Verdict("fail", summary + ".", failures, warnings)
    if warnings:
        return Verdict("warn", "WARN: " + "; ".join(warnings) + ".", failures, warnings)
    passed = sum(f.severity == "ok" for f in findings)
    missing = [f.title for f in findings if f.rule_id == "missing_figures"]
    summary = f"OK: {passed} checks passed, none warned or failed"
    if missing:
        summary += f"; {missing[0]}"
    return Verdict("ok", summary + ".", failures, warnings)


def problems(findings: Sequence[Finding]) -> list[Finding]:
    """The findings a reader must act on (warn and fail), worst first."""
    return sorted((f for f in findings if f.severity in ("warn", "fail")),
                  key=lambda f: -_RANK[f.severity])
