"""OpenVINO back end: the ONNX file converted to OpenVINO IR (``.xml`` + ``.bin``), compiled for the CPU.

`build` runs ``openvino.convert_model`` on the exported ONNX and saves the IR with FP32 weights
(``save_model`` compresses to FP16 unless told not to, which would change an FP32 target's
numbers). `load` compiles it for the ``CPU`` device with f32 inference precision pinned: on a
CPU with AVX-512 BF16 or AMX, OpenVINO would otherwise run bf16 by default and the figures would
not be FP32. The target's thread count becomes ``INFERENCE_NUM_THREADS`` (0 leaves OpenVINO's
default). OpenVINO is imported inside functions (``pip install 'edgeprune[openvino]'``).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, ModelSource, Runner, RunnerLoader, as_float_batch
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.targets import Target

INSTALL_HINT = "pip install 'edgeprune[openvino]'"
DEVICE = "CPU"


def unavailable_reason() -> Optional[str]:
    if importlib.util.find_spec("openvino") is None:
        return f"openvino is not installed: {INSTALL_HINT}"
    return None


def _openvino() -> Any:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    import openvino

    return openvino


def ir_path(source: ModelSource, out_dir: Optional[Path] = None) -> Path:
    name = f"{source.stem}.xml"
    return Path(out_dir) / name if out_dir is not None else source.beside(".xml")


def convert_to_ir(onnx_path: Path, xml_path: Path) -> dict[str, Any]:
    """``openvino.convert_model`` of the ONNX file, saved as FP32 IR at `xml_path` (+ ``.bin``),
    both moved into place only once both are written."""
    ov = _openvino()
    onnx_path, xml_path = Path(onnx_path), Path(xml_path)
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as error:  # OpenVINO's frontends raise their own types
        raise UnsupportedModelError(
            f"OpenVINO cannot convert {onnx_path.name}: {str(error).strip().splitlines()[0]}"
        ) from None
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml_path.parent, prefix=f".{xml_path.stem}.ov.") as tmp:
        staged = Path(tmp) / xml_path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(staged, xml_path)
    return {
        "runtime": "openvino",
        "openvino_version": metadata.version("openvino"),
        "format": "OpenVINO IR, fp32 weights",
        "weights": xml_path.with_suffix(".bin").name,
        "input_shape": str(model.inputs[0].get_partial_shape()),
    }


def compile_config(target: Optional[Target]) -> dict[str, Any]:
    """The CPU plugin's settings for `target`: f32 precision pinned, latency hint, threads."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if target is not None and target.intra_op_threads > 0:
        config["INFERENCE_NUM_THREADS"] = int(target.intra_op_threads)
    return config


class OpenVinoRunner(Runner):
    """A model compiled for OpenVINO's CPU plugin, one synchronous infer request."""

    name = "openvino"
    device = "cpu"
    precision = "fp32"

    def __init__(self, path: Path, target: Optional[Target] = None) -> None:
        ov = _openvino()
        self.path = Path(path)
        if not self.path.is_file() or not self.path.with_suffix(".bin").is_file():
            raise InputError(f"no OpenVINO IR at {self.path} (needs the .xml and its .bin)")
        self.config = compile_config(target)
        compiled = ov.Core().compile_model(str(self.path), DEVICE, self.config)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._output = compiled.output(0)

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._request is None:
            raise InputError(f"runner for {self.path} is closed")
        results = self._request.infer([as_float_batch(batch)])
        return np.array(results[self._output], dtype=np.float32, copy=True)

    def close(self) -> None:
        self._request = None
        self._compiled = None


class OpenVinoBackend(Backend):
    """ONNX -> OpenVINO IR; run by the CPU plugin through `OpenVinoRunner`."""

    name = "openvino"
    suffixes = (".xml",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "openvino"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        return unavailable_reason()

    def build(
        self,
        source: ModelSource,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        path = ir_path(source, out_dir)
        info = convert_to_ir(Path(source.onnx_path), path)
        with OpenVinoRunner(path, target) as runner:  # compiling once proves the CPU plugin takes it
            info.update({"device": DEVICE, "inference_precision": runner.inference_precision,
                         "threads": runner.threads, "compile_config": dict(runner.config)})
        return EngineArtifact(name=self.name, path=path, precision="fp32", target=target.name, build_info=info)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        return OpenVinoRunner(path, target)

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The IR beside the ONNX model, or one converted into `out_dir` now."""
        path = ir_path(source)
        if not path.is_file():
            path = self.build(source, Path(out_dir), target).path
        return {source.name: lambda: self.load(path, target)}
