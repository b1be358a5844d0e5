"""ONNX Runtime Mobile back end: .ort + operator config from ORT's own tools, parity, reduced builds."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.engines import ModelSource, backends_for, build_engines, compare_with_onnxruntime, load_runner
from edgeprune.engines import ort_mobile
from edgeprune.errors import BackendUnavailableError, InputError, TargetError, UnsupportedModelError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import Target, load_target
from test_engines_int8 import batches, cifar_convnet


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("ort-mobile") / "model.onnx"
    export_onnx(cifar_convnet(), (3, 32, 32), path)
    return path


@pytest.fixture(scope="module")
def artifact(onnx_path):
    (built,) = build_engines(onnx_path, onnx_path.parent, "mobile-ort")
    return built


def reduced_target(config_path) -> Target:
    return Target.from_dict({**load_target("mobile-ort").to_dict(), "name": "app-build",
                             "operator_config": str(config_path)})


def test_mobile_ort_selects_the_ort_mobile_back_end():
    assert backends_for(load_target("mobile-ort")) == ["ort-mobile"]


def test_build_writes_the_ort_file_and_the_operator_config_of_a_reduced_build(artifact):
    assert artifact.path.name == "model.ort" and artifact.path.is_file()
    config = artifact.path.with_name("model.required_operators.config")
    assert config.is_file() and artifact.build_info["operator_config"] == config.name
    needed = ort_mobile.read_operator_config(config)
    listed = {op for opsets in needed.values() for ops in opsets.values() for op in ops}
    assert "Gemm" in listed and ({"Conv", "FusedConv"} & listed)
    assert artifact.build_info["target_platform"] == "arm"
    assert not [p for p in artifact.path.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_ort_file_matches_the_onnx_model(onnx_path, artifact):
    with load_runner(artifact.path, "mobile-ort") as runner:
        assert (runner.name, runner.precision, runner.device) == ("ort-mobile", "fp32", "cpu")
        parity = compare_with_onnxruntime(runner, onnx_path, np.concatenate(batches(2, size=8)))
    assert parity.passed and parity.top1_agreement == 1.0, parity


def test_missing_operators_lists_what_the_build_lacks():
    needed = {"ai.onnx": {11: {"Conv"}, 13: {"Gemm"}}, "com.microsoft": {1: {"FusedConv"}}}
    available = {"ai.onnx": {11: {"Conv"}, 12: {"Gemm"}}}
    assert ort_mobile.missing_operators(needed, available) == ["ai.onnx;13;Gemm", "com.microsoft;1;FusedConv"]
    assert ort_mobile.missing_operators(needed, needed) == []


def test_an_operator_the_reduced_build_lacks_is_refused_in_one_line(onnx_path, artifact, tmp_path):
    full = artifact.path.with_name("model.required_operators.config").read_text()
    lines = [line for line in full.splitlines() if "Gemm" not in line]
    app_config = tmp_path / "app.required_operators.config"
    app_config.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModelError) as caught:
        build_engines(onnx_path, out, reduced_target(app_config))
    message = str(caught.value)
    assert "\n" not in message and "Gemm" in message and str(app_config) in message
    assert not (out / "model.ort").exists() and not (out / "model.required_operators.config").exists()


def test_a_reduced_build_with_every_operator_accepts_the_model(onnx_path, artifact, tmp_path):
    config = artifact.path.with_name("model.required_operators.config")
    (built,) = build_engines(onnx_path, tmp_path, reduced_target(config))
    assert built.build_info["reduced_build_checked_against"] == str(config)


def test_a_missing_or_bad_operator_config_is_an_input_error(onnx_path, tmp_path):
    with pytest.raises(InputError, match="no operator config"):
        build_engines(onnx_path, tmp_path, reduced_target(tmp_path / "absent.config"))


def test_operator_config_belongs_to_ort_mobile_targets_only(tmp_path):
    bad = tmp_path / "board.yaml"
    bad.write_text("name: board\nruntime: openvino\ndevice: cpu\noperator_config: x.config\n")
    with pytest.raises(TargetError, match="operator_config"):
        load_target(bad)


def test_without_onnxruntime_tools_the_back_end_says_what_to_install(monkeypatch, onnx_path, tmp_path):
    def missing():
        raise BackendUnavailableError("onnxruntime's mobile tools (onnxruntime.tools) are missing: pip install onnxruntime")

    monkeypatch.setattr(ort_mobile, "_tools", missing)
    assert "pip install onnxruntime" in ort_mobile.OrtMobileBackend.unavailable_reason()
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime"):
        ort_mobile.OrtMobileBackend().build(ModelSource("model", onnx_path), tmp_path, load_target("mobile-ort"))


def test_bench_loaders_convert_what_the_folder_lacks(onnx_path, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "dense.onnx").write_bytes(onnx_path.read_bytes())
    loaders = ort_mobile.OrtMobileBackend().bench_loaders(
        ModelSource("dense", folder / "dense.onnx"), load_target("mobile-ort"), tmp_path / "build")
    with loaders["dense"]() as runner:
        assert runner.path == tmp_path / "build" / "dense.ort"


def test_edgeprune_targets_lists_the_on_device_targets_with_whether_each_runs_here():
    import json

    from click.testing import CliRunner

    from edgeprune.cli import main
    from edgeprune.engines import unavailable_reason

    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    expected = {"mobile-executorch": "executorch", "mobile-executorch-int8": "executorch",
                "mobile-ort": "ort-mobile", "cpu-x86-openvino": "openvino"}
    for name, engine in expected.items():
        assert rows[name]["engines"] == [engine]
        assert rows[name]["available"] == (unavailable_reason(load_target(name)) is None)
