"""Each report rule fires on the export it describes and stays quiet on a healthy one."""
from __future__ import annotations

import pytest

from edgeprune.report.manifest import ManifestError
from edgeprune.report.render import latency_samples_ms
from edgeprune.report.rules import RULES, Finding, Thresholds, evaluate, verdict
from export_fixture import DROP, LAYERS, bench_doc, changed, healthy_manifest


def _layers(**after_by_name: int) -> list[dict]:
    return [{"module": n, "out_channels_before": b, "out_channels_after": after_by_name.get(n, a)}
            for n, b, a in LAYERS]


def _engine_with_parity(**parity) -> list[dict]:
    engine = healthy_manifest()["engines"][0]
    return [{**engine, "parity": {**engine["parity"], **parity}}]


def _int8_engine(**changes) -> list[dict]:
    """The issue-13 INT8 engine: logits moved past the FP32 tolerance, decisions kept."""
    engine = {"name": "onnxruntime-int8", "path": "model.int8.onnx", "precision": "int8",
              "accuracy": 0.900, "reference_accuracy": 0.905, "accuracy_samples": 256,
              "parity": {"max_abs_err": 0.8, "top1_agreement": 0.97, "n_samples": 64,
                         "tolerance": 0.5, "passed": False}}
    parity = changes.pop("parity", {})
    return [{**engine, **changes, "parity": {**engine["parity"], **parity}}]


def _by_rule(findings: list[Finding], rule_id: str) -> list[Finding]:
    return [f for f in findings if f.rule_id == rule_id]


def _problems(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in ("warn", "fail")]


