"""Latency tables: cached by layer signature and target fingerprint, never trusted across machines."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgeprune.latency.layers import LayerSite, LayerSpec
from edgeprune.latency.profile import _layer_table, build_model_table
from edgeprune.latency.table import open_cache
from tests.latency_fakes import FakeProfiler, staircase_ms

CONV = LayerSpec("conv2d", 64, 128, (3, 3), (1, 1), (1, 1), (1, 1), 1, (14, 14))


def _site(spec=CONV) -> LayerSite:
    return LayerSite("conv", spec, np.arange(spec.cin), np.arange(spec.cin, spec.cin + spec.cout))


def _build(tmp_path, profiler):
    return build_model_table([_site()], tmp_path / "dense.onnx", (3, 14, 14), profiler, 8, cache_dir=tmp_path)


def test_second_build_reuses_every_cached_point(tmp_path):
    first = FakeProfiler()
    table = _build(tmp_path, first)
    assert first.timed > 0 and table.measured_points == len(first.keys)
    again = FakeProfiler()
    reused = _build(tmp_path, again)
    assert reused.measured_points == 0
    assert again.timed == 1, "only the interleaved full-width pass that puts the layers on one scale"
    assert reused.cached_points == len(first.keys)
    assert reused.layers[0].full_ms == pytest.approx(table.layers[0].full_ms)


def test_table_from_another_machine_is_not_reused(tmp_path):
    _build(tmp_path, FakeProfiler("machine A"))
    cache_a = next(tmp_path.glob("latency-*.json"))
    other = FakeProfiler("machine B")
    # Even a file copied under the other machine's name is refused: its recorded fingerprint differs.
    target_name = tmp_path / f"latency-{other.fingerprint().digest}.json"
    target_name.write_text(cache_a.read_text())
    table = _build(tmp_path, other)
    assert other.timed > 0
    assert "fingerprint differs" in table.cache_note
    saved = json.loads(target_name.read_text())
    assert saved["fingerprint"]["machine"] == "machine B"


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"schema_version": 99})])
def test_corrupt_or_foreign_cache_file_is_rebuilt(tmp_path, content):
    profiler = FakeProfiler()
    path = tmp_path / f"latency-{profiler.fingerprint().digest}.json"
    path.write_text(content)
    table = _build(tmp_path, profiler)
    assert profiler.timed > 0 and "rebuilt" in table.cache_note
    assert json.loads(path.read_text())["points"], "the rebuilt cache holds the new measurements"


def test_cache_points_are_keyed_by_signature():
    cache = open_cache(FakeProfiler().fingerprint(), None)
    cache.put(CONV, 1.5, 7)
    assert cache.get(CONV) == 1.5
    assert cache.get(CONV.at(64, 120)) is None  # another width is another point
    assert cache.get(LayerSpec(**{**CONV.__dict__, "batch": 8})) is None  # and another batch


def test_table_finds_the_steps_and_interpolates_where_smooth(tmp_path):
    profiler = FakeProfiler()
    table, measured = _layer_table(CONV, profiler, open_cache(profiler.fingerprint(), tmp_path), round_to=8)
    counts = range(8, 129, 8)
    errors = [abs(table.latency_ms(64, c) - staircase_ms(CONV.at(64, c))) / staircase_ms(CONV.at(64, c)) for c in counts]
    assert max(errors) < 0.01, "bisection measured the step of the output axis"
    assert {64, 72} <= set(table.cout_points)
    assert len(table.cout_points) < len(counts), "and did not measure every count"
    # Off the axes: the separable estimate corrected on the coarse grid.
    assert table.latency_ms(32, 64) == pytest.approx(staircase_ms(CONV.at(32, 64)), rel=0.05)
    assert measured == len(profiler.keys)


def test_grouped_conv_table_has_one_axis(tmp_path):
    depthwise = LayerSpec("conv2d", 96, 96, (3, 3), (1, 1), (1, 1), (1, 1), 96, (14, 14))
    profiler = FakeProfiler()
    table, _ = _layer_table(depthwise, profiler, open_cache(profiler.fingerprint(), tmp_path), round_to=8)
    assert table.cin_points == ()
    assert table.latency_ms(48, 48) == pytest.approx(staircase_ms(depthwise.at(48, 48)), rel=0.05)


def test_batches_of_a_layer_are_anchored_to_its_full_width(tmp_path):
    """A later batch measured while the machine is twice as slow is scaled back by the full layer."""
    load = {"factor": 1.0}

    def drifting(spec):
        value = staircase_ms(spec) * load["factor"]
        load["factor"] = 2.0  # everything after the first batch runs on a loaded machine
        return value

    profiler = FakeProfiler(latency=drifting)
    table, _ = _layer_table(CONV, profiler, open_cache(profiler.fingerprint(), tmp_path), round_to=8)
    assert table.latency_ms(64, 32) == pytest.approx(staircase_ms(CONV.at(64, 32)), rel=0.01)


def test_kernel_times_leave_out_the_layout_reorders_and_group_by_run():
    from edgeprune.latency.profile import kernel_times_per_run

    def node(name, op, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "dur": 999}]
    for dur in (10, 12, 11):
        events += [node("ReorderInput", "ReorderInput", 40), node("y_nchwc", "Conv", dur), node("add", "Add", 1),
                   node("ReorderOutput", "ReorderOutput", 30), {"cat": "Node", "name": "y_nchwc_fence_before", "dur": 0}]
    assert kernel_times_per_run(events) == [11.0, 13.0, 12.0]


def test_a_layer_is_timed_without_what_a_lone_layer_pays_around_it():
    """A depthwise conv alone pays ONNX Runtime's NCHWc reorders and the call; the table holds its
    kernel, which is what it costs inside a model: well under the lone session's wall time."""
    import time

    from edgeprune.latency.profile import OnnxRuntimeProfiler
    from edgeprune.targets import load_target

    target = load_target("cpu-x86")
    profiler = OnnxRuntimeProfiler(target, rounds=5)
    spec = LayerSpec("conv2d", 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 64, (56, 56), 1)
    kernel_ms = profiler.time([profiler.layer_runner(spec)])[0]
    runner = profiler.layer_runner(spec)
    walls = []
    for _ in range(30):
        t0 = time.perf_counter()
        runner()
        walls.append((time.perf_counter() - t0) * 1e3)
    assert 0 < kernel_ms < 0.9 * float(np.median(walls[5:]))
