"""gate: decisions on synthetic sample sets, and the exit code each outcome maps to."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.measure.results import SCHEMA_VERSION
from edgeprune.errors import IncomparableError, InputError
from edgeprune.measure.regression import RegressionConfig, compare, parse_fraction

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


def latency(verdict):
    return next(c for c in verdict.checks if c.metric == "p50 ms")


def test_same_distribution_passes():
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(seed=2)), FAST)
    assert verdict.outcome == "pass" and verdict.exit_code == 0
    check = latency(verdict)
    assert check.ci95[0] <= 1.0 <= check.ci95[1] or abs(check.ratio - 1) < 0.02


def test_clear_regression_fails_with_exit_1():
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.2, seed=2)), FAST)
    assert verdict.outcome == "regression" and verdict.exit_code == 1
    check = latency(verdict)
    assert check.ratio == pytest.approx(1.2, rel=0.03)
    assert check.p_value < 0.01
    assert check.ci95[0] > 1.05


def test_significant_but_small_slowdown_passes():
    verdict = compare(doc(noisy_rounds(seed=1, round_sd=0.002)),
                      doc(noisy_rounds(1.03, seed=2, round_sd=0.002)), FAST)
    check = latency(verdict)
    assert check.p_value < 0.01 and check.ratio < 1.05
    assert verdict.outcome == "pass"
    assert "within tolerance" in check.note


def test_large_but_insignificant_slowdown_passes():
    spread = np.linspace(0.5, 1.5, 12)
    base = [[v] * 5 for v in spread]
    cur = [[v * 1.1] * 5 for v in spread[::-1]]
    verdict = compare(doc(base), doc(cur), FAST)
    check = latency(verdict)
    assert check.ratio > 1.05
    assert check.p_value >= 0.01
    assert verdict.outcome == "pass"
    assert "not significant" in check.note


def test_improvement_never_fails():
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(0.7, seed=2)), FAST)
    assert latency(verdict).status == "improvement"
    assert verdict.outcome == "pass" and verdict.exit_code == 0


def test_different_machine_is_incomparable_unless_allowed():
    other = dict(ENV, cpu_model="Other CPU")
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.2, seed=2), env=other), FAST)
    assert verdict.outcome == "incomparable" and verdict.exit_code == 2
    assert verdict.env_differences["cpu_model"] == ("Test CPU", "Other CPU")
    allowed = RegressionConfig(allow_env_change=True, bootstrap_resamples=300)
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.2, seed=2), env=other), allowed)
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
    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(seed=2), env=dict(ENV, hostname="ci-2")), FAST)
    assert verdict.outcome == "pass"


def test_schema_mismatch_raises_incomparable_error():
    with pytest.raises(IncomparableError, match="schema_version"):
        compare(doc(noisy_rounds(seed=1), schema=SCHEMA_VERSION + 1), doc(noisy_rounds(seed=2)), FAST)
    assert IncomparableError.exit_code == 2


def test_not_a_bench_result_is_an_input_error():
    with pytest.raises(InputError):
        compare({"hello": 1}, doc(noisy_rounds(seed=2)), FAST)


def test_memory_growth_over_threshold_fails():
    base = doc(noisy_rounds(seed=1), memory=100.0)
    assert compare(base, doc(noisy_rounds(seed=2), memory=120.0), FAST).outcome == "regression"
    assert compare(base, doc(noisy_rounds(seed=2), memory=105.0), FAST).outcome == "pass"


def test_memory_growth_below_absolute_floor_passes():
    base = doc(noisy_rounds(seed=1), memory=2.0)
    verdict = compare(base, doc(noisy_rounds(seed=2), memory=2.5), FAST)  # +25% but 0.5 MB
    assert verdict.outcome == "pass"


def test_accuracy_drop_over_threshold_fails():
    base = doc(noisy_rounds(seed=1), accuracy={"m": 90.0})
    drop = compare(base, doc(noisy_rounds(seed=2), accuracy={"m": 89.0}), FAST)
    assert drop.outcome == "regression"
    check = next(c for c in drop.checks if c.metric.startswith("accuracy"))
    assert check.status == "regression"
    small = compare(base, doc(noisy_rounds(seed=2), accuracy={"m": 89.8}), FAST)
    assert small.outcome == "pass"


def test_accuracy_is_ignored_when_one_file_lacks_it():
    verdict = compare(doc(noisy_rounds(seed=1), accuracy={"m": 90.0}), doc(noisy_rounds(seed=2)), FAST)
    assert not any(c.metric.startswith("accuracy") for c in verdict.checks)


def test_too_few_rounds_is_inconclusive_and_fails_only_when_strict():
    base, cur = doc(noisy_rounds(seed=1, rounds=3)), doc(noisy_rounds(1.5, seed=2, rounds=3))
    verdict = compare(base, cur, FAST)
    assert verdict.outcome == "inconclusive" and verdict.exit_code == 0
    assert "too few rounds" in latency(verdict).note
    strict = compare(base, cur, RegressionConfig(strict=True, bootstrap_resamples=300))
    assert strict.exit_code == 2


def test_no_matching_entry_is_inconclusive():
    verdict = compare(doc(noisy_rounds(seed=1), batch=1), doc(noisy_rounds(seed=2), batch=8), FAST)
    assert verdict.outcome == "inconclusive"
    assert verdict.checks == ()


def test_verdict_to_dict_is_json_ready():
    import json

    verdict = compare(doc(noisy_rounds(seed=1)), doc(noisy_rounds(1.2, seed=2)), FAST)
    data = json.loads(json.dumps(verdict.to_dict()))
    assert data["outcome"] == "regression" and data["exit_code"] == 1
    assert len(data["checks"][0]["ci95"]) == 2


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
    assert compare(base, doc(noisy_rounds(seed=2), memory=2.63), FAST).outcome == "pass"
    assert compare(base, doc(noisy_rounds(seed=2), memory=40.0), FAST).outcome == "regression"