# (case id, rule_id, manifest changes, expected severity, words the text must contain)
FIRING = [
    ("untrained-dense", "untrained_model", {"accuracy_before": 0.11, "accuracy_after": 0.104},
     "fail", ["looks untrained", "11.0%", "10.0%"]),
    ("untrained-below-chance", "untrained_model", {"accuracy_before": 0.05, "accuracy_after": 0.05},
     "fail", ["looks untrained"]),
    ("untrained-pruned-only", "untrained_model", {"accuracy_after": 0.12},
     "fail", ["pruned model looks untrained", "12.0%"]),
    ("untrained-binary", "untrained_model",
     {"num_classes": 2, "chance_accuracy": 0.5, "accuracy_before": 0.6, "accuracy_after": 0.6},
     "fail", ["looks untrained", "50.0%"]),
    ("untrained-chance-from-class-names", "untrained_model",
     {"num_classes": DROP, "chance_accuracy": DROP, "accuracy_before": 0.12, "accuracy_after": 0.12},
     "fail", ["looks untrained"]),
    ("keep-missed", "budget_met",
     {"keep_requested": 0.30, "keep_achieved": 0.51, "params_after": DROP,
      "keep_note": "min_channels=8 kept more than asked"},
     "fail", ["asked 30.0%", "got 51.0%", "0.300", "0.510", "min_channels=8 kept more"]),
    ("keep-just-over-tolerance", "budget_met", {"keep_achieved": 0.5051, "params_after": DROP},
     "fail", ["asked 50.0%"]),
    ("keep-contradicts-counts", "budget_met", {"params_after": 200000},
     "fail", ["contradicts the counts", "0.734"]),
    ("accuracy-drop-warn", "accuracy_drop", {"accuracy_after": 0.89},
     "warn", ["2.2 points", "91.2%", "89.0%"]),
    ("accuracy-drop-fail", "accuracy_drop", {"accuracy_after": 0.80},
     "fail", ["11.2 points"]),
    ("shrink-failed", "shrink_check", {"shrink_check": {"passed": False, "max_abs_diff": 0.5}},
     "fail", ["differs from the gated model"]),
    ("onnx-parity-flag", "onnx_parity", {"onnx_parity": {"passed": False}},
     "fail", ["ONNX parity failed", "marked as failed"]),
    ("onnx-parity-top1", "onnx_parity", {"onnx_parity": {"top1_agreement": 0.99}},
     "fail", ["top-1 agreement 99.0%"]),
    ("onnx-parity-err", "onnx_parity", {"onnx_parity": {"max_abs_err": 0.02}},
     "fail", ["max abs error 0.02 over tolerance 0.0001"]),
    ("engine-parity", "engine_parity", {"engines": _engine_with_parity(top1_agreement=0.97)},
     "fail", ["onnxruntime-cpu", "97.0%"]),
    ("engine-parity-flag", "engine_parity", {"engines": _engine_with_parity(passed=False)},
     "fail", ["engine onnxruntime-cpu parity failed"]),
    ("int8-agreement-low", "engine_parity", {"engines": _int8_engine(parity={"top1_agreement": 0.90})},
     "fail", ["onnxruntime-int8", "90.0%", "under 95%", ">= 95%", "<= 1.0 points"]),
    ("int8-accuracy-drop", "engine_parity", {"engines": _int8_engine(accuracy=0.880)},
     "fail", ["2.5 points below FP32", "more than 1.0"]),
    ("int8-states-its-thresholds", "engine_parity", {"engines": _int8_engine()},
     "ok", ["97.0%", ">= 95%", "<= 1.0 points", "not judged"]),
    ("slowdown", "speedup",
     {"speedup": 0.80, "speedup_ci95": [0.76, 0.84],
      "latency_ms": {"dense": {"p50": 2.0}, "pruned": {"p50": 2.5}}},
     "fail", ["slowdown", "0.80×"]),
    ("slowdown-from-latencies", "speedup",
     {"speedup": DROP, "speedup_ci95": DROP, "latency_ms": {"pruned": {"p50": 3.0, "cv": 0.02}}},
     "fail", ["slowdown", "0.67×"]),
    ("no-speedup-ci", "speedup", {"speedup": 1.02, "speedup_ci95": [0.97, 1.08],
                                  "latency_ms": {"pruned": {"p50": 1.97}}},
     "warn", ["no measurable speedup", "0.97–1.08"]),
    ("slower-within-noise", "speedup", {"speedup": 0.98, "speedup_ci95": [0.93, 1.03],
                                        "latency_ms": {"pruned": {"p50": 2.05}}},
     "warn", ["no measurable speedup", "slower"]),
    ("no-speedup-cv", "speedup", {"speedup": 1.02, "speedup_ci95": DROP,
                                  "latency_ms": {"pruned": {"p50": 1.97}}},
     "warn", ["no measurable speedup", "CV"]),
    ("speedup-inside-cv", "speedup", {"speedup": 1.03, "speedup_ci95": DROP,
                                      "latency_ms": {"pruned": {"p50": 1.95}}},
     "warn", ["no measurable speedup", "timing CV 3.5%"]),
    ("speedup-without-noise-estimate", "speedup",
     {"speedup_ci95": DROP, "latency_ms": {"dense": {"cv": DROP}, "pruned": {"cv": DROP}}},
     "info", ["without a noise estimate"]),
    ("speedup-contradicts", "speedup", {"latency_ms": {"pruned": {"p50": 3.0}}},
     "fail", ["contradicts the latencies", "1.68×"]),
    ("noisy-manifest", "timing_noise", {"latency_ms": {"pruned": {"cv": 0.2}}},
     "warn", ["timings unreliable", "pruned 20.0%"]),
    ("tail-few-samples", "tail_samples", {"latency_ms": {"pruned": {"n": 100}}},
     "info", ["pruned p99", "100 samples", "662"]),
    ("gpu-misaligned", "gpu_channel_alignment",
     {"target": {"device": "cuda", "runtime": "onnxruntime"},
      "layers": _layers(**{"conv1": 12, "layer2.0.conv1": 20})},
     "warn", ["multiples of 8", "conv1 (12)", "layer2.0.conv1 (20)"]),
    ("tensorrt-misaligned", "gpu_channel_alignment",
     {"target": {"device": "cpu", "runtime": "tensorrt"}, "layers": _layers(conv1=12)},
     "warn", ["conv1 (12)"]),
    ("gpu-misaligned-groups", "gpu_channel_alignment",
     {"target": {"device": "jetson"}, "layers": DROP,
      "plan": {"groups": [{"id": 0, "name": "stem", "channels_before": 16, "channels_after": 13}]}},
     "warn", ["stem (13)"]),
    ("latency-missing", "missing_figures",
     {"latency_ms": DROP, "speedup": DROP, "speedup_ci95": DROP},
     "info", ["not measured", "dense latency", "pruned latency"]),
    ("memory-and-engine-parity-missing", "missing_figures",
     {"memory_mb": DROP, "engines": [{"name": "trt-fp16", "path": "model.plan"}]},
     "info", ["memory", "parity of engine trt-fp16"]),
]


