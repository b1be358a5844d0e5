"""INT8 by static post-training quantisation: ONNX Runtime's quantizer, QDQ format, per-channel weights.

The same Q/DQ model serves two runtimes. ONNX Runtime's CPU kernels run it directly (unsigned
8-bit activations, signed per-channel weights: the U8S8 layout its x86 kernels are fastest at).
TensorRT builds its INT8 engine from it (explicit quantisation), which needs symmetric signed
activations with zero point 0; `symmetric_activations=True` produces that flavour.
"""

from __future__ import annotations

import logging

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, ModelSource, Runner, RunnerLoader, as_float_batch
from edgeprune.engines.onnxruntime import OnnxRuntimeRunner, build_session_artifact
from edgeprune.errors import InputError
from edgeprune.targets import Target

log = logging.getLogger(__name__)


def int8_path(onnx_path: Path, out_dir: Path) -> Path:
    """``model.onnx`` -> ``out_dir/model.int8.onnx``."""
    return Path(out_dir) / f"{Path(onnx_path).name.removesuffix('.onnx')}.int8.onnx"


def _calibration_reader(input_name: str, batches: list[np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _BatchReader(CalibrationDataReader):
        """Feeds the caller's calibration batches to the quantizer once, in order."""

        def __init__(self) -> None:
            self._iterator: Iterator[np.ndarray] = iter(batches)

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            batch = next(self._iterator, None)
            return None if batch is None else {input_name: batch}

        def rewind(self) -> None:
            self._iterator = iter(batches)

    return _BatchReader()


def take_calibration(
    calibration: Optional[Iterable[Any]], max_batches: int, target_name: str
) -> list[np.ndarray]:
    """Up to `max_batches` float32 batches; an INT8 target without calibration data is a user error."""
    if calibration is None:
        raise InputError(
            f"target {target_name} is INT8 and needs calibration batches: pass calibration= "
            "(a list of float32 NCHW arrays drawn from the training data)"
        )
    batches: list[np.ndarray] = []
    for batch in calibration:
        if len(batches) >= max_batches:
            break
        batches.append(as_float_batch(batch))
    if not batches:
        raise InputError(f"target {target_name} is INT8 but the calibration data is empty")
    return batches


def count_qdq_nodes(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        op: sum(1 for node in graph.node if node.op_type == op)
        for op in ("QuantizeLinear", "DequantizeLinear")
    }


def quantize_qdq(
    onnx_path: Path,
    out_path: Path,
    calibration: list[np.ndarray],
    *,
    symmetric_activations: bool = False,
) -> dict[str, Any]:
    """Write a statically quantised QDQ copy of `onnx_path` to `out_path` (atomically); return build info."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )
    import onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmp_dir:
        tmp = Path(tmp_dir)
        # Fold BatchNorm into Conv and infer shapes first, as ONNX Runtime's quantisation guide advises.
        preprocessed = tmp / "preprocessed.onnx"
        try:
            quant_pre_process(str(onnx_path), str(preprocessed), skip_symbolic_shape=False)
            source, pre_processed = preprocessed, True
        except Exception as error:  # pre-processing is an optimisation; quantising the raw graph still works
            log.warning("quantising %s without ONNX Runtime's pre-processing, which failed: %s", onnx_path, error)
            source, pre_processed = onnx_path, False
        activation_type = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
        result = tmp / "quantized.onnx"
        quantize_static(
            model_input=str(source),
            model_output=str(result),
            calibration_data_reader=_calibration_reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=activation_type,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True},
        )
        os.replace(result, out_path)
    return {
        "quantization": "static QDQ, per-channel int8 weights, MinMax calibration",
        "activation_type": "int8 symmetric" if symmetric_activations else "uint8 asymmetric",
        "calibration_batches": len(calibration),
        "calibration_samples": int(sum(len(b) for b in calibration)),
        "pre_processed": pre_processed,
        "qdq_nodes": count_qdq_nodes(out_path),
        "source_model": onnx_path.name,
    }


class OnnxRuntimeInt8Backend(Backend):
    """INT8 QDQ model run by ONNX Runtime (CPU by default)."""

    name = "onnxruntime-int8"
    suffixes = (".onnx",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "onnxruntime" and target.precision == "int8"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        try:
            import onnxruntime.quantization  # noqa: F401
        except ImportError:
            return "onnxruntime.quantization is missing: pip install onnxruntime"
        from edgeprune.engines.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.unavailable_reason(target)

    def build(
        self,
        source: ModelSource,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        batches = take_calibration(calibration, target.calibration_batches, target.name)
        quantized = int8_path(source.onnx_path, out_dir)
        info = quantize_qdq(Path(source.onnx_path), quantized, batches)
        return build_session_artifact(self.name, quantized, Path(out_dir), target, "int8", info, cache_dir)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        """Either file of an INT8 target: the Q/DQ model, or the FP32 one it is compared with
        (the precision is read from the graph, never assumed from the target)."""
        return OnnxRuntimeRunner(path, target)

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The FP32 model, and its Q/DQ copy where one was built (`build` writes it beside)."""
        loaders: dict[str, RunnerLoader] = {source.name: lambda: self.load(source.onnx_path, target)}
        quantized = int8_path(source.onnx_path, Path(source.onnx_path).parent)
        if quantized.is_file():
            loaders[f"{source.name}-int8"] = lambda: self.load(quantized, target)
        return loaders
