"""The sweep's rules fire on the sweep they describe and stay quiet on a well-trained one.

Sweeps are built here from plain records (as sweep.json holds them), so each test states only
the accuracies and timings it is about.
"""
from __future__ import annotations

from typing import Optional

import pytest

from edgeprune.report.sweep_rules import SweepEvidence, judge_sweep
from edgeprune.report.thresholds import Thresholds
from edgeprune.workflows.sweep_stats import aggregate, operating_point


def _latency(speedup: float = 1.8, ci: Optional[list] = None, cv: float = 0.02) -> dict:
    return {"pruned_p50_ms": 1.0, "dense_p50_ms": speedup, "speedup": speedup,
            "speedup_ci95": ci if ci is not None else [speedup * 0.97, speedup * 1.03],
            "dense_cv": cv, "pruned_cv": cv, "dense_round_median_cv": cv, "pruned_round_median_cv": cv}


def _sweep(cells, *, dense: float = 90.0, chance: Optional[float] = 10.0, finetune_epochs: int = 3,
           tolerance: float = 1.0, latency=None, thresholds: Thresholds = Thresholds()):
    """cells: (keep, accuracies over seeds); latency: keep -> latency dict (all seeds)."""
    records = [{"criterion": "gate", "seed": s, "keep": keep, "keep_achieved": keep,
                "params_after": 1000 * keep, "flops_after": 5000 * keep, "accuracy_pct": acc,
                "accuracy_before_finetune_pct": acc - 10, "dense_accuracy_pct": dense,
                "latency": (latency or {}).get(keep, _latency())}
               for keep, accs in cells for s, acc in enumerate(accs)]
    rows = aggregate(records)
    candidate = operating_point(rows, dense, tolerance)
    return judge_sweep(SweepEvidence(
        dense=[{"name": "run", "accuracy_pct": dense}], chance_accuracy_pct=chance,
        aggregates=[r.to_dict() for r in rows], records=records,
        candidate=candidate.to_dict() if candidate else None, tolerance_points=tolerance,
        finetune_epochs=finetune_epochs, thresholds=thresholds))


def _rule(judgement, rule_id: str):
    return [f for f in judgement.findings if f.rule_id == rule_id]


WELL_TRAINED = [(0.8, (90.1, 89.9, 90.0)), (0.5, (89.6, 89.4, 89.5)), (0.3, (85.0, 86.0, 85.5))]


def test_a_well_trained_sweep_recommends_its_point_and_raises_nothing():
    judgement = _sweep(WELL_TRAINED)
    assert judgement.recommended and judgement.verdict.status == "ok"
    (point,) = _rule(judgement, "operating_point")
    assert point.severity == "ok" and point.title == "operating point keep 0.5 with gate"
    assert "within 1 pt; 95% interval" in point.message and "1.80x faster" in point.message


def test_untrained_dense_fails_and_recommends_no_operating_point():
    # the example: dense 12.67% (chance 10%), keep 0.2 at 16.22% "within 1 pt"
    judgement = _sweep([(0.8, (72.7,)), (0.4, (20.0,)), (0.2, (16.22,))], dense=12.67, finetune_epochs=1)
    (untrained,) = _rule(judgement, "dense_untrained")
    assert untrained.severity == "fail" and "looks untrained" in untrained.title
    assert "12.67%" in untrained.message and "10.0%" in untrained.message
    assert not judgement.recommended and judgement.verdict.status == "fail"
    (point,) = _rule(judgement, "operating_point")
    assert point.message.startswith("none recommended") and "keep 0.2" in point.message


def test_dense_just_above_the_chance_margin_is_not_called_untrained():
    judgement = _sweep(WELL_TRAINED, dense=13.1, chance=10.0)
    assert [f.severity for f in _rule(judgement, "dense_untrained")] == ["ok"]


def test_pruned_models_beating_dense_after_fine_tuning_mean_the_baseline_is_under_trained():
    judgement = _sweep([(0.8, (80.0, 81.0, 80.5)), (0.5, (75.0, 75.4, 75.2))], dense=70.0, finetune_epochs=2)
    (under,) = _rule(judgement, "dense_undertrained")
    assert under.severity == "warn" and "under-trained" in under.title
    assert "keep 0.8 gate 80.5%" in under.message and "same 2 extra epoch(s)" in under.message
    assert not judgement.recommended
    assert _rule(judgement, "operating_point")[0].message.startswith("none recommended")