@pytest.mark.parametrize("rule_id, changes, severity, words",
                         [case[1:] for case in FIRING], ids=[case[0] for case in FIRING])
def test_rule_fires(rule_id, changes, severity, words):
    findings = _by_rule(evaluate(changed(healthy_manifest(), changes)), rule_id)
    fired = [f for f in findings if f.severity == severity]
    assert fired, f"{rule_id} did not fire {severity}: {findings}"
    text = " ".join(f"{f.title} {f.message}" for f in fired)
    for word in words:
        assert word in text


# (case id, rule_id, changes): the rule must give no warn/fail.
QUIET = [
    ("trained", "untrained_model", {}),
    ("just-above-margin", "untrained_model", {"accuracy_before": 0.131, "accuracy_after": 0.131}),
    ("keep-at-tolerance", "budget_met", {"keep_achieved": 0.505, "params_after": DROP}),
    ("keep-below-at-tolerance", "budget_met", {"keep_achieved": 0.495, "params_after": DROP}),
    ("drop-within-tolerance", "accuracy_drop", {"accuracy_after": 0.903}),
    ("accuracy-rose", "accuracy_drop", {"accuracy_after": 0.93}),
    ("onnx-parity-ok", "onnx_parity", {}),
    ("engine-parity-ok", "engine_parity", {}),
    ("int8-logits-moved-decisions-kept", "engine_parity", {"engines": _int8_engine()}),
    ("int8-at-the-thresholds", "engine_parity",
     {"engines": _int8_engine(accuracy=0.895, parity={"top1_agreement": 0.95})}),
    ("faster", "speedup", {}),
    ("cv-under-limit", "timing_noise", {"latency_ms": {"pruned": {"cv": 0.099}}}),
    ("gpu-aligned", "gpu_channel_alignment", {"target": {"device": "cuda"}}),
    ("cpu-misaligned-is-fine", "gpu_channel_alignment", {"layers": _layers(conv1=12)}),
    ("gpu-unpruned-odd-layer", "gpu_channel_alignment",
     {"target": {"device": "cuda"}, "layers": _layers(fc=10)}),
]


@pytest.mark.parametrize("rule_id, changes", [c[1:] for c in QUIET], ids=[c[0] for c in QUIET])
def test_rule_stays_quiet(rule_id, changes):
    findings = _by_rule(evaluate(changed(healthy_manifest(), changes)), rule_id)
    assert not _problems(findings), findings


def test_healthy_export_has_no_warnings_and_every_rule_is_registered():
    findings = evaluate(healthy_manifest())
    assert not [f for f in findings if f.severity != "ok"], findings
    assert {f.rule_id for f in findings} >= {"untrained_model", "budget_met", "accuracy_drop",
                                             "onnx_parity", "engine_parity", "speedup",
                                             "timing_noise"}
    assert len(RULES) == len({rule.__name__ for rule in RULES})


