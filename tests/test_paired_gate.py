"""Paired gate: per-round ratios of two models interleaved in one process, under drift."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeprune.cli import main
from edgeprune.measure import stats
from edgeprune.measure.regression import RegressionConfig, compare_paired, compare_runs
from edgeprune.measure.results import SCHEMA_VERSION

FAST = RegressionConfig(bootstrap_resamples=500)
ENV = {"cpu_model": "Test CPU", "physical_cores": 2, "logical_cores": 2, "threads": 1,
       "gpu_name": None, "gpu_driver": None,
       "versions": {"onnxruntime": "1.32.0", "torch": "2.15.0", "tensorrt": None}}


def drift(rounds=30, seed=0):
    """A machine that slows down by up to 40% and back, with jumps: what a shared runner does."""
    rng = np.random.default_rng(seed)
    slow = 1 + 0.4 * np.sin(np.linspace(0, 3 * np.pi, rounds)) ** 2
    return slow * np.exp(np.cumsum(rng.normal(0, 0.03, rounds)))


def paired_doc(scale, level, seed=1, per_round=25, noise=0.03):
    """Both models measured in the same rounds, so both see `level[r]` in round r."""
    rng = np.random.default_rng(seed)
    base, cur = [], []
    for d in level:
        base.append(list(d * (1 + np.abs(rng.normal(0, noise, per_round)))))
        cur.append(list(scale * d * (1 + np.abs(rng.normal(0, noise, per_round)))))
    entries = [{"model": name, "batch": 1, "samples_ms": rounds,
                "p50_ms": float(np.median(np.concatenate(rounds)))}
               for name, rounds in (("baseline", base), ("current", cur))]
    return {"schema_version": SCHEMA_VERSION, "target": "cpu-x86", "environment": ENV,
            "entries": entries}


def latency(verdict):
    return next(c for c in verdict.checks if c.metric == "p50 ms")


def test_drift_that_hits_both_sides_does_not_fail():
    level = drift()
    assert level.max() / level.min() > 1.3  # far more drift than the threshold
    verdict = compare_paired(paired_doc(1.0, level), FAST)
    assert verdict.outcome == "pass" and verdict.exit_code == 0
    check = latency(verdict)
    assert check.interval[0] <= 1.0 <= check.interval[1]
    assert check.samples == 30


def test_a_ten_percent_slowdown_under_the_same_drift_fails():
    verdict = compare_paired(paired_doc(1.10, drift()), FAST)
    assert verdict.outcome == "regression" and verdict.exit_code == 1
    check = latency(verdict)
    assert check.ratio == pytest.approx(1.10, rel=0.02)
    assert check.interval[0] > 1.05


def test_the_same_drift_across_separate_runs_is_not_called_a_regression():
    """Stored mode under that drift: each run sees another level; it must not fail A/A."""
    level = drift(seed=3)
    docs = []
    for i, d in enumerate(level[:6]):
        doc = paired_doc(1.0, np.full(20, d), seed=i)
        doc["entries"] = [dict(doc["entries"][0], model="m")]
        docs.append(doc)
    verdict = compare_runs(docs[:3], docs[3:], FAST)
    assert verdict.outcome != "regression"


def test_a_slowdown_near_the_threshold_is_inconclusive_with_its_figure():
    verdict = compare_paired(paired_doc(1.05, drift(), noise=0.08), FAST)
    check = latency(verdict)
    assert check.status == "inconclusive" and verdict.exit_code == 0
    assert check.interval[0] < 1.05 < check.interval[1]
    assert "straddles" in check.note and "per-round ratios spread" in check.note
    strict = compare_paired(paired_doc(1.05, drift(), noise=0.08),
                            RegressionConfig(strict=True, bootstrap_resamples=500))
    assert strict.exit_code == 2


def test_too_few_paired_rounds_is_inconclusive():
    verdict = compare_paired(paired_doc(1.5, drift(rounds=4)), FAST)
    assert latency(verdict).status == "inconclusive"
    assert "paired rounds" in latency(verdict).note


def test_paired_log_ratios_cancel_a_shared_round_level():
    level = np.array([1.0, 2.0, 4.0])
    cur = [[1.1 * d] * 3 for d in level]
    base = [[d] * 3 for d in level]
    assert np.allclose(stats.paired_log_ratios(cur, base), np.log(1.1))
    with pytest.raises(ValueError):
        stats.paired_log_ratios(cur[:2], base)


def cnn(path, width):
    """3x32x32 -> Conv3x3(3->width) ReLU GAP Gemm(width->3); dynamic batch."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((width, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((3, width)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


