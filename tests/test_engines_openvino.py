"""OpenVINO back end: IR from the ONNX file, compiled for the CPU in FP32, parity and threads."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from edgeprune.engines import ModelSource, backends_for, build_engines, compare_with_onnxruntime, load_runner
from edgeprune.engines import openvino as ov_backend
from edgeprune.errors import BackendUnavailableError, InputError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import load_target
from test_engines_int8 import batches, cifar_convnet

REASON = ov_backend.unavailable_reason()
needs_openvino = pytest.mark.skipif(REASON is not None, reason=str(REASON))


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("openvino") / "model.onnx"
    export_onnx(cifar_convnet(), (3, 32, 32), path)
    return path


@pytest.fixture(scope="module")
def artifact(onnx_path):
    if REASON is not None:
        pytest.skip(REASON)
    (built,) = build_engines(onnx_path, onnx_path.parent, "cpu-x86-openvino")
    return built


def test_openvino_target_selects_the_openvino_back_end():
    assert backends_for(load_target("cpu-x86-openvino")) == ["openvino"]


def test_compile_config_pins_f32_and_passes_the_threads():
    target = load_target("cpu-x86-openvino")
    assert ov_backend.compile_config(target) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    one = ov_backend.compile_config(dataclasses.replace(target, intra_op_threads=1))
    assert one["INFERENCE_NUM_THREADS"] == 1


@needs_openvino
def test_build_writes_fp32_ir_and_compiles_it_in_f32(artifact):
    assert artifact.path.name == "model.xml" and artifact.path.with_suffix(".bin").is_file()
    assert (artifact.name, artifact.precision) == ("openvino", "fp32")
    assert artifact.build_info["inference_precision"] == "f32"
    assert "fp32 weights" in artifact.build_info["format"]


@needs_openvino
@pytest.mark.parametrize("batch", [1, 8])
def test_openvino_matches_onnx_runtime_at_every_batch(onnx_path, artifact, batch):
    with load_runner(artifact.path, "cpu-x86-openvino") as runner:
        assert (runner.name, runner.device, runner.precision) == ("openvino", "cpu", "fp32")
        parity = compare_with_onnxruntime(runner, onnx_path, batches(1, size=batch)[0])
    assert parity.passed and parity.top1_agreement == 1.0, parity


@needs_openvino
def test_the_targets_thread_count_reaches_the_cpu_plugin(artifact):
    target = load_target("cpu-x86-openvino")
    with ov_backend.OpenVinoRunner(artifact.path, dataclasses.replace(target, intra_op_threads=1)) as r:
        assert r.threads == 1


def test_an_ir_without_its_weights_is_an_input_error(tmp_path):
    if REASON is not None:
        pytest.skip(REASON)
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(InputError, match=r"\.bin"):
        load_runner(tmp_path / "model.xml")


def test_without_the_package_the_back_end_names_the_extra(monkeypatch, onnx_path, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    assert "pip install 'edgeprune[openvino]'" in ov_backend.OpenVinoBackend.unavailable_reason()
    with pytest.raises(BackendUnavailableError, match=r"edgeprune\[openvino\]") as caught:
        ov_backend.OpenVinoBackend().build(ModelSource("model", onnx_path), tmp_path, load_target("cpu-x86-openvino"))
    assert "\n" not in str(caught.value)
