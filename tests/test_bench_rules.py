"""`edgeprune bench` findings: noise, too few samples, speedup in the noise, a target run elsewhere."""
from __future__ import annotations

from edgeprune.report.bench_rules import evaluate_bench
from edgeprune.targets import load_target
from export_fixture import bench_doc


def _bench(**entry_changes) -> dict:
    doc = bench_doc(rounds=7, per_round=100)
    for entry in doc["entries"]:
        entry.update({"round_median_cv": 0.01, **entry_changes})
    return doc


def _rule(findings, rule_id):
    return [f for f in findings if f.rule_id == rule_id]


def test_a_healthy_bench_raises_nothing_but_unreported_tails():
    findings = evaluate_bench(_bench(), load_target("cpu-x86"))
    assert {f.severity for f in findings if f.rule_id != "bench_tail_samples"} == {"ok"}


def test_noisy_round_medians_mark_the_entry_unreliable():
    (dense, pruned) = _rule(evaluate_bench(_bench(round_median_cv=0.2)), "bench_timing_noise")
    assert dense.severity == "warn" and dense.title == "dense batch 1: timings unreliable"
    assert "20.0%" in dense.message and "10%" in dense.message


def test_iteration_spikes_alone_are_information():
    findings = _rule(evaluate_bench(_bench(cv=0.4, round_median_cv=0.02)), "bench_timing_noise")
    assert [f.severity for f in findings] == ["info", "info"]


def test_a_single_round_is_judged_on_its_iterations():
    doc = _bench(cv=0.3, round_median_cv=0.0, rounds=1)
    assert {f.severity for f in _rule(evaluate_bench(doc), "bench_timing_noise")} == {"warn"}


def test_too_few_samples_name_the_percentiles_not_reported():
    findings = _rule(evaluate_bench(_bench(n=100)), "bench_tail_samples")
    assert len(findings) == 2 and findings[0].title == "dense batch 1: p95, p99 not reported"
    assert "662 for p99" in findings[0].message
    assert not _rule(evaluate_bench(_bench(n=5000)), "bench_tail_samples")


def test_speedup_inside_its_interval_is_no_speedup_and_a_slowdown_fails():
    doc = _bench()
    doc["comparisons"][0].update(speedup=1.02, speedup_ci95=[0.97, 1.08])
    assert _rule(evaluate_bench(doc), "bench_speedup")[0].title == "pruned vs dense at batch 1: no measurable speedup"
    doc["comparisons"][0].update(speedup=0.8, speedup_ci95=[0.76, 0.84])
    assert _rule(evaluate_bench(doc), "bench_speedup")[0].severity == "fail"


def test_a_gpu_target_timed_on_the_cpu_fails():
    (finding,) = _rule(evaluate_bench(_bench(), load_target("gpu-trt-fp16")), "bench_device")
    assert finding.severity == "fail" and "dense batch 1 on cpu" in finding.message
    assert "cuda" in finding.title
    assert not _rule(evaluate_bench(_bench(device="cuda"), load_target("jetson-orin-nano")), "bench_device")
    assert not _rule(evaluate_bench(_bench()), "bench_device")  # no target named: nothing to compare