FAST_CLI = ["--rounds", "12", "--min-seconds", "0.15", "--min-iterations", "24"]


def test_cli_paired_gate_fails_a_much_slower_model_and_records_the_pairing(tmp_path):
    base, slow = cnn(tmp_path / "base.onnx", 4), cnn(tmp_path / "slow.onnx", 192)
    verdict_path, bench_path = tmp_path / "verdict.json", tmp_path / "pair.json"
    result = CliRunner().invoke(main, ["gate", "--baseline-model", str(base), "--current-model",
                                       str(slow), *FAST_CLI, "--json", str(verdict_path),
                                       "--bench-json", str(bench_path)])
    assert result.exit_code == 1, result.output
    assert "pinned by the gate" in result.output and "load average" in result.output
    verdict = json.loads(verdict_path.read_text())
    check = next(c for c in verdict["checks"] if c["metric"] == "p50 ms")
    assert verdict["outcome"] == "regression" and check["interval"][0] > 1.05
    bench = json.loads(bench_path.read_text())
    assert {e["model"] for e in bench["entries"]} == {"baseline", "current"}
    assert bench["environment"]["threads"] == 1
    assert bench["environment"]["cpu_affinity"] and bench["environment"]["load_average"]


def test_cli_paired_gate_does_not_fail_the_same_model(tmp_path):
    base = cnn(tmp_path / "base.onnx", 8)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(base.read_bytes())
    verdict_path = tmp_path / "verdict.json"
    result = CliRunner().invoke(main, ["gate", "--baseline-model", str(base), "--current-model",
                                       str(copy), *FAST_CLI, "--json", str(verdict_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(verdict_path.read_text())["outcome"] in ("pass", "inconclusive")


def test_cli_gate_refuses_mixed_or_half_given_modes(tmp_path):
    base = cnn(tmp_path / "base.onnx", 4)
    runner = CliRunner()
    half = runner.invoke(main, ["gate", "--baseline-model", str(base)])
    assert half.exit_code == 2 and "both --baseline-model and --current-model" in half.output
    mixed = runner.invoke(main, ["gate", "--baseline-model", str(base), "--current-model",
                                 str(base), "--baseline", str(base)])
    assert mixed.exit_code == 2 and "not both" in mixed.output
    assert runner.invoke(main, ["gate"]).exit_code == 2


def test_cli_paired_gate_refuses_models_with_other_inputs(tmp_path):
    base = cnn(tmp_path / "base.onnx", 4)
    from test_cli_bench_gate import tiny_cnn  # 3x8x8 input

    other = tiny_cnn(tmp_path / "other.onnx")
    result = CliRunner().invoke(main, ["gate", "--baseline-model", str(base), "--current-model",
                                       str(other), *FAST_CLI])
    assert result.exit_code == 1 and "different inputs" in result.output


def test_load_and_affinity_are_recorded_and_an_overloaded_machine_is_warned_about():
    from edgeprune.measure.environment import environment, load_warning, machine_load

    load = machine_load()
    assert len(load["load_average"]) == 3 and load["cpu_affinity"]
    env = environment(threads=1)
    assert env["load_average"] is not None and env["cpu_affinity"] == load["cpu_affinity"]
    busy = {"load_average": [5.0, 4.0, 3.0], "cpu_affinity": [0, 1]}
    assert "exceeds the 2 cores" in load_warning(busy)
    assert load_warning({"load_average": [1.5, 1.0, 1.0], "cpu_affinity": [0, 1]}) is None


def test_paired_mode_resolves_export_folders_to_their_model(tmp_path):
    import contextlib

    from edgeprune.errors import InputError
    from edgeprune.workflows.bench import _deployable

    folder = tmp_path / "export"
    folder.mkdir()
    cnn(folder / "model.onnx", 4)
    with contextlib.ExitStack() as stack:
        assert _deployable(folder, stack, "baseline") == (folder / "model.onnx", (3, 32, 32))
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(InputError, match="no model.onnx"):
            _deployable(empty, stack, "current")
