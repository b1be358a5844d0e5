"""INT8: static QDQ quantisation with calibration, run by ONNX Runtime on this CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgeprune.engines import build_engines, load_runner
from edgeprune.engines.ort_int8 import count_qdq_nodes, quantize_qdq
from edgeprune.errors import InputError
from edgeprune.onnx_export.exporter import export_onnx
from edgeprune.targets import load_target


def cifar_convnet() -> nn.Module:
    torch.manual_seed(0)

    def block(c_in, c_out, stride):
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )

    model = nn.Sequential(
        block(3, 16, 1),
        block(16, 32, 2),
        block(32, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    return model.eval()


def batches(n_batches: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randn(size, 3, 32, 32).astype(np.float32) for _ in range(n_batches)]


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.onnx"
    export_onnx(cifar_convnet(), (3, 32, 32), path)
    return path


@pytest.fixture(scope="module")
def int8_artifact(fp32_model):
    (artifact,) = build_engines(
        fp32_model, fp32_model.parent, "cpu-x86-int8", calibration=batches(20, size=8)
    )
    return artifact


def test_int8_target_writes_model_int8_onnx_with_qdq_nodes(int8_artifact):
    assert int8_artifact.path.name == "model.int8.onnx"
    assert (int8_artifact.name, int8_artifact.precision) == ("onnxruntime-int8", "int8")
    nodes = count_qdq_nodes(int8_artifact.path)
    assert nodes["QuantizeLinear"] > 0 and nodes["DequantizeLinear"] > 0
    assert int8_artifact.build_info["qdq_nodes"] == nodes


def test_calibration_is_capped_at_the_targets_batch_count(int8_artifact):
    assert load_target("cpu-x86-int8").calibration_batches == 16
    assert int8_artifact.build_info["calibration_batches"] == 16
    assert int8_artifact.build_info["calibration_samples"] == 16 * 8


def test_conv_weights_are_quantised_per_channel(int8_artifact):
    graph = onnx.load(str(int8_artifact.path)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weight_scales = [
        initializers[node.input[1]]
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and initializers.get(node.input[0]) is not None
        and initializers[node.input[0]].dtype == np.int8
        and initializers[node.input[0]].ndim == 4
    ]
    assert weight_scales and all(scale.size > 1 for scale in weight_scales)


def test_int8_predictions_agree_with_fp32_on_most_samples(fp32_model, int8_artifact):
    x = batches(4, size=16, seed=123)
    x = np.concatenate(x)
    with load_runner(fp32_model) as fp32, load_runner(int8_artifact.path, "cpu-x86-int8") as int8:
        assert int8.precision == "int8" and int8.name == "onnxruntime-int8"
        reference, quantised = fp32.run(x), int8.run(x)
    agreement = float(np.mean(reference.argmax(1) == quantised.argmax(1)))
    assert agreement >= 0.9
    assert np.max(np.abs(reference - quantised)) < 0.25 * np.max(np.abs(reference)) + 1e-3
    assert not np.array_equal(reference, quantised)  # it really ran quantised kernels


@pytest.mark.parametrize("batch", [1, 4])
def test_int8_model_keeps_the_dynamic_batch(int8_artifact, batch):
    with load_runner(int8_artifact.path) as runner:
        assert runner.run(batches(1, size=batch)[0]).shape == (batch, 10)


def test_int8_without_calibration_is_an_input_error(fp32_model, tmp_path):
    with pytest.raises(InputError, match="calibration"):
        build_engines(fp32_model, tmp_path, "cpu-x86-int8")
    with pytest.raises(InputError, match="empty"):
        build_engines(fp32_model, tmp_path, "cpu-x86-int8", calibration=[])
    assert not list(tmp_path.iterdir())


def test_tensorrt_flavour_has_symmetric_int8_activations(fp32_model, tmp_path):
    """TensorRT accepts only zero-point-0 signed INT8, so its Q/DQ model is quantised that way."""
    out = tmp_path / "model.int8-trt.onnx"
    info = quantize_qdq(fp32_model, out, batches(2), symmetric_activations=True)
    assert info["activation_type"] == "int8 symmetric"
    graph = onnx.load(str(out)).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    zero_points = [
        initializers[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert zero_points
    assert all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)


def test_a_custom_calibration_count_is_respected(fp32_model, tmp_path):
    target = dataclasses.replace(load_target("cpu-x86-int8"), name="few", calibration_batches=2)
    (artifact,) = build_engines(fp32_model, tmp_path, target, calibration=iter(batches(5, size=4)))
    assert artifact.build_info["calibration_batches"] == 2


def test_int8_memory_is_computed_from_the_qdq_graph_as_an_upper_bound(fp32_model, int8_artifact):
    """Weights are int8 (about a quarter of FP32's bytes, plus scales); activations are the graph
    as written, Q/DQ pairs included, so they are marked an upper bound, not exact."""
    from edgeprune.measure.onnx_memory import onnx_memory

    fp32, int8 = onnx_memory(fp32_model, 4), onnx_memory(int8_artifact.path, 4)
    assert fp32.bound == "exact" and not fp32.quantized
    assert int8.quantized and int8.bound == "upper bound" and not int8.exact
    assert int8.weight_bytes < 0.35 * fp32.weight_bytes
    assert int8.activation_bytes > 0
