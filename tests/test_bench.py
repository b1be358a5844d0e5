"""bench: stop rules, interleaving, percentiles and the JSON format of a result."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeprune.measure import bench as bench_module
from edgeprune.workflows.bench import benchmark_path
from edgeprune.measure import stats
from edgeprune.measure.bench import SCHEMA_VERSION, BenchConfig, BenchResult, benchmark
from edgeprune.errors import InputError


class FakeClock:
    """perf_counter_ns stand-in: time moves only when a fake runner runs."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class FakeRunner:
    def __init__(self, name: str, clock: FakeClock, cost_ms: float, log: list) -> None:
        self.name, self.device, self.precision = name, "cpu", "fp32"
        self.clock, self.cost_ns, self.log = clock, int(cost_ms * 1e6), log
        self.calls = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.log.append(self.name)
        # vary the cost a little so percentiles and CVs are not degenerate
        self.clock.now_ns += self.cost_ns + (self.calls % 7) * 1000
        return batch

    def close(self) -> None:
        pass


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(bench_module, "perf_counter_ns", fake)
    return fake


def _inputs(*batches):
    return {b: np.zeros((b, 3, 4, 4), np.float32) for b in batches}


def _config(**overrides):
    base = dict(warmup_s=0.01, min_iterations=20, min_seconds=0.05, rounds=4,
                memory_iterations=1, bootstrap_resamples=200)
    base.update(overrides)
    return BenchConfig(**base)


def test_config_rejects_bad_values_and_round_trips():
    with pytest.raises(ValueError):
        BenchConfig(warmup_s=-1)
    with pytest.raises(ValueError):
        BenchConfig(batch_sizes=(1, 1))
    with pytest.raises(ValueError):
        BenchConfig(order="sideways")
    config = BenchConfig(batch_sizes=[1, 8], threads=2)
    assert config.batch_sizes == (1, 8)
    assert BenchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert BenchConfig().warmup_s == 0.2


@pytest.mark.parametrize("min_seconds,min_iterations", [(0.5, 10), (0.01, 300)])
def test_both_min_seconds_and_min_iterations_are_met(clock, min_seconds, min_iterations):
    log: list = []
    models = {"a": FakeRunner("a", clock, 1.0, log), "b": FakeRunner("b", clock, 2.0, log)}
    result = benchmark(models, _inputs(1), _config(min_seconds=min_seconds,
                                                   min_iterations=min_iterations))
    for entry in result.entries:
        assert entry.n >= min_iterations
        assert entry.timed_s >= min_seconds
        assert sum(len(r) for r in entry.samples_ms) == entry.n
        assert entry.rounds >= 4


def test_warmup_is_time_based_and_discarded(clock):
    log: list = []
    models = {"fast": FakeRunner("fast", clock, 1.0, log), "slow": FakeRunner("slow", clock, 5.0, log)}
    result = benchmark(models, _inputs(1), _config(warmup_s=0.05, memory_iterations=0))
    fast, slow = result.entry("fast", 1), result.entry("slow", 1)
    assert fast.warmup_iterations == 50   # 0.05 s / 1 ms
    assert slow.warmup_iterations == 10   # 0.05 s / 5 ms
    assert models["fast"].calls == fast.warmup_iterations + fast.n


def test_models_are_interleaved_in_alternating_order(clock):
    log: list = []
    models = {"a": FakeRunner("a", clock, 1.0, log), "b": FakeRunner("b", clock, 1.0, log)}
    result = benchmark(models, _inputs(1), _config(memory_iterations=0))
    a, b = result.entry("a", 1), result.entry("b", 1)
    timed = log[a.warmup_iterations + b.warmup_iterations:]
    bursts, position = [], 0
    for round_index in range(a.rounds):
        for name in ("a", "b") if round_index % 2 == 0 else ("b", "a"):
            size = (a if name == "a" else b).iterations_per_round
            assert timed[position:position + size] == [name] * size
            position += size
            bursts.append(name)
    assert position == len(timed)
    assert bursts[:4] == ["a", "b", "b", "a"]


def test_random_order_still_runs_every_model_once_per_round(clock):
    log: list = []
    models = {n: FakeRunner(n, clock, 1.0, log) for n in "abc"}
    result = benchmark(models, _inputs(1), _config(order="random", memory_iterations=0, rounds=8))
    rounds = {e.model: e.rounds for e in result.entries}
    assert len(set(rounds.values())) == 1


def test_too_few_samples_give_null_percentiles_with_a_reason(clock):
    log: list = []
    result = benchmark({"a": FakeRunner("a", clock, 1.0, log)}, _inputs(1),
                       _config(min_iterations=100, min_seconds=0.0, rounds=1, memory_iterations=0))
    entry = result.entry("a", 1)
    assert 64 <= entry.n < 662
    assert entry.p90_ms is not None and entry.p50_ms is not None
    assert entry.p99_ms is None
    assert "662" in entry.percentile_notes["p99"]


