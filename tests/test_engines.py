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
    ModelSource,
    accuracy_of_runner,
    backend_for,
    backends_for,
    bench_loaders,
    build_engines,
    build_torch_runner,
    check_runs_on_target,
    compare_with_onnxruntime,
    load_runner,
)
from edgeprune.engines import onnxruntime as ort_module
from edgeprune.engines.onnxruntime import saves_optimized_model, session_options
from edgeprune.engines.torch_gpu import TorchGpuBackend, export_program
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


def test_each_target_is_served_by_exactly_one_backend_that_declares_its_files():
    for target in list_targets():
        serving = [cls for cls in BACKENDS.values() if cls.serves(target)]
        assert serving == [backend_for(target)]
        assert serving[0].suffixes and all(s.startswith(".") for s in serving[0].suffixes)
    assert backend_for("gpu-torch-fp16").suffixes == (".pt2",)
    assert ".plan" in backend_for("jetson-orin-nano").suffixes


def test_an_onnx_file_is_not_an_engine_for_a_gpu_target(onnx_model):
    _, path = onnx_model
    for name in ("gpu-trt-fp16", "jetson-orin-nano", "gpu-torch-fp16"):
        with pytest.raises(InputError, match="not an engine for"):
            load_runner(path, name)


class _CpuRunner:
    name, device, precision = "onnxruntime", "cpu", "fp32"
    closed = False

    def close(self):
        self.closed = True


def test_a_cpu_runner_is_refused_for_a_gpu_target_and_closed():
    runner = _CpuRunner()
    with pytest.raises(BackendUnavailableError, match="runs on cpu, but target gpu-trt-fp16 is a cuda target"):
        check_runs_on_target(runner, load_target("gpu-trt-fp16"))
    assert runner.closed
    assert check_runs_on_target(_CpuRunner(), load_target("cpu-x86")).device == "cpu"


def test_bench_loaders_refuse_a_backend_that_hands_back_a_cpu_runner(onnx_model, tmp_path, monkeypatch):
    """Even a back end that claims the GPU is there cannot label a CPU run with a GPU target."""
    _, path = onnx_model
    monkeypatch.setattr(TorchGpuBackend, "unavailable_reason", classmethod(lambda cls, target=None: None))
    monkeypatch.setattr(TorchGpuBackend, "bench_loaders",
                        lambda self, source, target, out_dir, **kw: {source.name: _CpuRunner})
    (load,) = bench_loaders("gpu-torch-fp16", [ModelSource("pruned", path)], tmp_path).values()
    with pytest.raises(BackendUnavailableError, match="refusing"):
        load()


def test_bench_loaders_for_an_int8_target_add_the_qdq_copy_where_it_was_built(onnx_model, tmp_path):
    _, path = onnx_model
    calibration = [images(4, seed=i) for i in range(2)]
    build_engines(path, path.parent, "cpu-x86-int8", calibration)
    loaders = bench_loaders("cpu-x86-int8", [ModelSource("pruned", path)], tmp_path)
    assert list(loaders) == ["pruned", "pruned-int8"]
    with loaders["pruned"]() as fp32, loaders["pruned-int8"]() as int8:
        assert (fp32.precision, int8.precision) == ("fp32", "int8")

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


COMPILING = ("TensorrtExecutionProvider", "OpenVINOExecutionProvider")


class StrictFakeOrt:
    """Like onnxruntime where it matters here: a provider that compiles nodes cannot save the
    optimised graph (ORT: "Unable to serialize model as it contains compiled nodes")."""

    class GraphOptimizationLevel:
        ORT_DISABLE_ALL, ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL = range(4)

    class SessionOptions:
        optimized_model_filepath = ""

    __version__ = "fake"

    def __init__(self, available):
        self.available = available

        class InferenceSession:
            def __init__(self, path, options, providers):
                names = [p[0] if isinstance(p, tuple) else p for p in providers]
                if options.optimized_model_filepath and any(n in COMPILING for n in names):
                    raise RuntimeError("Unable to serialize model as it contains compiled nodes")
                if options.optimized_model_filepath:
                    open(options.optimized_model_filepath, "wb").write(b"optimised")
                self._providers = names

            def get_providers(self):
                return self._providers

        self.InferenceSession = InferenceSession

    def get_available_providers(self):
        return list(self.available)


@pytest.mark.parametrize("provider", COMPILING)
def test_compiling_providers_build_without_saving_the_optimised_graph(onnx_model, tmp_path, monkeypatch, provider):
    _, path = onnx_model
    monkeypatch.setattr(ort_module, "_ort", lambda: StrictFakeOrt([provider, "CPUExecutionProvider"]))
    target = dataclasses.replace(
        load_target("cpu-x86"), name="compiling", device="cuda" if provider.startswith("Tensorrt") else "cpu",
        execution_providers=(provider, "CPUExecutionProvider"),
    )
    assert not saves_optimized_model(target)
    (artifact,) = build_engines(path, tmp_path, target)
    assert artifact.build_info["providers"][0] == provider
    assert artifact.build_info["optimized_model"] is None and "compile" in artifact.build_info["optimized_model_note"]
    assert not list(tmp_path.glob("*.opt.onnx"))


