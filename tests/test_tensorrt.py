"""TensorRT: the pure parts run everywhere (fake `trt` modules); building and running skip without it."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgeprune.engines import accuracy_of_runner, build_engines, compare_with_onnxruntime, load_runner
from edgeprune.engines.tensorrt import (
    TensorRTBackend,
    convert_to_fp16,
    network_flags,
    precision_plan,
    profile_shapes,
    timing_cache_file,
)
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import load_target
from fake_tensorrt import NUM_CLASSES, FakeDevice, make_fake_trt

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA = torch.cuda.is_available()


def fake_trt(
    version: str, fp16: bool, int8: bool, strongly_typed: bool, explicit_batch: bool
) -> SimpleNamespace:
    builder_flags = {"GPU_FALLBACK": 3, **({"FP16": 0} if fp16 else {}), **({"INT8": 1} if int8 else {})}
    creation = {
        **({"EXPLICIT_BATCH": 0} if explicit_batch else {}),
        **({"STRONGLY_TYPED": 1} if strongly_typed else {}),
    }
    return SimpleNamespace(
        __version__=version,
        BuilderFlag=SimpleNamespace(**builder_flags),
        NetworkDefinitionCreationFlag=SimpleNamespace(**creation),
    )


TRT_8_6 = fake_trt("8.6.2", fp16=True, int8=True, strongly_typed=False, explicit_batch=True)
TRT_10 = fake_trt("10.3.0", fp16=True, int8=True, strongly_typed=True, explicit_batch=True)
TRT_11 = fake_trt("11.1.0", fp16=False, int8=False, strongly_typed=True, explicit_batch=False)


def test_fp16_uses_the_builder_flag_where_tensorrt_has_it():
    for trt in (TRT_8_6, TRT_10):
        plan = precision_plan(trt, "fp16")
        assert plan.builder_flags == ("FP16",) and not plan.strongly_typed and plan.onnx_variant == "fp32"


def test_fp16_without_the_flag_builds_an_fp16_graph_strongly_typed():
    plan = precision_plan(TRT_11, "fp16")
    assert plan.builder_flags == () and plan.strongly_typed and plan.onnx_variant == "fp16"
    assert "strongly typed" in plan.to_dict()["precision_path"]


def test_int8_always_builds_from_the_qdq_model():
    flagged = precision_plan(TRT_10, "int8")
    assert flagged.builder_flags == ("INT8", "FP16") and flagged.onnx_variant == "qdq"
    typed = precision_plan(TRT_11, "int8")
    assert typed.builder_flags == () and typed.strongly_typed and typed.onnx_variant == "qdq"


def test_fp32_is_strongly_typed_only_where_weak_typing_is_gone():
    assert not precision_plan(TRT_10, "fp32").strongly_typed
    assert precision_plan(TRT_11, "fp32").strongly_typed


def test_network_flags_per_tensorrt_version():
    assert network_flags(TRT_8_6, strongly_typed=False) == 1 << 0  # EXPLICIT_BATCH is required before 10
    assert network_flags(TRT_10, strongly_typed=False) == 0  # deprecated and ignored from 10 on
    assert network_flags(TRT_10, strongly_typed=True) == 1 << 1
    assert network_flags(TRT_11, strongly_typed=True) == 1 << 1
    assert network_flags(TRT_8_6, strongly_typed=True) == 1 << 0  # 8.6 has no STRONGLY_TYPED


def test_profile_shapes_come_from_the_target_batch_sizes():
    assert profile_shapes(load_target("jetson-orin-nano"), (3, 32, 32)) == (
        (1, 3, 32, 32),
        (1, 3, 32, 32),
        (8, 3, 32, 32),
    )
    target = dataclasses.replace(load_target("gpu-trt-fp16"), batch_sizes=(8, 1, 32))
    assert [shape[0] for shape in profile_shapes(target, (3, 64, 64))] == [1, 8, 32]
    with pytest.raises(UnsupportedModelError, match="fixed"):
        profile_shapes(target, (3, -1, -1))


def test_timing_cache_is_per_gpu_and_tensorrt_version(tmp_path):
    a = timing_cache_file(tmp_path, "10.3.0", "NVIDIA H100 80GB HBM3", "9.0")
    b = timing_cache_file(tmp_path, "10.3.0", "Orin (nvgpu)", "8.7")
    c = timing_cache_file(tmp_path, "10.4.0", "Orin (nvgpu)", "8.7")
    assert len({a, b, c}) == 3 and all(p.parent == tmp_path and " " not in p.name for p in (a, b, c))


def small_convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, 2, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt") / "model.onnx"
    export_onnx(small_convnet(), (3, 32, 32), path)
    return path


def test_fp16_graph_keeps_float32_io_and_close_outputs(onnx_model, tmp_path):
    """The copy TensorRT 11 builds FP16 from: FP16 weights, FP32 inputs and outputs."""
    fp16 = convert_to_fp16(onnx_model, tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(fp16)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in graph.initializer if t.dims} == {onnx.TensorProto.FLOAT16}
    x = np.random.RandomState(0).randn(4, 3, 32, 32).astype(np.float32)
    reference = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    half = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(half, reference, atol=1e-2)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed; the not-installed path cannot be shown here")
def test_without_tensorrt_the_build_says_what_to_install(onnx_model, tmp_path):
    assert "pip install tensorrt" in TensorRTBackend.unavailable_reason()
    with pytest.raises(
        BackendUnavailableError, match="tensorrt is not installed: pip install tensorrt"
    ) as info:
        build_engines(onnx_model, tmp_path, "gpu-trt-fp16")
    assert "\n" not in str(info.value)
    with pytest.raises(BackendUnavailableError, match="tensorrt is not installed"):
        load_runner(tmp_path / "model.gpu-trt-fp16.plan")


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed: pip install tensorrt")
@pytest.mark.parametrize("target_name", ["gpu-trt-fp16", "gpu-trt-int8"])
def test_tensorrt_engine_builds_runs_any_batch_and_matches_onnxruntime(onnx_model, tmp_path, target_name):
    target = dataclasses.replace(load_target(target_name), batch_sizes=(4, 1, 8), workspace_mb=256)
    calibration = [np.random.RandomState(i).randn(8, 3, 32, 32).astype(np.float32) for i in range(4)]
    (artifact,) = build_engines(
        onnx_model, tmp_path, target, calibration=calibration, cache_dir=tmp_path / "cache"
    )
    info = artifact.build_info
    assert artifact.path.suffix == ".plan" and artifact.path.is_file()
    assert {"tensorrt_version", "gpu_name", "compute_capability", "precision_path"} <= set(info)
    assert info["profiles"] == [{"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}]
    assert not info["timing_cache_reused"]
    with load_runner(artifact.path, target) as runner:
        for batch in (1, 4):
            x = np.random.RandomState(batch).randn(batch, 3, 32, 32).astype(np.float32)
            assert runner.run(x).shape == (batch, 10)
        parity = compare_with_onnxruntime(runner, onnx_model, calibration[0])
    assert parity.top1_agreement >= 0.9
    if target.precision == "fp16":
        assert parity.passed
    (again,) = build_engines(
        onnx_model, tmp_path, target, calibration=calibration, cache_dir=tmp_path / "cache"
    )
    assert again.build_info["timing_cache_reused"]


# --- Build and run against a strict fake of the TensorRT API (tests/fake_tensorrt.py) ------------
# This cannot prove TensorRT accepts the network (that needs a GPU); it pins which API calls the
# builder and the runner make, in what order and with what values, and fails where the real API
# would refuse them.


@pytest.fixture
def fake_tensorrt(monkeypatch):
    import edgeprune.engines.tensorrt as trt_module
    import edgeprune.engines.tensorrt_runner as runner_module

    def install(version: str = "10.3.0", **options):
        trt = make_fake_trt(version, **options)
        trt.devices = []

        def device():
            trt.devices.append(FakeDevice(trt))
            return trt.devices[-1]

        monkeypatch.setattr(trt_module, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(
            trt_module, "cuda_device_info", lambda: {"gpu_name": "Fake GPU", "compute_capability": "8.7"}
        )
        monkeypatch.setattr(trt_module.TensorRTBackend, "unavailable_reason", classmethod(lambda cls, t=None: None))
        monkeypatch.setattr(runner_module, "TorchCudaDevice", device)
        return trt

    return install


def expected_logits(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).sum(axis=1)[:, None] * np.arange(1, NUM_CLASSES + 1)[None, :]


def test_fp16_build_with_flags_sets_workspace_profile_level_and_reuses_the_timing_cache(
    fake_tensorrt, onnx_model, tmp_path
):
    trt = fake_tensorrt("10.3.0", weak_typing=True)
    calls = trt.calls
    target = dataclasses.replace(load_target("gpu-trt-fp16"), batch_sizes=(4, 1, 16))
    (artifact,) = build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")
    assert artifact.path.name == "model.gpu-trt-fp16.plan"
    assert json.loads(artifact.path.read_bytes())["magic"] == "fake-plan"
    assert calls["parsed"] == str(onnx_model)
    assert calls["flags"] == ["FP16"]
    assert calls["network_flags"] == 0
    assert calls["memory_pool"] == ("WORKSPACE", 2048 << 20)
    assert calls["optimization_level"] == 3
    assert calls["profiles"] == [("input", (1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))]
    info = artifact.build_info
    assert info["precision_path"] == "builder flag FP16" and info["gpu_name"] == "Fake GPU"
    assert info["tensorrt_version"] == "10.3.0" and info["compute_capability"] == "8.7"
    assert info["profiles"] == [{"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]}]
    assert not info["timing_cache_reused"] and info["tensorrt_warnings"] == ["WARNING: fake warning"]
    assert "dla_core" not in info
    sidecar = json.loads((tmp_path / "model.gpu-trt-fp16.plan.json").read_text())
    assert sidecar["precision"] == "fp16"

    (again,) = build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")
    assert again.build_info["timing_cache_reused"]
    assert calls["timing_cache_in"] == b"timing:"  # the bytes saved by the first build


def test_fp16_build_on_tensorrt_11_is_strongly_typed_without_explicit_batch(fake_tensorrt, onnx_model, tmp_path):
    trt = fake_tensorrt("11.1.0", weak_typing=False)
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    (artifact,) = build_engines(onnx_model, tmp_path, "gpu-trt-fp16", cache_dir=tmp_path / "cache")
    assert trt.calls["parsed"].endswith("model.fp16.onnx")
    assert trt.calls["network_flags"] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert trt.calls["flags"] == []
    assert artifact.build_info["precision_path"] == "strongly typed fp16 onnx graph"


def test_int8_build_quantises_to_symmetric_qdq_then_builds(fake_tensorrt, onnx_model, tmp_path):
    trt = fake_tensorrt("11.1.0", weak_typing=False)
    calibration = [np.random.RandomState(i).randn(4, 3, 32, 32).astype(np.float32) for i in range(3)]
    (artifact,) = build_engines(
        onnx_model, tmp_path, "gpu-trt-int8", calibration=calibration, cache_dir=tmp_path / "cache"
    )
    assert trt.calls["parsed"].endswith("model.int8-trt.onnx")
    assert artifact.build_info["quantization"]["activation_type"] == "int8 symmetric"
    assert artifact.build_info["precision_path"] == "strongly typed Q/DQ onnx graph"


def test_int8_build_without_calibration_is_an_input_error(fake_tensorrt, onnx_model, tmp_path):
    fake_tensorrt("10.3.0", weak_typing=True)
    with pytest.raises(InputError, match="calibration"):
        build_engines(onnx_model, tmp_path, "gpu-trt-int8")


def test_a_parser_failure_names_the_parsers_errors(fake_tensorrt, onnx_model, tmp_path):
    fake_tensorrt(parser_errors=("node 3 (Conv): unsupported auto_pad", "node 7: bad attribute"))
    with pytest.raises(UnsupportedModelError, match="rejected model.onnx: node 3 .*auto_pad; node 7"):
        build_engines(onnx_model, tmp_path, "gpu-trt-fp16", cache_dir=tmp_path / "cache")


def test_a_failed_build_reports_the_builders_own_errors_after_earlier_builds(fake_tensorrt, onnx_model, tmp_path):
    """TensorRT keeps the process's first logger; a logger made per build would hear nothing and
    the message would say "no error was logged"."""
    trt = fake_tensorrt()
    build_engines(onnx_model, tmp_path, "gpu-trt-fp16", cache_dir=tmp_path / "cache")
    trt.build_error = "fake: out of device memory for tactic"
    with pytest.raises(UnsupportedModelError, match="out of device memory") as info:
        build_engines(onnx_model, tmp_path / "again", "gpu-trt-fp16", cache_dir=tmp_path / "cache")
    assert "no error was logged" not in str(info.value)


def test_runner_sets_shapes_and_addresses_executes_and_synchronises(fake_tensorrt, onnx_model, tmp_path):
    trt = fake_tensorrt()
    target = dataclasses.replace(load_target("gpu-trt-fp16"), batch_sizes=(4, 1, 16))
    (artifact,) = build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")
    with load_runner(artifact.path, target) as runner:
        assert (runner.name, runner.device, runner.precision, runner.max_batch_size) == (
            "tensorrt", "cuda", "fp16", 16)
        assert runner.device_memory_bytes == 4096 * 16 and runner.graph_file is None
        for batch in (1, 4, 16):
            x = np.random.RandomState(batch).randn(batch, 3, 32, 32).astype(np.float32)
            np.testing.assert_allclose(runner.run(x), expected_logits(x), rtol=1e-5, atol=1e-3)
        assert trt.devices[-1].synchronized == 3 and not trt.pending.get(trt.devices[-1].stream_handle)
        with pytest.raises(InputError, match="batch 17 is outside every profile"):
            runner.run(np.zeros((17, 3, 32, 32), np.float32))
    with pytest.raises(InputError, match="closed"):
        runner.run(np.zeros((1, 3, 32, 32), np.float32))


def test_a_plan_the_runtime_cannot_load_reports_the_runtimes_error(fake_tensorrt, onnx_model, tmp_path):
    fake_tensorrt()
    (artifact,) = build_engines(onnx_model, tmp_path, "gpu-trt-fp16", cache_dir=tmp_path / "cache")
    with load_runner(artifact.path, "gpu-trt-fp16"):
        pass  # a first runner, whose logger TensorRT keeps
    artifact.path.write_bytes(b"\x00 not a plan")
    with pytest.raises(BackendUnavailableError, match="magic tag does not match.*rebuild it here"):
        load_runner(artifact.path, "gpu-trt-fp16")


def test_dla_core_beyond_the_device_is_refused(fake_tensorrt, onnx_model, tmp_path):
    fake_tensorrt(dla_cores=0)
    target = dataclasses.replace(load_target("jetson-agx-orin"), dla_core=0)
    with pytest.raises(BackendUnavailableError, match="DLA core 0"):
        build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")


def test_dla_builds_one_static_profile_per_batch_and_counts_layers_left_on_the_gpu(
    fake_tensorrt, onnx_model, tmp_path
):
    trt = fake_tensorrt(dla_cores=2)
    target = dataclasses.replace(load_target("jetson-agx-orin"), dla_core=1, batch_sizes=(8, 1, 32))
    (artifact,) = build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")
    assert trt.calls["profiles"] == [("input", *(((b, 3, 32, 32),) * 3)) for b in (1, 8, 32)]
    assert set(trt.calls["flags"]) == {"FP16", "GPU_FALLBACK"}
    info = artifact.build_info
    assert info["dla_core"] == 1
    assert info["dla_layers"]["network_layers"] == 5
    assert (info["dla_layers"]["on_dla"], info["dla_layers"]["on_gpu"]) == (4, 1)
    assert info["dla_layers"]["gpu_fallback_layers"] == ["fc"]


def test_dla_engine_loads_on_its_core_and_runs_only_its_batch_sizes(fake_tensorrt, onnx_model, tmp_path):
    trt = fake_tensorrt(dla_cores=2)
    target = dataclasses.replace(load_target("jetson-agx-orin"), dla_core=1, batch_sizes=(8, 1, 32))
    (artifact,) = build_engines(onnx_model, tmp_path, target, cache_dir=tmp_path / "cache")
    with load_runner(artifact.path) as runner:  # the core comes from the plan's build record
        assert runner.name == "tensorrt-dla1" and runner.profile_batches == [(1, 1), (8, 8), (32, 32)]
        x = np.random.RandomState(0).randn(8, 3, 32, 32).astype(np.float32)
        np.testing.assert_allclose(runner.run(x), expected_logits(x), rtol=1e-5, atol=1e-3)
        assert trt.calls["profile_switches"] == [1]
        with pytest.raises(InputError, match="batch 4 is outside every profile .*batches 1, 8, 32"):
            runner.run(np.zeros((4, 3, 32, 32), np.float32))
        assert runner.fixed_batch_sizes == (1, 8, 32)
        many = np.random.RandomState(1).randn(45, 3, 32, 32).astype(np.float32)
        labels = expected_logits(many).argmax(axis=1)
        assert accuracy_of_runner(runner, many, labels) == 1.0  # 32 + 13 padded to 32


def test_bench_of_an_export_folder_on_a_tensorrt_target_builds_and_times_tensorrt_engines(
    fake_tensorrt, onnx_model, tmp_path
):
    import shutil

    from edgeprune.measure.bench import BenchConfig
    from edgeprune.workflows.bench import benchmark_path

    fake_tensorrt()
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(onnx_model, folder / "dense.onnx")
    shutil.copy(onnx_model, folder / "model.onnx")
    config = BenchConfig(warmup_s=0.0, min_iterations=3, min_seconds=0.0, rounds=2, memory_iterations=0,
                         batch_sizes=(1, 8), bootstrap_resamples=100)
    result = benchmark_path(folder, "gpu-trt-fp16", config)
    assert {(e.model, e.runner, e.device, e.precision) for e in result.entries} == {
        ("dense", "tensorrt", "cuda", "fp16"), ("pruned", "tensorrt", "cuda", "fp16")}
    # The engine's own device memory, never the FP32 ONNX graph's figures under a TensorRT name.
    assert all(e.engine_memory_bytes and e.weight_bytes is None and e.activation_bytes is None
               for e in result.entries)
    assert sorted(p.name for p in folder.iterdir()) == ["dense.onnx", "model.onnx"]  # built elsewhere
