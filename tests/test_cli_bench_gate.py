"""`edgeprune bench` and `edgeprune gate` end to end through click's CliRunner."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeprune.measure.results import SCHEMA_VERSION
from edgeprune.cli import main
from edgeprune.cli.gate import Percent

ENV = {"cpu_model": "Test CPU", "physical_cores": 2, "logical_cores": 2, "threads": 1,
       "gpu_name": None, "gpu_driver": None,
       "versions": {"onnxruntime": "1.32.0", "torch": "2.15.0", "tensorrt": None}}


def tiny_cnn(path):
    """Conv 3->4, ReLU, global average pool, Gemm 4->3; dynamic batch."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(np.zeros(4, np.float32), "b"),
               numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "fc_w"),
               numpy_helper.from_array(np.zeros(3, np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def rounds(scale, seed, n=20):
    rng = np.random.default_rng(seed)
    return [list(scale * (1 + np.abs(rng.normal(0, 0.02, 20)))) for _ in range(n)]


def write_runs(tmp_path, name, scale, n=3, env=ENV):
    """`n` bench files of separate runs (each its own seed), for the stored-baseline mode."""
    paths = [write_doc(tmp_path / f"{name}{i}.json", rounds(scale, (0 if name == "b" else 100) + i), env)
             for i in range(n)]
    return [arg for p in paths for arg in ("--baseline" if name == "b" else "--current", str(p))]


def write_doc(path, samples, env=ENV):
    entry = {"model": "pruned", "batch": 1, "samples_ms": samples,
             "p50_ms": float(np.median(np.concatenate(samples))), "model_memory_mb": 10.0}
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "target": "cpu-x86",
                                "environment": env, "entries": [entry]}))
    return path


