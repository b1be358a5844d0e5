"""Engines: one interface, several back ends, chosen by the target.

``BACKENDS`` maps a name to a back-end class, the way ONNX Runtime names execution providers.
`build_engines` builds what a target runs; `load_runner` opens a built file. The ``torch`` runtime
runs the shrunk nn.Module rather than a file, so its runner comes from
``build_torch_runner(module, target)`` and `build_engines` returns nothing for it. Importing this
package imports neither tensorrt nor torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from edgeprune.engines.base import (
    DEFAULT_TOLERANCE,
    Backend,
    EngineArtifact,
    Runner,
    accuracy_of_runner,
    compare_with_onnxruntime,
)
from edgeprune.engines.onnxruntime import OnnxRuntimeBackend
from edgeprune.engines.ort_int8 import OnnxRuntimeInt8Backend
from edgeprune.engines.tensorrt import TensorRTBackend
from edgeprune.engines.torch_gpu import TorchGpuBackend, build_torch_runner
from edgeprune.errors import InputError
from edgeprune.targets import Target, load_target

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    OnnxRuntimeInt8Backend.name: OnnxRuntimeInt8Backend,
    TensorRTBackend.name: TensorRTBackend,
    TorchGpuBackend.name: TorchGpuBackend,
}


def backends_for(target: Target) -> list[str]:
    """The back ends that a target's runtime and precision call for, in build order."""
    if target.runtime == "onnxruntime":
        return ["onnxruntime-int8" if target.precision == "int8" else "onnxruntime"]
    if target.runtime == "tensorrt":
        return ["tensorrt"]
    return ["torch-gpu"]


def unavailable_reason(target: Target) -> Optional[str]:
    """None when every back end the target needs can run here, else the first thing missing."""
    for name in backends_for(target):
        reason = BACKENDS[name].unavailable_reason(target)
        if reason is not None:
            return reason
    return None


def build_engines(
    onnx_path: str | Path,
    out_dir: str | Path,
    target: Target | str,
    calibration: Optional[Iterable[np.ndarray]] = None,
    *,
    cache_dir: Optional[Path] = None,
) -> list[EngineArtifact]:
    """Build every artifact `target` runs from `onnx_path` into `out_dir`.

    `calibration` (float32 NCHW batches drawn from the run's data) is required for INT8 targets.
    A back end that is not installed raises `BackendUnavailableError` naming what to install.
    """
    target = load_target(target)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputError(f"no ONNX model at {onnx_path}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if calibration is not None:
        calibration = list(calibration)  # may be read by more than one back end
    artifacts = []
    for name in backends_for(target):
        backend = BACKENDS[name]()
        if backend.builds_from_onnx:
            artifacts.append(backend.build(onnx_path, out_dir, target, calibration, cache_dir=cache_dir))
    return artifacts


def load_runner(path: str | Path, target: Target | str | None = None) -> Runner:
    """Open a built engine: ``.plan``/``.engine`` with TensorRT, ``.onnx`` with ONNX Runtime.

    With a target, ONNX Runtime uses the target's providers and threads; without, the CPU.
    """
    path = Path(path)
    resolved = load_target(target) if target is not None else None
    if path.suffix in (".plan", ".engine", ".trt"):
        return TensorRTBackend().load(path, resolved)
    if path.suffix == ".onnx":
        ort_target = resolved if resolved is not None and resolved.runtime == "onnxruntime" else None
        return OnnxRuntimeBackend().load(path, ort_target)
    raise InputError(f"cannot tell which back end runs {path.name}: expected .onnx or .plan")


__all__ = [
    "BACKENDS",
    "DEFAULT_TOLERANCE",
    "Backend",
    "EngineArtifact",
    "Runner",
    "accuracy_of_runner",
    "backends_for",
    "build_engines",
    "build_torch_runner",
    "compare_with_onnxruntime",
    "load_runner",
    "unavailable_reason",
]