def test_min_samples_rule_matches_measuring_md():
    assert stats.min_samples_for_percentile(90) == 64
    assert stats.min_samples_for_percentile(99) == 662


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=1e3, allow_nan=False), min_size=1,
                max_size=800))
def test_percentiles_match_numpy(samples):
    values, _ = stats.percentiles(samples)
    for name, q in stats.PERCENTILES:
        if len(samples) >= stats.MIN_SAMPLES[name]:
            assert values[name] == pytest.approx(np.percentile(samples, q), rel=1e-12)
        else:
            assert values[name] is None


def test_entry_statistics_match_numpy_on_raw_samples(clock):
    log: list = []
    result = benchmark({"a": FakeRunner("a", clock, 1.0, log)}, _inputs(2),
                       _config(batch_sizes=(2,), min_iterations=700, memory_iterations=0))
    e = result.entry("a", 2)
    flat = np.concatenate([np.asarray(r) for r in e.samples_ms])
    for name, q in stats.PERCENTILES:
        assert getattr(e, f"{name}_ms") == pytest.approx(np.percentile(flat, q))
    assert e.mean_ms == pytest.approx(flat.mean())
    assert e.cv == pytest.approx(flat.std(ddof=1) / flat.mean())
    assert e.throughput_items_per_s == pytest.approx(2 * 1000 / flat.mean())


def test_comparison_reports_speedup_with_interval(clock):
    log: list = []
    models = {"dense": FakeRunner("dense", clock, 2.0, log),
              "pruned": FakeRunner("pruned", clock, 1.0, log)}
    result = benchmark(models, _inputs(1), _config(memory_iterations=0))
    (comparison,) = result.comparisons
    assert (comparison.baseline, comparison.candidate) == ("dense", "pruned")
    assert comparison.speedup == pytest.approx(2.0, rel=0.02)
    low, high = comparison.speedup_ci95
    assert low <= comparison.speedup <= high


def test_result_round_trips_through_json_with_schema_version(clock, tmp_path):
    log: list = []
    models = {"a": FakeRunner("a", clock, 1.0, log), "b": FakeRunner("b", clock, 1.5, log)}
    result = benchmark(models, _inputs(1, 4), _config(batch_sizes=(1, 4)), target_name="cpu-x86")
    path = tmp_path / "bench.json"
    result.write(path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["fingerprint"]["target"] == "cpu-x86"
    assert isinstance(data["entries"][0]["samples_ms"][0], list)
    again = BenchResult.from_dict(data)
    assert again == result
    with pytest.raises(InputError, match="schema_version"):
        BenchResult.from_dict(dict(data, schema_version=SCHEMA_VERSION + 1))


def test_memory_is_measured_per_model(clock):
    log: list = []

    class Hungry(FakeRunner):
        def run(self, batch):
            # 64 MB held after the run: above glibc's largest mmap threshold (32 MB), so it is always
            # fresh pages, not heap that earlier tests freed (which would not grow the RSS)
            self.keep = np.ones(64 * 1024 * 1024 // 8)
            return super().run(batch)

    models = {"small": FakeRunner("small", clock, 1.0, log), "hungry": Hungry("hungry", clock, 1.0, log)}
    result = benchmark(models, _inputs(1), _config(), load_rss_mb={"small": 1.0, "hungry": 2.0})
    small, hungry = result.entry("small", 1), result.entry("hungry", 1)
    assert hungry.run_rss_growth_mb >= 48.0
    assert hungry.run_rss_growth_mb > small.run_rss_growth_mb
    assert hungry.model_memory_mb == pytest.approx(2.0 + hungry.run_rss_growth_mb)
    assert result.memory_method


def test_missing_input_for_a_batch_is_an_input_error(clock):
    with pytest.raises(InputError, match="batch"):
        benchmark({"a": FakeRunner("a", clock, 1.0, [])}, _inputs(1), _config(batch_sizes=(1, 8)))


# --- benchmark_path: files, export folders and bundles --------------------------------------


def _tiny_onnx(path, batch="N", channels=3, size=8):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, channels, size, size])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


class RecordingRunner:
    """Checks the inputs bench builds and counts calls; costs nothing."""

    device, precision = "cpu", "fp32"
    shapes: list = []

    def __init__(self, path, target):
        self.name = f"recording:{path.name}"
        self.path, self.target = path, target

    @classmethod
    def loaders(cls, target, sources, build_dir):
        return {s.name: (lambda s=s: cls(s.onnx_path, target)) for s in sources}

    def run(self, batch):
        RecordingRunner.shapes.append((self.path.name, batch.shape, float(batch.std())))
        return batch

    def close(self):
        pass


@pytest.fixture
def recording(monkeypatch):
    RecordingRunner.shapes = []
    monkeypatch.setattr(bench_module, "_engine_loaders", RecordingRunner.loaders)
    return RecordingRunner


