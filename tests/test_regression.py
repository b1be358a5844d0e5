"""gate: decisions on synthetic sample sets, and the exit code each outcome maps to."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.measure.results import SCHEMA_VERSION
from edgeprune.errors import IncomparableError, InputError
from edgeprune.measure.regression import RegressionConfig, compare, compare_runs, parse_fraction

ENV = {"cpu_model": "Test CPU", "physical_cores": 2, "logical_cores": 2, "threads": 1,
       "gpu_name": None, "gpu_driver": None, "hostname": "ci-1",
       "versions": {"onnxruntime": "1.32.0", "torch": "2.15.0", "tensorrt": None}}
FAST = RegressionConfig(bootstrap_resamples=300)


def noisy_rounds(scale=1.0, rounds=20, per_round=30, seed=0, round_sd=0.01, iter_sd=0.03):
    rng = np.random.default_rng(seed)
    drift = 1 + rng.normal(0, round_sd, rounds)
    return [list(scale * d * (1 + np.abs(rng.normal(0, iter_sd, per_round)))) for d in drift]


def doc(rounds, *, model="m", batch=1, env=ENV, target="cpu-x86", accuracy=None, memory=None,
        schema=SCHEMA_VERSION):
    flat = np.concatenate(rounds) if rounds else np.array([1.0])
    entry = {"model": model, "batch": batch, "samples_ms": rounds,
             "p50_ms": float(np.median(flat)), "model_memory_mb": memory,
             "gpu_peak_mb": None, "peak_rss_mb": None}
    return {"schema_version": schema, "target": target, "environment": env,
            "entries": [entry], "accuracy_pct": accuracy or {}}


def runs(scale=1.0, n=4, seed=0, run_sd=0.01, **kw):
    """`n` bench documents of separate runs: each run has its own level (drift between runs)."""
    rng = np.random.default_rng(seed + 1000)
    return [doc(noisy_rounds(scale * (1 + rng.normal(0, run_sd)), seed=seed * 100 + i), **kw)
            for i in range(n)]


def latency(verdict):
    return next(c for c in verdict.checks if c.metric == "p50 ms")


def test_same_distribution_over_several_runs_passes():
    verdict = compare_runs(runs(seed=1), runs(seed=2), FAST)
    assert verdict.outcome == "pass" and verdict.exit_code == 0
    check = latency(verdict)
    assert check.interval[1] <= 1.05 and check.samples == 8


def test_clear_regression_over_several_runs_fails_with_exit_1():
    verdict = compare_runs(runs(seed=1), runs(1.2, seed=2), FAST)
    assert verdict.outcome == "regression" and verdict.exit_code == 1
    check = latency(verdict)
    assert check.ratio == pytest.approx(1.2, rel=0.03)
    assert check.interval[0] > 1.05


def test_one_run_per_side_is_inconclusive_whatever_the_ratio():
    """Within-run rounds say nothing about the drift between two processes (issue 14)."""
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.3, seed=2)), FAST)
    check = latency(verdict)
    assert verdict.outcome == "inconclusive" and verdict.exit_code == 0
    assert "spread between runs is unknown" in check.note
    assert check.ratio == pytest.approx(1.3, rel=0.03)
    strict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.3, seed=2)),
                     RegressionConfig(strict=True, bootstrap_resamples=300))
    assert strict.exit_code == 2


def test_one_bench_file_given_twice_counts_once_and_cannot_make_a_spread_of_zero():
    base = runs(seed=1, n=1)
    verdict = compare_runs(base * 3, runs(1.5, seed=2, n=1), FAST)
    assert latency(verdict).status == "inconclusive"  # one distinct baseline run: spread unknown
    assert any("counted once" in note for note in verdict.notes)
    with pytest.raises(InputError, match="also a baseline"):
        compare_runs(base + runs(seed=3, n=1), base, FAST)


def test_run_to_run_spread_that_hides_the_threshold_is_inconclusive_and_named():
    verdict = compare_runs(runs(seed=1, n=3, run_sd=0.06), runs(1.06, seed=2, n=3, run_sd=0.06), FAST)
    check = latency(verdict)
    assert check.status == "inconclusive"
    assert check.interval[0] < 1.05 < check.interval[1]
    assert "run-to-run spread" in check.note and check.spread > 0.02


def test_a_run_level_drift_seen_by_one_side_only_does_not_fail_a_stored_gate():
    """The failure of issue 14: per-round medians of two runs 5% apart looked 'significant'."""
    base = runs(seed=1, n=3, run_sd=0.04)
    cur = runs(1.0, seed=7, n=3, run_sd=0.04)
    assert compare_runs(base, cur, FAST).outcome != "regression"


def _job_runs(rng, scale, n, job_sd, run_sd):
    """`n` runs of one CI job: one drift level for the job, a little noise per run."""
    level = scale * np.exp(rng.normal(0, job_sd))
    return [doc([[level * np.exp(rng.normal(0, run_sd))] * 12] * 12) for _ in range(n)]


def test_drift_between_jobs_stays_near_the_nominal_false_alarm_rate_and_a_large_slowdown_fails():
    """Runs of one job agree closely (SD 0.5%) while jobs differ by 5% (SD). The baseline is five
    earlier jobs' runs, the current side three runs of one job: the current mean carries its
    job's whole drift, which the interval must allow for (one-sided 1% nominal)."""
    rng = np.random.default_rng(7)
    trials = 300
    false_alarms = sum(
        compare_runs([run for _ in range(5) for run in _job_runs(rng, 1.0, 1, 0.05, 0.005)],
                     _job_runs(rng, 1.0, 3, 0.05, 0.005), FAST).outcome == "regression"
        for _ in range(trials))
    assert false_alarms / trials <= 0.02, false_alarms
    detected = sum(compare_runs([run for _ in range(5) for run in _job_runs(rng, 1.0, 1, 0.05, 0.005)],
                                _job_runs(rng, 1.6, 3, 0.05, 0.005), FAST).outcome == "regression"
                   for _ in range(100))
    assert detected >= 95