def test_absent_figures_are_not_invented():
    bare = {"schema_version": 1, "name": "bare"}
    findings = evaluate(bare)
    assert [f.rule_id for f in findings] == ["missing_figures"]
    assert findings[0].severity == "info"
    assert "accuracy before pruning" in findings[0].figures["missing"]


def test_accuracy_tolerance_is_configurable():
    manifest = changed(healthy_manifest(), {"accuracy_after": 0.89})
    assert _problems(_by_rule(evaluate(manifest, accuracy_tolerance_points=3.0), "accuracy_drop")) == []


def test_invalid_thresholds_are_rejected():
    with pytest.raises(ValueError):
        Thresholds(timing_cv_max=0)
    with pytest.raises(ValueError):
        Finding("x", "great", "t", "m")


def test_verdict_of_untrained_model_says_so_and_never_praises():
    result = verdict(evaluate(changed(healthy_manifest(), {"accuracy_before": 0.1,
                                                           "accuracy_after": 0.1})))
    assert result.status == "fail"
    assert "looks untrained" in result.summary
    for word in ("excellent", "good", "success", "great"):
        assert word not in result.summary.lower()


def test_verdict_lists_every_failure_and_warning():
    manifest = changed(healthy_manifest(), {
        "keep_requested": 0.3, "keep_achieved": 0.51, "params_after": DROP,
        "latency_ms": {"pruned": {"cv": 0.25}},
    })
    result = verdict(evaluate(manifest))
    assert result.status == "fail"
    assert "keep ratio missed" in result.summary and "timings unreliable" in result.summary
    assert result.failures and result.warnings


def test_verdict_warn_and_ok():
    warn = verdict(evaluate(changed(healthy_manifest(), {"latency_ms": {"dense": {"cv": 0.3}}})))
    assert warn.status == "warn" and warn.summary.startswith("WARN: timings unreliable")
    ok = verdict(evaluate(changed(healthy_manifest(), {"memory_mb": DROP})))
    assert ok.status == "ok" and "not measured: memory" in ok.summary


def test_bench_samples_are_found_by_model():
    series = latency_samples_ms(bench_doc(rounds=3, per_round=10))
    assert set(series) == {"dense (batch 1)", "pruned (batch 1)"}
    assert all(len(v) == 30 for v in series.values())
    assert latency_samples_ms(None) == {}


def _latency_manifest(ci, round_cv, iteration_cv=0.9):
    latency = {"p50": 0.30, "cv": iteration_cv, "round_median_cv": round_cv, "n": 5000}
    return {"schema_version": 1, "name": "latency", "speedup": 1.12, "speedup_ci95": ci,
            "latency_ms": {"dense": {**latency, "p50": 0.336}, "pruned": dict(latency)}}


def test_speedup_with_a_tight_interval_counts_despite_iteration_spikes():
    from edgeprune.report.rules import Evidence, Thresholds, speedup

    findings = speedup(Evidence(_latency_manifest([1.11, 1.13], 0.01), Thresholds()))
    assert [f.severity for f in findings] == ["ok"]


def test_speedup_whose_interval_includes_one_is_noise():
    from edgeprune.report.rules import Evidence, Thresholds, speedup

    findings = speedup(Evidence(_latency_manifest([0.97, 1.20], 0.01), Thresholds()))
    assert findings[-1].title == "no measurable speedup"


def test_noise_is_judged_on_round_medians_and_spikes_are_information():
    from edgeprune.report.rules import Evidence, Thresholds, timing_noise

    quiet = timing_noise(Evidence(_latency_manifest([1.11, 1.13], 0.01), Thresholds()))
    assert [f.severity for f in quiet] == ["ok", "info"]
    busy = timing_noise(Evidence(_latency_manifest([1.11, 1.13], 0.25), Thresholds()))
    assert busy[0].severity == "warn" and busy[0].title == "timings unreliable"


