"""Engine selection from targets, the ONNX Runtime back end, and the torch-gpu skip."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.engines import (
    BACKENDS,
    EngineArtifact,
    accuracy_of_runner,
    backends_for,
    build_engines,
    build_torch_runner,
    compare_with_onnxruntime,
    load_runner,
)
from edgeprune.engines.onnxruntime import session_options
from edgeprune.errors import BackendUnavailableError, InputError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import list_targets, load_target

HAS_CUDA = torch.cuda.is_available()


def small_convnet() -> nn.Module:
    torch.manual_seed(0)

    def block(c_in, c_out, stride):
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )

    return nn.Sequential(
        block(3, 8, 1), block(8, 16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)
    ).eval()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    model = small_convnet()
    path = tmp_path_factory.mktemp("engines") / "model.onnx"
    export_onnx(model, (3, 16, 16), path)
    return model, path


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, 3, 16, 16).astype(np.float32)


@pytest.mark.parametrize(
    ("target", "engines"),
    [
        ("cpu-x86", ["onnxruntime"]),
        ("cpu-arm64", ["onnxruntime"]),
        ("cpu-x86-int8", ["onnxruntime-int8"]),
        ("gpu-trt-fp16", ["tensorrt"]),
        ("gpu-trt-int8", ["tensorrt"]),
        ("jetson-orin-nano", ["tensorrt"]),
        ("gpu-torch-fp16", ["torch-gpu"]),
    ],
)
def test_engines_are_selected_from_the_target(target, engines):
    assert backends_for(load_target(target)) == engines


def test_every_target_maps_to_registered_backends():
    for target in list_targets():
        assert all(name in BACKENDS for name in backends_for(target))
    assert all(cls.name == name for name, cls in BACKENDS.items())


def test_importing_engines_does_not_import_torch_or_tensorrt():
    code = "import sys, edgeprune.engines; print('torch' in sys.modules, 'tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_cpu_target_builds_an_onnxruntime_artifact_and_saves_the_optimised_model(onnx_model, tmp_path):
    _, path = onnx_model
    (artifact,) = build_engines(path, tmp_path, "cpu-x86")
    assert isinstance(artifact, EngineArtifact)
    assert (artifact.name, artifact.precision, artifact.target) == ("onnxruntime", "fp32", "cpu-x86")
    assert artifact.build_info["providers"] == ["CPUExecutionProvider"]
    assert (tmp_path / artifact.build_info["optimized_model"]).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert EngineArtifact.from_dict(artifact.to_dict()) == artifact


@pytest.mark.parametrize("batch", [1, 4])
def test_onnxruntime_runner_matches_pytorch_at_any_batch(onnx_model, batch):
    model, path = onnx_model
    x = images(batch)
    with load_runner(path, "cpu-x86") as runner:
        assert (runner.name, runner.device, runner.precision) == ("onnxruntime", "cpu", "fp32")
        logits = runner.run(x)
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(torch.from_numpy(x)).numpy(), atol=1e-4)


def test_runner_parity_against_onnxruntime_cpu(onnx_model):
    _, path = onnx_model
    with load_runner(path) as runner:
        result = compare_with_onnxruntime(runner, path, images(10))
    assert result.passed and result.top1_agreement == 1.0


def test_accuracy_of_runner_counts_top1_over_uneven_batches(onnx_model):
    _, path = onnx_model
    x = images(10)
    with load_runner(path) as runner:
        predicted = runner.run(x).argmax(1)
        assert accuracy_of_runner(runner, x, predicted, batch_size=4) == 1.0
        assert accuracy_of_runner(runner, x, (predicted + 1) % 10, batch_size=3) == 0.0
        with pytest.raises(InputError):
            accuracy_of_runner(runner, x, predicted[:5], batch_size=4)


def test_session_options_come_from_the_target():
    import onnxruntime as ort

    options = session_options(load_target("cpu-arm64"))
    assert options.intra_op_num_threads == 4 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL


@pytest.mark.skipif(
    "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers(),
    reason="this onnxruntime has CUDA; the missing-provider path cannot be shown here",
)
def test_missing_gpu_provider_is_an_error_not_a_cpu_fallback(onnx_model, tmp_path):
    _, path = onnx_model
    target = dataclasses.replace(
        load_target("cpu-x86"),
        name="ort-cuda",
        device="cuda",
        execution_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
    )
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider.*onnxruntime-gpu") as info:
        build_engines(path, tmp_path, target)
    assert "\n" not in str(info.value)
    with pytest.raises(BackendUnavailableError):
        load_runner(path, target)


def test_missing_openvino_provider_names_the_package(onnx_model, tmp_path):
    _, path = onnx_model
    if "OpenVINOExecutionProvider" in __import__("onnxruntime").get_available_providers():
        pytest.skip("OpenVINO is installed here")
    target = dataclasses.replace(
        load_target("cpu-x86"),
        name="ov",
        execution_providers=("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    )
    with pytest.raises(BackendUnavailableError, match="onnxruntime-openvino"):
        build_engines(path, tmp_path, target)


def test_torch_target_builds_nothing_from_onnx(onnx_model, tmp_path):
    _, path = onnx_model
    assert build_engines(path, tmp_path, "gpu-torch-fp16") == []


def test_load_runner_rejects_unknown_files_and_missing_models(tmp_path):
    with pytest.raises(InputError, match=".onnx or .plan"):
        load_runner(tmp_path / "model.tflite")
    with pytest.raises(InputError, match="no ONNX model"):
        load_runner(tmp_path / "absent.onnx")
    with pytest.raises(InputError, match="no ONNX model"):
        build_engines(tmp_path / "absent.onnx", tmp_path, "cpu-x86")


def test_build_torch_runner_refuses_a_non_torch_target():
    with pytest.raises(InputError, match="build_engines"):
        build_torch_runner(small_convnet(), load_target("cpu-x86"))


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available; the no-GPU error path cannot be shown here")
def test_torch_gpu_without_cuda_says_so():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        build_torch_runner(small_convnet(), load_target("gpu-torch-fp16"))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("batch", [1, 4])
def test_torch_gpu_fp16_runner_agrees_with_fp32_cpu(batch):
    model = small_convnet()
    x = images(batch)
    with build_torch_runner(model, load_target("gpu-torch-fp16")) as runner:
        assert (runner.device, runner.precision) == ("cuda", "fp16")
        first = runner.run(x)
        second = runner.run(x)  # replays the captured CUDA graph
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(first, expected, atol=5e-2)
    np.testing.assert_array_equal(first, second)
