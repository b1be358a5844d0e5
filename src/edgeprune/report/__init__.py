"""The honest report: findings computed by rules, rendered to Markdown and self-contained HTML.

`render_report` is imported lazily so `from edgeprune.report import evaluate` stays light
(no jinja2 or matplotlib).
"""
from __future__ import annotations

from edgeprune.report.findings import Finding, Verdict, verdict
from edgeprune.report.rules import RULES, evaluate
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS, Thresholds

__all__ = ["DEFAULT_THRESHOLDS", "RULES", "Finding", "Thresholds", "Verdict", "evaluate", "render_report",
           "verdict"]


def __getattr__(name: str):
    if name == "render_report":
        from edgeprune.report.render import render_report

        return render_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
