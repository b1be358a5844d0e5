"""Memory an ONNX model needs, computed from the graph: exact, deterministic, machine-free.

Weight bytes are the initializers' (and Constant nodes') element counts times their element
sizes. Peak activation bytes come from ONNX shape inference at a fixed batch and a liveness walk
over the graph's node order (ONNX requires nodes in topological order): a tensor is live from the
node that produces it (graph inputs from the start) until its last consumer has run (graph
outputs until the end), and the peak is the largest sum of live tensors while a node runs, its
inputs and outputs both held. That is what a runtime that frees each buffer after its last use
needs at least, and what a device budget is checked against; runtimes that fuse or reuse
buffers in place can need less, arenas that round up more.

An INT8 (QDQ) graph is computed as written, float tensors between Quantize/DequantizeLinear
pairs included: a runtime that fuses them into int8 kernels holds less, so there the figure is
an upper bound (`bound`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

from edgeprune.errors import InputError

_MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class OnnxMemory:
    """Bytes of one model at one batch size; `unknown_tensors` lists intermediate tensors whose
    size shape inference could not tell (then `activation_bytes` is a lower bound, `exact` False)."""

    batch: int
    weight_bytes: int
    activation_bytes: int
    peak_node: str
    unknown_tensors: tuple[str, ...] = ()
    quantized: bool = False  # holds QuantizeLinear/DequantizeLinear nodes (see the module docstring)

    @property
    def exact(self) -> bool:
        return not self.unknown_tensors and not self.quantized

    @property
    def bound(self) -> str:
        """What `activation_bytes` is: "exact", "lower bound" (unknown shapes counted as 0),
        "upper bound" (a QDQ graph as written) or "approximate" (both)."""
        if self.unknown_tensors:
            return "approximate" if self.quantized else "lower bound"
        return "upper bound" if self.quantized else "exact"

    @property
    def weight_mb(self) -> float:
        return self.weight_bytes / _MB

    @property
    def activation_mb(self) -> float:
        return self.activation_bytes / _MB


def onnx_memory(model: Union[str, Path, Any], batch: int = 1) -> OnnxMemory:
    """Weight and peak activation bytes of `model` (a path or an `onnx.ModelProto`) at `batch`."""
    import onnx

    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(str(model))
        except Exception as error:  # onnx raises several unrelated types for a bad file
            raise InputError(f"{model}: not a readable ONNX model ({error})") from None
    graph = model.graph
    weights = {init.name: _tensor_bytes(init.data_type, init.dims) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    weights[node.output[0]] = _tensor_bytes(attr.t.data_type, attr.t.dims)
    sizes = _activation_sizes(_with_batch(model, batch))
    memory = _liveness(graph, sizes, set(weights), batch, sum(weights.values()))
    quantized = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)
    return replace(memory, quantized=quantized)


def _tensor_bytes(data_type: int, dims: Any) -> int:
    import numpy as np
    from onnx import helper

    count = 1
    for d in dims:
        count *= int(d)
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def _with_batch(model: Any, batch: int) -> Any:
    """A copy whose graph inputs have the batch axis fixed (other symbolic axes are left)."""
    import onnx

    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {i.name for i in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return fixed


def _activation_sizes(model: Any) -> dict[str, int]:
    """Bytes of every tensor whose type and full shape shape inference knows."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as error:  # onnx's InferenceError and friends
        raise InputError(f"ONNX shape inference failed ({error}); re-export the model") from None
    sizes: dict[str, int] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor = value.type.tensor_type
        if not tensor.elem_type or not tensor.HasField("shape"):
            continue
        if all(d.HasField("dim_value") for d in tensor.shape.dim):
            sizes[value.name] = _tensor_bytes(tensor.elem_type, [d.dim_value for d in tensor.shape.dim])
    return sizes


def _liveness(graph: Any, sizes: dict[str, int], weights: set[str], batch: int,
              weight_bytes: int) -> OnnxMemory:
    nodes = list(graph.node)
    end = len(nodes)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name and name not in weights:
                last_use[name] = i
    for value in graph.output:
        last_use[value.name] = end
    unknown: list[str] = []

    def size(name: str) -> int:
        if name in sizes:
            return sizes[name]
        if name not in unknown:
            unknown.append(name)
        return 0

    live = {v.name for v in graph.input if v.name not in weights}
    current = sum(size(n) for n in live)
    peak, peak_node = current, "(graph inputs)"
    for i, node in enumerate(nodes):
        for name in node.output:
            if name and name not in weights and name not in live:
                live.add(name)
                current += size(name)
        if current > peak:
            peak, peak_node = current, node.name or f"{node.op_type}#{i}"
        for name in [n for n in live if last_use.get(n, -1) <= i]:
            live.discard(name)
            current -= size(name)
    return OnnxMemory(batch=batch, weight_bytes=int(weight_bytes), activation_bytes=int(peak),
                      peak_node=peak_node, unknown_tensors=tuple(unknown))


#: How each bound reads in front of a figure.
BOUND_PREFIX = {"exact": "", "lower bound": ">= ", "upper bound": "<= ", "approximate": "~ "}


def bound_prefix(bound: Any) -> str:
    return BOUND_PREFIX.get(str(bound), "") if bound else ""
