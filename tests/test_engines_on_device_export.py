"""`edgeprune export` and `bench` for the on-device targets: ExecuTorch, ONNX Runtime Mobile, OpenVINO.

One tiny trained run exported to each target: the engine file is built, its parity and accuracy
are in the manifest and judged by the report's rule for its precision, dense and pruned are
benchmarked interleaved on that engine, `benchmark_path` accepts the folder, and a bundle of it
runs the engine once.
"""
from __future__ import annotations

import pytest

from edgeprune.engines import unavailable_reason
from edgeprune.report.rules import evaluate
from edgeprune.targets import load_target
from edgeprune.workflows.bench import benchmark_path
from edgeprune.workflows.bundle import ENGINE_CHECK, pack, verify
from edgeprune.workflows.export import export_pipeline
from pipeline_fixture import FAST_BENCH, fast_config, make_tiny_run

#: target -> (engine name, engine file, the files beside it)
ON_DEVICE = {
    "mobile-executorch": ("executorch", "model.pte", ("dense.pte",)),
    "mobile-executorch-int8": ("executorch-int8", "model.int8.pte", ("dense.int8.pte",)),
    "mobile-ort": ("ort-mobile", "model.ort", ("model.required_operators.config", "dense.ort")),
    "cpu-x86-openvino": ("openvino", "model.xml", ("model.bin", "dense.xml", "dense.bin")),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("on-device"))


@pytest.mark.slow  # trains a tiny run and exports it once per target
@pytest.mark.parametrize("target_name", sorted(ON_DEVICE))
def test_export_builds_checks_and_benchmarks_the_on_device_engine(run_dir, tmp_path, target_name):
    reason = unavailable_reason(load_target(target_name))
    if reason is not None:
        pytest.skip(reason)
    name, file, beside = ON_DEVICE[target_name]
    result = export_pipeline(fast_config(run_dir, tmp_path, target=target_name))
    out = result.out_dir
    (engine,) = result.manifest.engines
    assert (engine.name, engine.path, engine.target) == (name, file, target_name)
    assert (out / file).is_file() and all((out / f).is_file() for f in beside)
    assert 0.0 <= engine.accuracy <= 1.0 and engine.reference_accuracy is not None
    assert engine.parity is not None and engine.parity.n_samples > 0
    findings = [f for f in evaluate(result.manifest) if f.rule_id == "engine_parity"]
    if engine.precision == "int8":  # the INT8 rule, the same one ONNX Runtime INT8 is judged by
        assert any("INT8 engine" in f.title for f in findings)
    else:
        assert engine.parity.passed, engine.parity
        assert [f.severity for f in findings] == ["ok"]
    assert set(result.manifest.benchmarked_models) == {"dense", "pruned"}
    assert result.manifest.speedup_of("pruned") is not None
    assert file in result.manifest.files  # the checksum a bundle carries

    bench = benchmark_path(out, target_name, FAST_BENCH)
    assert {e.model for e in bench.entries} == {"dense", "pruned"}
    assert {e.runner for e in bench.entries} == {name}

    checked = verify(pack(out, tmp_path / "bundle.tar.gz").path)
    engines_run = [c for c in checked.checks if c.name == ENGINE_CHECK]
    assert checked.ok and engines_run and engines_run[0].passed and file in engines_run[0].detail