def test_int8_drop_is_paired_on_the_same_images_when_recorded():
    findings = _by_rule(evaluate(changed(healthy_manifest(), {"engines": _int8_engine(accuracy=0.905,
                                                                                       reference_accuracy=0.93)})),
                        "engine_parity")
    assert findings[0].severity == "fail" and "same 256 images" in findings[0].message


def test_int8_drop_without_a_paired_reference_is_against_the_pruned_model():
    (finding,) = _by_rule(evaluate(changed(healthy_manifest(), {"engines": [
        {k: v for k, v in _int8_engine(accuracy=0.880)[0].items() if k != "reference_accuracy"}]})), "engine_parity")
    assert finding.severity == "fail" and "pruned model's test accuracy" in finding.message


def test_fp32_engine_beside_an_int8_one_is_still_held_to_exact_parity():
    engines = _engine_with_parity(top1_agreement=0.97) + _int8_engine()
    findings = _by_rule(evaluate(changed(healthy_manifest(), {"engines": engines})), "engine_parity")
    assert [f.severity for f in findings] == ["fail", "ok"]
    assert "onnxruntime-cpu" in findings[0].title and "INT8" in findings[1].title


@pytest.mark.parametrize("changes, key", [
    ({"accuracy_before": 91.2, "accuracy_after": 90.5}, "accuracy_before"),
    ({"engines": [{"name": "ort", "path": "model.onnx", "precision": "fp32", "accuracy": 90.5}]}, "engines[0].accuracy"),
    ({"keep_achieved": "half"}, "keep_achieved"),
])
def test_a_manifest_that_breaks_the_units_is_refused_not_guessed(changes, key):
    with pytest.raises(ManifestError, match=key.replace("[", r"\[").replace("]", r"\]")):
        evaluate(changed(healthy_manifest(), changes))


def test_a_manifest_without_a_schema_version_is_refused():
    with pytest.raises(ManifestError, match="schema_version"):
        evaluate({"name": "no version"})


def _v2_with_int8(int8_cv: float) -> dict:
    from edgeprune.report.manifest import Manifest

    manifest = Manifest.from_dict(healthy_manifest()).to_dict()
    manifest["latency"].append({"model": "pruned-int8", "batch": 1, "p50_ms": 0.9, "cv": int8_cv, "n": 700})
    manifest["speedups"].append({"candidate": "pruned-int8", "batch": 1, "speedup": 2.2, "ci95": [2.1, 2.3]})
    return manifest


def test_every_benchmarked_engine_is_judged_for_noise():
    assert not _problems(_by_rule(evaluate(_v2_with_int8(0.02)), "timing_noise"))
    noisy = _problems(_by_rule(evaluate(_v2_with_int8(0.4)), "timing_noise"))
    assert noisy and "pruned-int8 40.0%" in noisy[0].message


def test_version_1_manifest_reads_the_same_as_its_upgrade():
    from edgeprune.report.manifest import Manifest

    old = Manifest.from_dict(healthy_manifest())
    again = Manifest.from_dict(old.to_dict())
    assert again == old
    assert old.speedup_of("pruned").ci95 == (1.61, 1.73)
    assert old.latency_of("pruned").memory_mb == 33.9


def test_frozen_share_warns_when_most_parameters_could_not_be_pruned_and_names_the_largest_part():
    largest = {"where": "head", "op": "module", "reason": "cannot be traced", "params": 900}
    mostly = changed(healthy_manifest(), {"plan": {"frozen_fraction": 0.9, "frozen_params": [largest]}})
    findings = _by_rule(evaluate(mostly), "frozen_share")
    assert [f.severity for f in findings] == ["warn"]
    assert "90.0%" in findings[0].title and "head (module): cannot be traced" in findings[0].message
    assert findings[0].figures["frozen_fraction"] == 0.9
    little = changed(healthy_manifest(), {"plan": {"frozen_fraction": 0.1, "frozen_params": [largest]}})
    assert _by_rule(evaluate(little), "frozen_share") == []
