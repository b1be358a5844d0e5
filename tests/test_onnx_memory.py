"""Weight and peak activation bytes from the ONNX graph, checked by hand on small graphs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.errors import InputError
from edgeprune.measure.onnx_memory import onnx_memory


def test_tiny_cnn_by_hand(tmp_path):
    from test_cli_bench_gate import tiny_cnn

    path = tiny_cnn(tmp_path / "tiny.onnx")
    memory = onnx_memory(path, batch=1)
    # weights: conv 4x3x3x3 + bias 4 + fc 3x4 + bias 3 = 127 floats
    assert memory.weight_bytes == 127 * 4
    # x 3x8x8 (768 B) -> Conv c 4x8x8 (1024) -> Relu r (1024) -> GAP 16 -> Flatten 16 -> Gemm 12.
    # Peak while Relu runs: c (its input) + r (its output) = 2048 (x was freed after Conv).
    assert memory.activation_bytes == 2048
    assert memory.exact and memory.peak_node == "Relu#1"
    # the batch axis scales activations, not weights
    four = onnx_memory(path, batch=4)
    assert four.activation_bytes == 4 * 2048 and four.weight_bytes == memory.weight_bytes


def test_a_residual_keeps_its_input_alive():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])  # 1024 B each
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "res", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    # x freed after `first`; while `add` runs, a, b and y are live: 3 x 1024
    assert memory.activation_bytes == 3 * 1024
    assert memory.peak_node == "add"
    assert memory.weight_bytes == 0


def test_half_precision_counts_two_bytes_and_constants_are_weights():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 10])
    const = helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(
        np.ones((10,), np.float16)))
    nodes = [const, helper.make_node("Mul", ["x", "k"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "h", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    assert memory.weight_bytes == 20
    assert memory.activation_bytes == 2 * 2 * 10 * 2  # x and y, 40 B each


def test_unknown_shapes_are_named_not_counted_as_zero():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "u", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    assert not memory.exact and "x" in memory.unknown_tensors


def test_not_a_model_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        onnx_memory(bad)


# --- the figures in bench results and reports -------------------------------------------------


def test_fresh_process_peak_rss_is_measured_per_batch(tmp_path):
    from test_cli_bench_gate import tiny_cnn

    from edgeprune.measure.memory import fresh_process_peak_rss

    path = tiny_cnn(tmp_path / "tiny.onnx")
    rss = fresh_process_peak_rss(str(path), (3, 8, 8), (4, 1), threads=1)
    assert set(rss) == {1, 4}
    assert rss[1].runtime_rss_mb > 10  # a Python with onnxruntime imported is never this small
    assert rss[4].peak_rss_mb >= rss[1].peak_rss_mb >= rss[1].runtime_rss_mb


def test_fresh_process_failure_is_one_input_error(tmp_path):
    from edgeprune.measure.memory import fresh_process_peak_rss

    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    with pytest.raises(InputError, match="fresh-process memory run failed"):
        fresh_process_peak_rss(str(bad), (3, 8, 8), (1,), threads=1)


def test_bench_reports_weight_activation_and_fresh_rss_for_every_model(tmp_path):
    import json

    from click.testing import CliRunner
    from test_cli_bench_gate import tiny_cnn

    from edgeprune.cli import main

    path = tiny_cnn(tmp_path / "tiny.onnx")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["bench", str(path), "--batch", "1,2", "--min-seconds",
                                       "0.02", "--min-iterations", "10", "--rounds", "3",
                                       "--warmup", "0.01", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    entries = {e["batch"]: e for e in json.loads(out.read_text())["entries"]}
    assert entries[1]["weight_bytes"] == entries[2]["weight_bytes"] == 508
    assert entries[1]["activation_bytes"] == 2048 and entries[2]["activation_bytes"] == 4096
    assert all(e["fresh_peak_rss_mb"] > 0 and e["activation_exact"] for e in entries.values())
    from edgeprune.cli.bench import _bytes_mb
    from edgeprune.measure.memory import mb_text

    assert (_bytes_mb(508), _bytes_mb(2048), _bytes_mb(3 << 20, "lower bound")) == (
        "508 B", "2.00 KiB", ">= 3.00 MiB")
    assert mb_text(0.0, 8.0) == "< 8" and mb_text(None) == "–" and mb_text(12.34, 8.0) == "12.3"


def test_report_shows_sub_resolution_memory_as_such_and_exact_bytes():
    from edgeprune.report.manifest import LatencyRecord, Manifest
    from edgeprune.report.render import summary_rows

    records = (LatencyRecord("dense", 1, 1.0, memory_mb=0.0, memory_resolution_mb=8.0,
                             weight_bytes=1_200_000, activation_bytes=640, activation_bound="exact"),
               LatencyRecord("pruned", 1, 0.8, memory_mb=12.5, memory_resolution_mb=8.0,
                             weight_bytes=600_000, activation_bytes=320, activation_bound="upper bound"))
    rows = {r.label: r for r in summary_rows(Manifest(name="m", latency=records))}
    peak = rows["Memory attributed in-process (RSS at load + growth)"]
    assert (peak.dense, peak.pruned, peak.change) == ("< 8 MB", "12.5 MB", "n/a")
    weights = rows["Weights (ONNX initializers)"]
    assert (weights.dense, weights.pruned, weights.change) == ("1.200 MB", "0.600 MB", "0.50×")
    activations = rows["Peak activations (computed, headline batch)"]
    assert (activations.dense, activations.pruned) == ("640 B", "<= 320 B")


def test_the_in_process_row_gives_way_to_the_fresh_process_figure():
    """Where a fresh process measured both models, the in-process attribution (which floors at
    8 MB and misses reused heap) is not shown beside it."""
    from edgeprune.report.manifest import LatencyRecord, Manifest
    from edgeprune.report.render import summary_rows

    records = (LatencyRecord("dense", 1, 1.0, memory_mb=0.0, memory_resolution_mb=8.0, weight_bytes=1_200_000,
                             activation_bytes=640, activation_bound="exact", fresh_peak_rss_mb=96.5),
               LatencyRecord("pruned", 1, 0.8, memory_mb=3.0, memory_resolution_mb=8.0, weight_bytes=600_000,
                             activation_bytes=320, activation_bound="exact", fresh_peak_rss_mb=90.1))
    rows = {r.label: r for r in summary_rows(Manifest(name="m", latency=records))}
    assert not any("in-process" in label for label in rows)
    assert rows["Peak RSS, fresh process (runtime included)"].dense == "96.5 MB"
    assert "< 8" not in " ".join(f"{r.dense} {r.pruned}" for r in rows.values())


def test_older_manifests_without_the_new_fields_still_render():
    from edgeprune.report.manifest import LatencyRecord, Manifest
    from edgeprune.report.render import summary_rows

    records = (LatencyRecord("dense", 1, 1.0, memory_mb=41.2),
               LatencyRecord("pruned", 1, 0.8, memory_mb=33.9))
    rows = {r.label: r for r in summary_rows(Manifest(name="m", latency=records))}
    assert rows["Memory attributed in-process (RSS at load + growth)"].pruned == "33.9 MB"
    assert "Weights (ONNX initializers)" not in rows


def test_fresh_process_figure_does_not_inherit_the_parents_high_water_mark(tmp_path):
    """Regression test: ru_maxrss survives fork and exec on Linux, so a child read that way
    reported its 1.6 GB pytest parent's RSS as a tiny model's peak."""
    from test_cli_bench_gate import tiny_cnn

    from edgeprune.measure.memory import current_rss_mb, fresh_process_peak_rss

    ballast = np.ones(50_000_000)  # 400 MB, touched, in this (the parent) process
    path = tiny_cnn(tmp_path / "tiny.onnx")
    rss = fresh_process_peak_rss(str(path), (3, 8, 8), (1,), threads=1)
    assert current_rss_mb() > rss[1].peak_rss_mb + 300
    del ballast
