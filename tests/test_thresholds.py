"""Export, sweep and bench verdicts come from one set of rule definitions (report.thresholds).

Each test changes one threshold and checks that all the judges move together: a rule that kept
its own copy of the number would stay where it was.
"""
from __future__ import annotations

import pytest

from edgeprune.report.bench_rules import evaluate_bench
from edgeprune.report.rules import evaluate
from edgeprune.report.sweep_rules import SweepEvidence, judge_sweep
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS, Thresholds
from edgeprune.workflows.sweep_stats import aggregate, operating_point
from export_fixture import bench_doc, changed, healthy_manifest


def _sweep(thresholds: Thresholds, *, dense: float = 90.0, cv: float = 0.02, ci=(1.7, 1.9)):
    records = [{"criterion": "gate", "seed": s, "keep": 0.5, "keep_achieved": 0.5, "params_after": 500,
                "flops_after": 2500, "accuracy_pct": dense - 0.2 + 0.1 * s, "accuracy_before_finetune_pct": 80.0,
                "dense_accuracy_pct": dense,
                "latency": {"pruned_p50_ms": 1.0, "dense_p50_ms": 1.8, "speedup": sum(ci) / 2,
                            "speedup_ci95": list(ci), "dense_cv": cv, "pruned_cv": cv,
                            "dense_round_median_cv": cv, "pruned_round_median_cv": cv}}
               for s in range(3)]
    rows = aggregate(records)
    candidate = operating_point(rows, dense, 1.0)
    return judge_sweep(SweepEvidence(
        dense=[{"name": "run", "accuracy_pct": dense}], chance_accuracy_pct=10.0,
        aggregates=[r.to_dict() for r in rows], records=records, candidate=candidate.to_dict(),
        tolerance_points=1.0, finetune_epochs=3, thresholds=thresholds)).findings


def _bench(cv: float = 0.02, ci=(1.62, 1.72)) -> dict:
    doc = bench_doc()
    for entry in doc["entries"]:
        entry.update(cv=cv, round_median_cv=cv)
    doc["comparisons"][0].update(speedup=sum(ci) / 2, speedup_ci95=list(ci))
    return doc


def _severities(findings, *rule_ids) -> set[str]:
    return {f.severity for f in findings if f.rule_id in rule_ids}


@pytest.mark.parametrize("thresholds, noisy", [(DEFAULT_THRESHOLDS, True), (Thresholds(timing_cv_max=0.5), False)])
def test_export_sweep_and_bench_share_the_timing_noise_limit(thresholds, noisy):
    export = evaluate(changed(healthy_manifest(), {"latency_ms": {"pruned": {"cv": 0.2}}}), thresholds=thresholds)
    sweep = _sweep(thresholds, cv=0.2)
    bench = evaluate_bench(_bench(cv=0.2), thresholds=thresholds)
    flagged = ["warn" in _severities(export, "timing_noise"), "warn" in _severities(sweep, "sweep_timing_noise"),
               "warn" in _severities(bench, "bench_timing_noise")]
    assert flagged == [noisy] * 3


@pytest.mark.parametrize("ci, within", [((0.97, 1.08), True), ((1.62, 1.72), False)])
def test_export_sweep_and_bench_share_the_speedup_interval_rule(ci, within):
    speedup = sum(ci) / 2
    export = evaluate(changed(healthy_manifest(), {"speedup": speedup, "speedup_ci95": list(ci),
                                                   "latency_ms": {"pruned": {"p50": 2.01 / speedup}}}))
    sweep = _sweep(DEFAULT_THRESHOLDS, ci=ci)
    bench = evaluate_bench(_bench(ci=ci))
    titles = [f.title for f in (*export, *sweep, *bench) if "no measurable speedup" in f.title]
    assert len(titles) == (3 if within else 0), titles


@pytest.mark.parametrize("thresholds, untrained", [
    (DEFAULT_THRESHOLDS, True), (Thresholds(chance_margin_points=1.0, chance_margin_fraction_of_chance=0.0), False),
])
def test_export_and_sweep_share_the_chance_margin(thresholds, untrained):
    export = evaluate(changed(healthy_manifest(), {"accuracy_before": 0.12, "accuracy_after": 0.12}),
                      thresholds=thresholds)
    sweep = _sweep(thresholds, dense=12.0)
    assert ["fail" in _severities(export, "untrained_model"), "fail" in _severities(sweep, "dense_untrained")] \
        == [untrained] * 2


def test_evaluate_keyword_defaults_are_the_shared_definitions():
    import inspect

    defaults = {name: p.default for name, p in inspect.signature(evaluate).parameters.items()
                if p.default is not inspect.Parameter.empty and p.default is not None}
    assert defaults == {name: getattr(DEFAULT_THRESHOLDS, name) for name in defaults}