def test_export_folder_benchmarks_dense_against_pruned_with_manifest_shape(tmp_path, recording):
    _tiny_onnx(tmp_path / "dense.onnx", channels=1, size=5)
    _tiny_onnx(tmp_path / "model.onnx", channels=1, size=5)
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"schema_version": 2, "name": "m", "input": {"shape": [1, 5, 5]}, "accuracy_before": 0.91,
         "accuracy_after": 0.905}))
    result = benchmark_path(tmp_path, "cpu-x86", _config(batch_sizes=(1, 3)))
    assert {(e.model, e.batch) for e in result.entries} == {
        ("dense", 1), ("pruned", 1), ("dense", 3), ("pruned", 3)}
    assert [(c.baseline, c.candidate) for c in result.comparisons] == [("dense", "pruned")] * 2
    assert {shape for _, shape, _ in recording.shapes} == {(1, 1, 5, 5), (3, 1, 5, 5)}
    assert all(std > 0.5 for _, _, std in recording.shapes)  # random normal, not zeros
    assert result.accuracy_pct == pytest.approx({"dense": 91.0, "pruned": 90.5})
    assert result.target == "cpu-x86" and result.source == str(tmp_path)
    assert all(e.load_rss_mb is not None for e in result.entries)


def test_onnx_file_uses_its_own_input_shape(tmp_path, recording):
    model = _tiny_onnx(tmp_path / "net.onnx", channels=2, size=4)
    result = benchmark_path(model, "cpu-x86", _config(memory_iterations=0))
    assert [e.model for e in result.entries] == ["net"]
    assert {shape for _, shape, _ in recording.shapes} == {(1, 2, 4, 4)}


def test_fixed_batch_model_refuses_other_batch_sizes(tmp_path, recording):
    model = _tiny_onnx(tmp_path / "fixed.onnx", batch=1)
    with pytest.raises(InputError, match="fixed batch"):
        benchmark_path(model, "cpu-x86", _config(batch_sizes=(1, 8)))


def test_bundle_is_extracted_to_a_temporary_folder(tmp_path, recording, monkeypatch):
    import sys
    import types

    export = tmp_path / "export"
    export.mkdir()
    _tiny_onnx(export / "model.onnx")
    bundle = tmp_path / "m.tar.gz"
    bundle.write_bytes(b"not really a tarball")
    seen = {}

    def extract(path, dest):
        import shutil

        seen["dest"] = dest
        return Path(shutil.copytree(export, dest / "m"))

    monkeypatch.setitem(sys.modules, "edgeprune.workflows.bundle", types.SimpleNamespace(extract=extract))
    result = benchmark_path(bundle, "cpu-x86", _config(memory_iterations=0))
    assert [e.model for e in result.entries] == ["pruned"]
    assert not seen["dest"].exists()  # cleaned up


@pytest.mark.parametrize("target", ["gpu-trt-fp16", "gpu-trt-int8", "jetson-orin-nano", "gpu-torch-fp16"])
def test_a_gpu_target_is_never_measured_on_the_cpu(tmp_path, target):
    """Where the target's GPU runtime is missing, bench refuses; it never returns CPU figures
    under the GPU target's name (it used to run ONNX Runtime on the CPU for all of these)."""
    from edgeprune.engines import unavailable_reason
    from edgeprune.errors import BackendUnavailableError
    from edgeprune.targets import load_target

    _tiny_onnx(tmp_path / "dense.onnx")
    _tiny_onnx(tmp_path / "model.onnx")
    if unavailable_reason(load_target(target)) is None:
        pytest.skip(f"{target} can run here; the refusal cannot be shown")
    with pytest.raises(BackendUnavailableError, match=f"cannot run target {target} here"):
        benchmark_path(tmp_path, target, _config(memory_iterations=0))
    with pytest.raises(BackendUnavailableError, match=target):
        benchmark_path(tmp_path / "model.onnx", target, _config(memory_iterations=0))


def test_open_runners_discards_a_first_load_and_closes_on_failure():
    opened = []

    class Counted:
        device = "cpu"

        def __init__(self, fail=False):
            if fail:
                raise InputError("cannot open")
            self.closed = False
            opened.append(self)

        def close(self):
            self.closed = True

    runners, load_mb = bench_module.open_runners({"a": Counted, "b": Counted})
    assert list(runners) == ["a", "b"] and set(load_mb) == {"a", "b"}
    assert len(opened) == 3 and opened[0].closed and not runners["a"].closed
    opened.clear()
    with pytest.raises(InputError):
        bench_module.open_runners({"a": Counted, "b": lambda: Counted(fail=True)}, discard_first=False)
    assert len(opened) == 1 and opened[0].closed


def test_path_that_is_not_a_model_is_an_input_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InputError):
        benchmark_path(tmp_path / "notes.txt", "cpu-x86", _config())
    with pytest.raises(InputError, match="no such"):
        benchmark_path(tmp_path / "missing.onnx", "cpu-x86", _config())


def test_importing_bench_and_gate_stays_lean():
    import subprocess
    import sys

    code = ("import sys, edgeprune.measure.bench, edgeprune.measure.regression; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