def test_kernel_providers_still_save_the_optimised_graph(onnx_model, tmp_path, monkeypatch):
    _, path = onnx_model
    monkeypatch.setattr(ort_module, "_ort", lambda: StrictFakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"]))
    target = dataclasses.replace(load_target("cpu-x86"), name="ort-cuda", device="cuda",
                                 execution_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    (artifact,) = build_engines(path, tmp_path, target)
    assert artifact.build_info["optimized_model"] == "model.ort-cuda.opt.onnx"


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


def test_torch_backend_builds_a_program_that_computes_the_module_at_any_batch(onnx_model, tmp_path):
    """The .pt2 the torch-gpu back end loads: the module's own graph, batch dimension dynamic."""
    model, path = onnx_model
    (artifact,) = build_engines(path, tmp_path, "gpu-torch-fp16", module=model)
    assert artifact.path == tmp_path / "model.gpu-torch-fp16.pt2" and artifact.precision == "fp16"
    program = torch.export.load(str(artifact.path)).module()
    for batch in (1, 3, 64):
        x = torch.from_numpy(images(batch))
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), atol=1e-5, rtol=1e-5)


def test_torch_backend_refuses_a_folder_without_its_program(onnx_model, tmp_path, monkeypatch):
    _, path = onnx_model
    monkeypatch.setattr(TorchGpuBackend, "unavailable_reason", classmethod(lambda cls, target=None: None))
    with pytest.raises(InputError, match=r"no model.gpu-torch-fp16.pt2 beside model.onnx.*edgeprune export"):
        bench_loaders("gpu-torch-fp16", [ModelSource("pruned", path)], tmp_path)


def test_export_program_refuses_a_symbolic_sample_shape(tmp_path):
    from edgeprune.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="fixed"):
        export_program(small_convnet(), (3, -1, -1), tmp_path / "m.pt2")


def test_load_runner_rejects_unknown_files_and_missing_models(tmp_path):
    with pytest.raises(InputError, match=r"expected one of .*\.onnx.*\.plan.*\.pt2"):
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


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_gpu_program_runs_fp16_and_an_export_folder_benches_on_cuda(onnx_model, tmp_path):
    import shutil

    from edgeprune.measure.bench import BenchConfig
    from edgeprune.workflows.bench import benchmark_path

    model, path = onnx_model
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(path, folder / "model.onnx")
    (artifact,) = build_engines(folder / "model.onnx", folder, "gpu-torch-fp16", module=model)
    with load_runner(artifact.path, "gpu-torch-fp16") as runner:
        assert (runner.name, runner.device, runner.precision) == ("torch-gpu", "cuda", "fp16")
        for batch in (1, 64):
            x = images(batch)
            with torch.no_grad():
                np.testing.assert_allclose(runner.run(x), model(torch.from_numpy(x)).numpy(), atol=5e-2)
    config = BenchConfig(warmup_s=0.05, min_iterations=20, min_seconds=0.1, rounds=4, batch_sizes=(1, 64))
    result = benchmark_path(folder, "gpu-torch-fp16", config)
    assert {(e.runner, e.device, e.precision) for e in result.entries} == {("torch-gpu", "cuda", "fp16")}
    assert result.environment.get("gpu_name")


class _FixedBatchRunner:
    """Like a DLA engine: runs only batches of 1 and 8; logits are the per-sample pixel sums."""

    name, device, precision = "fixed", "cpu", "fp32"
    max_batch_size, fixed_batch_sizes = 8, (1, 8)

    def __init__(self):
        self.batches = []

    def run(self, batch):
        if len(batch) not in self.fixed_batch_sizes:
            raise InputError(f"batch {len(batch)} is outside every profile")
        self.batches.append(len(batch))
        sums = batch.reshape(len(batch), -1).sum(axis=1)
        return np.stack([sums, -sums], axis=1)


def test_accuracy_of_a_fixed_batch_engine_pads_the_last_batch_and_counts_only_real_samples():
    from edgeprune.engines.base import run_batched

    runner = _FixedBatchRunner()
    x = images(19)
    logits = run_batched(runner, x, batch_size=64)
    assert runner.batches == [8, 8, 8]  # 8 + 8 + 3 real samples padded to 8
    np.testing.assert_allclose(logits[:, 0], x.reshape(19, -1).sum(axis=1), rtol=1e-5)
    labels = (logits[:, 0] < 0).astype(int)
    assert accuracy_of_runner(_FixedBatchRunner(), x, labels) == 1.0
