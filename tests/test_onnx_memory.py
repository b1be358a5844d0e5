"""Weight and peak activation bytes from the ONNX graph, checked by hand on small graphs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.errors import InputError
from edgeprune.measure.onnx_memory import onnx_memory


def test_tiny_cnn_by_hand(tmp_path):
    from test_cli_bench_gate import tiny_cnn

    path = tiny_cnn(tmp_path / "tiny.onnx")
    memory = onnx_memory(path, batch=1)
    # weights: conv 4x3x3x3 + bias 4 + fc 3x4 + bias 3 = 127 floats
    assert memory.weight_bytes == 127 * 4
    # x 3x8x8 (768 B) -> Conv c 4x8x8 (1024) -> Relu r (1024) -> GAP 16 -> Flatten 16 -> Gemm 12.
    # Peak while Relu runs: c (its input) + r (its output) = 2048 (x was freed after Conv).
    assert memory.activation_bytes == 2048
    assert memory.exact and memory.peak_node == "Relu#1"
    # the batch axis scales activations, not weights
    four = onnx_memory(path, batch=4)
    assert four.activation_bytes == 4 * 2048 and four.weight_bytes == memory.weight_bytes


def test_a_residual_keeps_its_input_alive():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])  # 1024 B each
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    model = helper.make_model(helper.make_graph(nodes, "res", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    # x freed after `first`; while `add` runs, a, b and y are live: 3 x 1024
    assert memory.activation_bytes == 3 * 1024
    assert memory.peak_node == "add"
    assert memory.weight_bytes == 0


def test_half_precision_counts_two_bytes_and_constants_are_weights():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [2, 10])
    const = helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(
        np.ones((10,), np.float16)))
    nodes = [const, helper.make_node("Mul", ["x", "k"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "h", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    assert memory.weight_bytes == 20
    assert memory.activation_bytes == 2 * 2 * 10 * 2  # x and y, 40 B each


def test_unknown_shapes_are_named_not_counted_as_zero():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "M"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "u", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    memory = onnx_memory(model)
    assert not memory.exact and "x" in memory.unknown_tensors


def test_not_a_model_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        onnx_memory(bad)