def test_a_stored_gate_says_which_slowdown_it_can_resolve():
    verdict = compare_runs(runs(seed=1, n=5, run_sd=0.03), runs(1.04, seed=2, n=3, run_sd=0.03), FAST)
    check = latency(verdict)
    assert check.status == "inconclusive"
    assert "cannot fail at this spread" in check.note


def test_improvement_never_fails():
    verdict = compare_runs(runs(seed=1), runs(0.7, seed=2), FAST)
    assert latency(verdict).status == "improvement"
    assert verdict.outcome == "pass" and verdict.exit_code == 0


def test_different_machine_is_incomparable_unless_allowed():
    other = dict(ENV, cpu_model="Other CPU")
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.2, seed=2), env=other), FAST)
    assert verdict.outcome == "incomparable" and verdict.exit_code == 2
    assert verdict.env_differences["cpu_model"] == ("Test CPU", "Other CPU")
    allowed = RegressionConfig(allow_env_change=True, bootstrap_resamples=300)
    verdict = compare_runs(runs(seed=1), runs(1.2, seed=2, env=other), allowed)
    assert verdict.outcome == "regression"
    assert any("allow-env-change" in n for n in verdict.notes)


def test_other_thread_count_runtime_or_target_is_incomparable():
    threads = dict(ENV, threads=2)
    runtime = dict(ENV, versions=dict(ENV["versions"], onnxruntime="1.33.0"))
    base = doc(noisy_rounds(seed=1))
    assert compare(base, doc(noisy_rounds(seed=2), env=threads), FAST).outcome == "incomparable"
    assert compare(base, doc(noisy_rounds(seed=2), env=runtime), FAST).outcome == "incomparable"
    assert compare(base, doc(noisy_rounds(seed=2), target="cpu-arm64"), FAST).outcome == "incomparable"


def test_hostname_alone_does_not_make_results_incomparable():
    verdict = compare_runs(runs(seed=1), runs(seed=2, env=dict(ENV, hostname="ci-2")), FAST)
    assert verdict.outcome == "pass"


def test_schema_mismatch_raises_incomparable_error():
    with pytest.raises(IncomparableError, match="schema_version"):
        compare(doc(noisy_rounds(seed=1), schema=SCHEMA_VERSION + 1), doc(noisy_rounds(seed=2)), FAST)
    assert IncomparableError.exit_code == 2


