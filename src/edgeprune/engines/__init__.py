"""Engines: one interface, several back ends, chosen by the target.

``BACKENDS`` maps a name to a back-end class, the way ONNX Runtime names execution providers.
Each back end says which targets it serves and which files it loads, so nothing here (or in the
pipeline) branches on the runtime: `build_engines` builds what a target runs, `load_runner` opens
a built file, and `bench_loaders` gives what a benchmark of a target runs for each model, built
or found beside its ONNX file. A runner whose device is not the target's is refused, so a CPU
measurement never carries a GPU target's name. Importing this package imports neither tensorrt
nor torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from edgeprune.engines.base import (
    DEFAULT_TOLERANCE,
    Backend,
    EngineArtifact,
    ModelSource,
    Runner,
    RunnerLoader,
    accuracy_of_runner,
    compare_with_onnxruntime,
)
from edgeprune.engines.executorch import ExecuTorchBackend
from edgeprune.engines.onnxruntime import OnnxRuntimeBackend
from edgeprune.engines.openvino import OpenVinoBackend
from edgeprune.engines.ort_int8 import OnnxRuntimeInt8Backend
from edgeprune.engines.ort_mobile import OrtMobileBackend
from edgeprune.engines.tensorrt import TensorRTBackend
from edgeprune.engines.torch_gpu import TorchGpuBackend, build_torch_runner
from edgeprune.errors import BackendUnavailableError, InputError
from edgeprune.targets import Target, load_target

BACKENDS: dict[str, type[Backend]] = {
    OnnxRuntimeBackend.name: OnnxRuntimeBackend,
    OnnxRuntimeInt8Backend.name: OnnxRuntimeInt8Backend,
    TensorRTBackend.name: TensorRTBackend,
    TorchGpuBackend.name: TorchGpuBackend,
    ExecuTorchBackend.name: ExecuTorchBackend,
    OrtMobileBackend.name: OrtMobileBackend,
    OpenVinoBackend.name: OpenVinoBackend,
}


def backend_for(target: Target | str) -> type[Backend]:
    """The one registered back end that serves `target`."""
    target = load_target(target)
    serving = [cls for cls in BACKENDS.values() if cls.serves(target)]
    if len(serving) != 1:
        raise InputError(
            f"target {target.name} ({target.runtime}, {target.precision}) is served by "
            f"{len(serving)} back ends ({', '.join(c.name for c in serving) or 'none'}); expected one"
        )
    return serving[0]


def backends_for(target: Target) -> list[str]:
    """The names of the back ends a target runs, in build order."""
    return [backend_for(target).name]


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
    module: Any = None,
) -> list[EngineArtifact]:
    """Build every artifact `target` runs from `onnx_path` (and `module`, for back ends that
    export the nn.Module) into `out_dir`.

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
    source = ModelSource("model", onnx_path, module)
    artifacts = []
    for name in backends_for(target):
        backend = BACKENDS[name]()
        if backend.builds_from_onnx or module is not None:
            artifacts.append(backend.build(source, out_dir, target, calibration, cache_dir=cache_dir))
    return artifacts


def check_runs_on_target(runner: Runner, target: Target) -> Runner:
    """`runner`, when it runs on the kind of device `target` names; refused otherwise."""
    wanted = "cpu" if target.device == "cpu" else "cuda"
    if runner.device != wanted:
        runner.close()
        raise BackendUnavailableError(
            f"{runner.name} runs on {runner.device}, but target {target.name} is a {target.device} target; "
            "refusing to measure one under the other's name"
        )
    return runner


def load_runner(path: str | Path, target: Target | str | None = None) -> Runner:
    """Open a built engine with the back end that loads its suffix (``.onnx``, ``.plan``, ``.pt2``,
    ``.pte``, ``.ort``, ``.xml``).

    With a target, the file must be what that target's back end runs (an ``.onnx`` file is not a
    TensorRT target's engine) and the runner must run on the target's device.
    """
    path = Path(path)
    if target is None:
        for cls in BACKENDS.values():
            if path.suffix in cls.suffixes:
                return cls().load(path, None)
        known = sorted({s for cls in BACKENDS.values() for s in cls.suffixes})
        raise InputError(f"cannot tell which back end runs {path.name}: expected one of {', '.join(known)}")
    resolved = load_target(target)
    cls = backend_for(resolved)
    if path.suffix not in cls.suffixes:
        raise InputError(
            f"{path.name} is not an engine for {resolved.name}: its back end ({cls.name}) loads "
            f"{', '.join(cls.suffixes)}; `edgeprune bench` on the export folder builds or finds it"
        )
    return check_runs_on_target(cls().load(path, resolved), resolved)


def bench_loaders(
    target: Target | str,
    sources: Sequence[ModelSource],
    out_dir: Path,
    *,
    calibration: Optional[list[np.ndarray]] = None,
    cache_dir: Optional[Path] = None,
) -> dict[str, RunnerLoader]:
    """Loaders of what `target` runs for each model, labelled ("dense", "pruned", "pruned-int8"),
    in order. Engines found beside a model's ONNX file are used; missing ones are built into
    `out_dir` now. Raises `BackendUnavailableError` where the target's runtime cannot run here."""
    target = load_target(target)
    cls = backend_for(target)
    reason = cls.unavailable_reason(target)
    if reason is not None:
        raise BackendUnavailableError(f"cannot run target {target.name} here: {reason}")
    backend = cls()
    loaders: dict[str, RunnerLoader] = {}
    for source in sources:
        found = backend.bench_loaders(source, target, Path(out_dir), calibration=calibration, cache_dir=cache_dir)
        for label, load in found.items():
            loaders[label] = lambda load=load: check_runs_on_target(load(), target)
    return loaders


__all__ = [
    "BACKENDS",
    "DEFAULT_TOLERANCE",
    "Backend",
    "EngineArtifact",
    "ModelSource",
    "Runner",
    "RunnerLoader",
    "accuracy_of_runner",
    "backend_for",
    "backends_for",
    "bench_loaders",
    "build_engines",
    "build_torch_runner",
    "check_runs_on_target",
    "compare_with_onnxruntime",
    "load_runner",
    "unavailable_reason",
]