@pytest.mark.parametrize("cells, epochs", [
    ([(0.8, (90.5, 90.7, 90.6))], 3),  # a fine-tune gain within beats_dense_points
    ([(0.8, (87.0, 95.0, 91.0)), (0.5, (89.5, 89.6, 89.7))], 3),  # mean 3 pts up, interval reaches dense
    ([(0.8, (95.0,))], 0),  # no fine-tune: the rule is about the fine-tune's extra epochs
])
def test_a_gain_inside_the_noise_is_not_called_under_training(cells, epochs):
    judgement = _sweep(cells, finetune_epochs=epochs)
    assert not [f for f in _rule(judgement, "dense_undertrained") if f.severity != "ok"]


def test_a_single_seed_operating_point_says_its_interval_is_unknown():
    judgement = _sweep([(0.8, (90.0,)), (0.5, (89.5,))])
    (point,) = _rule(judgement, "operating_point")
    assert point.severity == "warn" and "one seed" in point.title
    assert "interval is unknown" in point.message and "not established" in point.message
    assert judgement.recommended  # shown, qualified; not withheld


def test_an_interval_reaching_below_the_tolerance_is_not_called_within_it():
    judgement = _sweep([(0.8, (90.0, 90.0, 90.0)), (0.5, (88.0, 90.5, 89.3))])
    (point,) = _rule(judgement, "operating_point")
    assert point.severity == "warn" and "not established" in point.title
    assert "reaches below dense − 1" in point.message


def test_noisy_latency_at_any_sweep_point_is_flagged():
    noisy = {0.3: _latency(cv=0.25)}
    (finding,) = _rule(_sweep(WELL_TRAINED, latency=noisy), "sweep_timing_noise")
    assert finding.severity == "warn" and "3 of 9" in finding.title
    assert "keep 0.3 gate seed 0 (dense CV 25.0%, pruned CV 25.0%)" in finding.message
    (quiet,) = _rule(_sweep(WELL_TRAINED), "sweep_timing_noise")
    assert quiet.severity == "ok"


def test_round_median_cv_decides_over_iteration_spikes():
    spiky = {0.3: {**_latency(), "dense_cv": 0.6, "pruned_cv": 0.6}}
    assert _rule(_sweep(WELL_TRAINED, latency=spiky), "sweep_timing_noise")[0].severity == "ok"


def test_speedup_inside_its_interval_at_the_operating_point_is_no_speedup():
    judgement = _sweep(WELL_TRAINED, latency={0.5: _latency(1.03, ci=[0.97, 1.09])})
    warned = [f for f in _rule(judgement, "sweep_speedup") if f.severity == "warn"]
    assert warned and warned[0].title == "no measurable speedup at the operating point"
    assert "no measurable speedup" in _rule(judgement, "operating_point")[0].message


def test_a_slowdown_at_the_operating_point_fails_and_elsewhere_is_information():
    at_point = _sweep(WELL_TRAINED, latency={0.5: _latency(0.8, ci=[0.76, 0.84])})
    assert [f.severity for f in _rule(at_point, "sweep_speedup")] == ["fail"]
    elsewhere = _sweep(WELL_TRAINED, latency={0.8: _latency(0.8, ci=[0.76, 0.84])})
    assert [f.severity for f in _rule(elsewhere, "sweep_speedup")] == ["info"]
    assert "keep 0.8 gate seed 0 (0.80×" in _rule(elsewhere, "sweep_speedup")[0].message


def test_unknown_chance_and_untimed_sweeps_say_what_was_not_measured():
    judgement = _sweep(WELL_TRAINED, chance=None, latency={k: None for k, _ in WELL_TRAINED})
    (missing,) = _rule(judgement, "missing_figures")
    assert "chance accuracy" in missing.title and "latency" in missing.title
    assert not _rule(judgement, "dense_untrained") and not _rule(judgement, "sweep_timing_noise")
