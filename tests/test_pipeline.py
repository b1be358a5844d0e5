"""`export_pipeline`: the whole chain writes an honest, complete, atomic export folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeprune.report.manifest import read_manifest
from edgeprune.workflows import recipe
from edgeprune.errors import CheckFailedError, InputError, OutputExistsError, RunError
from edgeprune.fileio import sha256_file
from edgeprune.workflows.export import ExportConfig, export_pipeline
from pipeline_fixture import fast_config, make_tiny_run

MANIFEST_KEYS = {
    "keep_requested", "keep_achieved", "params_before", "params_after", "flops_before", "flops_after",
    "accuracy_before", "accuracy_after", "onnx_parity", "latency", "speedups", "target", "versions", "files",
    "schema_version", "chance_accuracy",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def cpu_export(run_dir, tmp_path_factory):
    return export_pipeline(fast_config(run_dir, tmp_path_factory.mktemp("dist")))


@pytest.mark.slow  # trains a tiny run and exports it
def test_export_writes_model_manifest_and_report(cpu_export):
    names = {p.name for p in cpu_export.out_dir.iterdir()}
    assert {"model.onnx", "dense.onnx", "manifest.json", "report.md", "report.html", "plan.json", "bench.json"} <= names
    manifest = json.loads((cpu_export.out_dir / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert {r["model"] for r in manifest["latency"]} == {"dense", "pruned"}
    assert cpu_export.manifest.latency_of("pruned").p50_ms > 0
    assert read_manifest(cpu_export.out_dir) == cpu_export.manifest


@pytest.mark.slow  # trains a tiny run and exports it
def test_export_meets_the_keep_budget_or_says_why(cpu_export):
    m = cpu_export.manifest
    assert m.keep_requested == 0.5
    assert abs(m.keep_achieved - 0.5) <= 0.005 and not m.keep_note
    assert m.keep_achieved == pytest.approx(m.params_after / m.params_before)


@pytest.mark.slow  # trains a tiny run and exports it
def test_export_onnx_agrees_with_pytorch(cpu_export):
    parity = cpu_export.manifest.onnx_parity
    assert parity.passed and parity.top1_agreement == 1.0 and parity.max_abs_err <= 1e-4


@pytest.mark.slow  # trains a tiny run and exports it
def test_manifest_checksums_match_the_files(cpu_export):
    files = cpu_export.manifest.files
    assert "model.onnx" in files and "report.md" in files
    for name, digest in files.items():
        assert sha256_file(cpu_export.out_dir / name) == digest


@pytest.mark.slow  # trains a tiny run and exports it
def test_report_calls_a_barely_trained_model_untrained(cpu_export):
    report = (cpu_export.out_dir / "report.md").read_text()
    assert "looks untrained" in report  # one epoch on 256 images is near chance


@pytest.mark.slow  # trains a tiny run and exports it
def test_export_refuses_to_overwrite_without_force(run_dir, cpu_export):
    config = fast_config(run_dir, cpu_export.out_dir.parent)
    with pytest.raises(OutputExistsError, match="--force"):
        export_pipeline(config)


@pytest.mark.slow  # trains a tiny run and exports it
def test_second_export_reuses_the_runs_learned_gates(run_dir, cpu_export, tmp_path):
    result = export_pipeline(fast_config(run_dir, tmp_path, keep=0.7))
    assert (run_dir / "gates.pt").exists()
    assert result.learned_gates is False
    assert abs(result.manifest.keep_achieved - 0.7) <= 0.005 and not result.manifest.keep_note


@pytest.mark.slow  # trains a tiny run and exports it
def test_failed_export_leaves_nothing_behind(run_dir, tmp_path, monkeypatch):
    def broken_check(*args, **kwargs):
        raise CheckFailedError("injected failure")

    monkeypatch.setattr("edgeprune.onnx_export.exporter.check_parity", broken_check)
    with pytest.raises(CheckFailedError):
        export_pipeline(fast_config(run_dir, tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # trains a tiny run and exports it
def test_force_replaces_an_existing_export(run_dir, tmp_path):
    first = export_pipeline(fast_config(run_dir, tmp_path, bench=fast_config(run_dir, tmp_path).bench))
    (first.out_dir / "stale.txt").write_text("old")
    second = export_pipeline(fast_config(run_dir, tmp_path, force=True))
    assert second.out_dir == first.out_dir and second.replaced and not first.replaced
    assert not (second.out_dir / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == [first.out_dir.name]


@pytest.mark.slow  # trains a tiny run and exports it
def test_int8_target_records_accuracy_and_benchmarks_against_fp32(run_dir, tmp_path):
    result = export_pipeline(fast_config(run_dir, tmp_path, target="cpu-x86-int8"))
    (engine,) = result.manifest.engines
    assert engine.precision == "int8"
    assert 0.0 <= engine.accuracy <= 1.0
    assert (result.out_dir / engine.path).exists()
    bench = json.loads((result.out_dir / "bench.json").read_text())
    assert {e["model"] for e in bench["entries"]} == {"dense", "pruned", "pruned-int8"}
    assert set(result.manifest.benchmarked_models) == {"dense", "pruned", "pruned-int8"}
    assert result.manifest.speedup_of("pruned-int8") is not None
    # Every benchmarked model carries its weight and activation bytes, the INT8 one from its Q/DQ file.
    memory = {e["model"]: e for e in bench["entries"]}
    assert memory["pruned-int8"]["model_file"] == Path(engine.path).name
    assert memory["pruned-int8"]["activation_bound"] == "upper bound"
    assert 0 < memory["pruned-int8"]["weight_bytes"] < memory["pruned"]["weight_bytes"] < memory["dense"]["weight_bytes"]
    assert all(e["activation_bytes"] > 0 for e in memory.values())


@pytest.mark.slow  # trains a tiny run and exports it
def test_unavailable_backend_is_skipped_and_said_not_faked(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here; this test covers its absence")
    except ImportError:
        pass
    result = export_pipeline(fast_config(run_dir, tmp_path, target="gpu-trt-fp16"))
    assert result.manifest.engines == ()
    assert result.manifest.speedups == () and result.manifest.latency == ()
    assert any("tensorrt" in line for line in result.skipped)


@pytest.mark.parametrize("keep", [0.0, -0.1, 1.5, float("nan")])
def test_keep_out_of_range_is_refused_before_any_work(keep, tmp_path):
    with pytest.raises(InputError, match="--keep"):
        ExportConfig(keep=keep, run_dir=tmp_path / "nowhere", out_root=tmp_path)


def test_missing_run_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match="edgeprune train"):
        export_pipeline(fast_config(tmp_path / "runs" / "missing", tmp_path / "dist"))
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []


@pytest.mark.slow  # trains a tiny run and exports it
def test_corrupt_gates_file_is_a_clear_error(run_dir, tmp_path):
    run_copy = tmp_path / "run"
    import shutil

    shutil.copytree(run_dir, run_copy)
    (run_copy / "gates.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="gates.pt"):
        export_pipeline(fast_config(run_copy, tmp_path / "dist"))


def test_demo_run_is_trained_on_first_use(tmp_path, monkeypatch):
    calls = []

    def fake_train_run(run_dir, model, data, config, progress=None, **sizes):
        calls.append((Path(run_dir), model, data, sizes))
        raise RunError("stop here")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("edgeprune.training.runs.train_run", fake_train_run)
    with pytest.raises(RunError, match="stop here"):
        export_pipeline(ExportConfig(out_root=tmp_path / "dist"))
    assert calls == [(recipe.DEMO_RUN, recipe.DEMO_MODEL, recipe.DEMO_DATA, recipe.DEMO_DATA_SIZES)]


def test_exports_for_other_targets_are_named_after_the_target(tmp_path):
    default = ExportConfig(run_dir=tmp_path / "runs" / "demo", out_root=tmp_path)
    int8 = ExportConfig(run_dir=tmp_path / "runs" / "demo", out_root=tmp_path, target="cpu-x86-int8")
    assert default.out_dir.name == "demo-keep0.50"
    assert int8.out_dir.name == "demo-keep0.50-cpu-x86-int8"