def test_bench_on_a_tiny_onnx_prints_table_and_writes_json(tmp_path):
    model = tiny_cnn(tmp_path / "tiny.onnx")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(model), "--batch", "1,2", "--min-seconds",
                                       "0.05", "--min-iterations", "30", "--rounds", "5",
                                       "--warmup", "0.02", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "p50 = median" in result.output and "warm-up" in result.output
    assert "verdict (" in result.output  # findings of report.bench_rules
    assert "engines: tiny = onnxruntime on cpu (fp32)" in result.output
    data = json.loads(out.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert {(e["model"], e["batch"]) for e in data["entries"]} == {("tiny", 1), ("tiny", 2)}
    assert all(e["n"] >= 30 and e["rounds"] >= 5 for e in data["entries"])
    assert data["environment"]["threads"] == 1


def test_bench_and_gate_chain_on_the_same_file(tmp_path):
    model = tiny_cnn(tmp_path / "tiny.onnx")
    args = ["--batch", "1", "--min-seconds", "0.05", "--min-iterations", "30", "--rounds", "10",
            "--warmup", "0.02", "--threads", "1"]
    runner = CliRunner()
    for name in ("base", "cur"):
        result = runner.invoke(main, ["bench", str(model), *args, "--json", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["gate", "--baseline", str(tmp_path / "base.json"),
                                  "--current", str(tmp_path / "cur.json"), "--max-regression", "50%"])
    assert result.exit_code == 0, result.output
    assert "verdict" in result.output


def test_bench_on_a_gpu_target_without_its_runtime_exits_1_with_one_line(tmp_path):
    from edgeprune.engines import unavailable_reason
    from edgeprune.targets import load_target

    if unavailable_reason(load_target("gpu-trt-fp16")) is None:
        pytest.skip("gpu-trt-fp16 can run here; the refusal cannot be shown")
    model = tiny_cnn(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(main, ["bench", str(model), "--target", "gpu-trt-fp16", "--batch", "1"])
    assert result.exit_code == 1
    assert "cannot run target gpu-trt-fp16 here" in result.output
    assert "p50" not in result.output and "Traceback" not in result.output


def test_bench_rejects_a_bad_batch_list_with_usage_exit(tmp_path):
    model = tiny_cnn(tmp_path / "tiny.onnx")
    result = CliRunner().invoke(main, ["bench", str(model), "--batch", "1,x"])
    assert result.exit_code == 2


def test_bench_on_a_file_that_is_not_a_model_exits_1(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello")
    result = CliRunner().invoke(main, ["bench", str(bad), "--batch", "1"])
    assert result.exit_code == 1
    assert "error" in result.output


def test_gate_exit_0_on_pass(tmp_path):
    verdict_path = tmp_path / "verdict.json"
    result = CliRunner().invoke(main, ["gate", *write_runs(tmp_path, "b", 1.0),
                                       *write_runs(tmp_path, "c", 1.0), "--json", str(verdict_path)])
    assert result.exit_code == 0, result.output
    assert "pass" in result.output and "interval" in result.output
    assert "as the bench files recorded" in result.output
    assert json.loads(verdict_path.read_text())["outcome"] == "pass"


def test_gate_exit_1_on_regression(tmp_path):
    result = CliRunner().invoke(main, ["gate", *write_runs(tmp_path, "b", 1.0),
                                       *write_runs(tmp_path, "c", 1.25)])
    assert result.exit_code == 1, result.output
    assert "regression" in result.output


def test_gate_threshold_option_changes_the_decision(tmp_path):
    result = CliRunner().invoke(main, ["gate", *write_runs(tmp_path, "b", 1.0),
                                       *write_runs(tmp_path, "c", 1.25), "--max-regression", "0.4"])
    assert result.exit_code == 0, result.output


def test_gate_exit_2_on_incomparable_environment(tmp_path):
    base = write_doc(tmp_path / "b.json", rounds(1.0, 1))
    cur = write_doc(tmp_path / "c.json", rounds(1.0, 2), env=dict(ENV, threads=4))
    result = CliRunner().invoke(main, ["gate", "--baseline", str(base), "--current", str(cur)])
    assert result.exit_code == 2
    assert "threads" in result.output
    allowed = CliRunner().invoke(main, ["gate", "--baseline", str(base), "--current", str(cur),
                                        "--allow-env-change"])
    assert allowed.exit_code == 0


def test_gate_exit_2_on_schema_mismatch(tmp_path):
    base = write_doc(tmp_path / "b.json", rounds(1.0, 1))
    data = json.loads(base.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["gate", "--baseline", str(old), "--current", str(base)])
    assert result.exit_code == 2
    assert "schema_version" in result.output


def test_gate_exit_2_on_bad_input_and_usage(tmp_path):
    good = write_doc(tmp_path / "b.json", rounds(1.0, 1))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    runner = CliRunner()
    assert runner.invoke(main, ["gate", "--baseline", str(broken), "--current", str(good)]).exit_code == 2
    assert runner.invoke(main, ["gate", "--baseline", str(tmp_path / "missing.json"),
                                "--current", str(good)]).exit_code == 2
    assert runner.invoke(main, ["gate", "--current", str(good)]).exit_code == 2
    assert runner.invoke(main, ["gate", "--baseline", str(good), "--current", str(good),
                                "--max-regression", "5"]).exit_code == 2


def test_gate_strict_turns_one_run_per_side_into_exit_2(tmp_path):
    base = write_doc(tmp_path / "b.json", rounds(1.0, 1))
    cur = write_doc(tmp_path / "c.json", rounds(1.5, 2))
    runner = CliRunner()
    lenient = runner.invoke(main, ["gate", "--baseline", str(base), "--current", str(cur)])
    assert lenient.exit_code == 0 and "inconclusive" in lenient.output
    assert "spread between runs is unknown" in lenient.output.replace("\n", " ")
    strict = runner.invoke(main, ["gate", "--baseline", str(base), "--current", str(cur), "--strict"])
    assert strict.exit_code == 2


@pytest.mark.parametrize("text,value", [("5%", 0.05), ("0.05", 0.05), ("10 %", 0.10)])
def test_percent_param_type_parses(text, value):
    assert Percent().convert(text, None, None) == pytest.approx(value)


def test_percent_param_type_fails_as_usage_error():
    import click

    with pytest.raises(click.BadParameter):
        Percent().convert("5", None, None)