def test_not_a_bench_result_is_an_input_error():
    with pytest.raises(InputError):
        compare({"hello": 1}, doc(noisy_rounds(seed=2)), FAST)


def memory(verdict, metric="memory MB"):
    return next(c for c in verdict.checks if c.metric == metric)


def test_memory_growth_over_threshold_fails():
    base = doc(noisy_rounds(seed=1), memory=100.0)
    assert compare(base, doc(noisy_rounds(seed=2), memory=120.0), FAST).outcome == "regression"
    assert memory(compare(base, doc(noisy_rounds(seed=2), memory=105.0), FAST)).status == "pass"


def test_memory_growth_below_absolute_floor_passes():
    base = doc(noisy_rounds(seed=1), memory=2.0)
    verdict = compare(base, doc(noisy_rounds(seed=2), memory=2.5), FAST)  # +25% but 0.5 MB
    assert memory(verdict).status == "pass"


def test_exact_weight_and_activation_bytes_take_a_plain_threshold():
    base = runs(seed=1, n=2)
    for d in base:
        d["entries"][0].update(weight_bytes=1_000_000, activation_bytes=200_000)
    grown = runs(seed=2, n=2)
    for d in grown:
        d["entries"][0].update(weight_bytes=1_050_000, activation_bytes=260_000)
    verdict = compare_runs(base, grown, FAST)
    assert memory(verdict, "weight bytes").status == "pass"  # +5% < 10%
    assert memory(verdict, "activation bytes").status == "regression"  # +30%
    assert verdict.outcome == "regression"


def test_accuracy_drop_over_threshold_fails():
    base = doc(noisy_rounds(seed=1), accuracy={"m": 90.0})
    drop = compare(base, doc(noisy_rounds(seed=2), accuracy={"m": 89.0}), FAST)
    assert drop.outcome == "regression"
    check = next(c for c in drop.checks if c.metric.startswith("accuracy"))
    assert check.status == "regression"
    small = compare(base, doc(noisy_rounds(seed=2), accuracy={"m": 89.8}), FAST)
    assert next(c for c in small.checks if c.metric.startswith("accuracy")).status == "pass"


def test_accuracy_is_ignored_when_one_file_lacks_it():
    verdict = compare(doc(noisy_rounds(seed=1), accuracy={"m": 90.0}), doc(noisy_rounds(seed=2)), FAST)
    assert not any(c.metric.startswith("accuracy") for c in verdict.checks)


def test_no_matching_entry_is_inconclusive():
    verdict = compare(doc(noisy_rounds(seed=1), batch=1), doc(noisy_rounds(seed=2), batch=8), FAST)
    assert verdict.outcome == "inconclusive"
    assert verdict.checks == ()


def test_verdict_to_dict_is_json_ready():
    import json

    verdict = compare_runs(runs(seed=1), runs(1.2, seed=2), FAST)
    data = json.loads(json.dumps(verdict.to_dict()))
    assert data["outcome"] == "regression" and data["exit_code"] == 1
    assert len(data["checks"][0]["interval"]) == 2


@pytest.mark.parametrize("text,value", [("5%", 0.05), ("0.05", 0.05), (" 12.5 % ", 0.125),
                                        ("0", 0.0), ("150%", 1.5)])
def test_parse_fraction_accepts_percent_or_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "abc", "-1%", "", "%"])
def test_parse_fraction_rejects_ambiguous_or_bad_values(text):
    with pytest.raises(InputError):
        parse_fraction(text)


def test_gate_config_validates():
    with pytest.raises(ValueError):
        RegressionConfig(alpha=0)
    with pytest.raises(ValueError):
        RegressionConfig(max_regression=-0.1)


def test_memory_jitter_of_a_few_mb_is_not_a_regression():
    """Regression test: an A/A pair of the demo model measured 0.6 and 2.6 MB of attributed RSS."""
    base = doc(noisy_rounds(seed=1), memory=0.58)
    assert memory(compare(base, doc(noisy_rounds(seed=2), memory=2.63), FAST)).status == "pass"
    assert compare(base, doc(noisy_rounds(seed=2), memory=40.0), FAST).outcome == "regression"
