"""ONNX Runtime back end: sessions configured from the target, on CPU, CUDA, TensorRT EP or OpenVINO.

A requested GPU provider that is missing is an error, never a silent fall back to the CPU: a
benchmark labelled "cuda" that ran on the CPU would be worse than no benchmark. Providers that
compile subgraphs into their own nodes (TensorRT EP, OpenVINO) cannot have the optimised graph
saved (ONNX Runtime refuses: "Unable to serialize model as it contains compiled nodes"), so only
providers that run ONNX Runtime's own kernels get an ``.opt.onnx`` beside the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, ModelSource, Runner, RunnerLoader, as_float_batch
from edgeprune.errors import BackendUnavailableError, InputError
from edgeprune.targets import Target

_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_INSTALL_HINT = {
    "CUDAExecutionProvider": "pip install onnxruntime-gpu (and an NVIDIA driver with CUDA 12)",
    "TensorrtExecutionProvider": "pip install onnxruntime-gpu and the TensorRT libraries (pip install tensorrt)",
    "OpenVINOExecutionProvider": "pip install onnxruntime-openvino",
}
#: Providers that run ONNX Runtime's own kernels; every other one may compile nodes, which makes
#: the optimised graph unsaveable. An allow-list, so an unknown provider is never asked to save.
SERIALIZABLE_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")


def _ort():
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - onnxruntime is a core dependency
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from error
    return onnxruntime


def missing_providers(target: Optional[Target]) -> list[str]:
    """The target's execution providers that this onnxruntime build does not have."""
    if target is None or target.runtime != "onnxruntime":
        return []
    available = set(_ort().get_available_providers())
    return [p for p in target.execution_providers if p not in available]


def saves_optimized_model(target: Optional[Target]) -> bool:
    """True when every provider of `target` lets ONNX Runtime serialise the optimised graph."""
    providers = target.execution_providers if target is not None else ("CPUExecutionProvider",)
    return all(p in SERIALIZABLE_PROVIDERS for p in providers)


def session_options(target: Optional[Target], optimized_model_path: Optional[Path] = None) -> Any:
    """SessionOptions from the target: threads, graph optimisation level, and where to save the
    optimised graph (ignored where the target's providers compile nodes; see the module docstring)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if target is not None:
        options.intra_op_num_threads = target.intra_op_threads
        options.inter_op_num_threads = target.inter_op_threads
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[target.graph_optimization_level]
        )
    if optimized_model_path is not None and saves_optimized_model(target):
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def provider_list(target: Optional[Target], cache_dir: Optional[Path] = None) -> list[Any]:
    """Providers with options in priority order; raises when one the target asks for is missing."""
    if target is None or target.runtime != "onnxruntime":
        return ["CPUExecutionProvider"]
    missing = missing_providers(target)
    if missing:
        hint = _INSTALL_HINT.get(missing[0], "install an onnxruntime build that has it")
        raise BackendUnavailableError(
            f"target {target.name} needs {missing[0]}, which this onnxruntime does not have: {hint}"
        )
    providers: list[Any] = []
    for name in target.execution_providers:
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {"trt_engine_cache_enable": True}
            if cache_dir is not None:
                options["trt_engine_cache_path"] = str(cache_dir)
            if target.workspace_mb:
                options["trt_max_workspace_size"] = target.workspace_mb << 20
            providers.append((name, options))
        else:
            providers.append(name)
    return providers


def create_session(
    path: Path,
    target: Optional[Target],
    *,
    optimized_model_path: Optional[Path] = None,
    cache_dir: Optional[Path] = None,
) -> Any:
    ort = _ort()
    providers = provider_list(target, cache_dir)
    session = ort.InferenceSession(
        str(path), session_options(target, optimized_model_path), providers=providers
    )
    wanted = target.execution_providers[0] if target is not None and target.runtime == "onnxruntime" else None
    if wanted and wanted not in session.get_providers():
        # ORT falls back to the CPU when, say, the CUDA libraries fail to load; refuse that here.
        raise BackendUnavailableError(
            f"onnxruntime could not start {wanted} (it fell back to {session.get_providers()[0]}): "
            f"{_INSTALL_HINT.get(wanted, 'check the provider installation')}"
        )
    return session


def is_quantized(path: Path) -> bool:
    """True when the model holds QuantizeLinear/DequantizeLinear nodes (the INT8 QDQ path's output)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


class OnnxRuntimeRunner(Runner):
    """An InferenceSession behind the `Runner` interface."""

    def __init__(
        self,
        path: Path,
        target: Optional[Target] = None,
        *,
        precision: Optional[str] = None,
        name: Optional[str] = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no ONNX model at {self.path}")
        self._session = create_session(self.path, target)
        self.precision = precision or ("int8" if is_quantized(self.path) else "fp32")
        self.name = name or ("onnxruntime-int8" if self.precision == "int8" else "onnxruntime")
        provider = self._session.get_providers()[0]
        self.providers = list(self._session.get_providers())
        self.device = "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        # The CPU and CUDA providers run the graph's nodes; the TensorRT provider compiles its own
        # engine, and an ORT-format file (ONNX Runtime Mobile) is not an ONNX graph to read.
        runs_the_graph = provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
        self.graph_file = self.path if runs_the_graph and self.path.suffix == ".onnx" else None
        model_input = self._session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_shape = tuple(model_input.shape)
        self.output_name = self._session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise InputError(f"runner for {self.path} is closed")
        return self._session.run([self.output_name], {self.input_name: as_float_batch(batch)})[0]

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(Backend):
    """FP32 ONNX on ONNX Runtime; "building" checks the session and saves the optimised graph beside."""

    name = "onnxruntime"
    suffixes = (".onnx",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "onnxruntime" and target.precision != "int8"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        try:
            missing = missing_providers(target)
        except BackendUnavailableError as error:
            return str(error)
        if missing:
            return f"{missing[0]} missing: {_INSTALL_HINT.get(missing[0], 'install an onnxruntime build that has it')}"
        return None

    def build(
        self,
        source: ModelSource,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        return build_session_artifact(self.name, Path(source.onnx_path), Path(out_dir), target, "fp32", {}, cache_dir)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
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
        return {source.name: lambda: self.load(source.onnx_path, target)}


def build_session_artifact(
    name: str,
    model_path: Path,
    out_dir: Path,
    target: Target,
    precision: str,
    extra_info: dict[str, Any],
    cache_dir: Optional[Path],
) -> EngineArtifact:
    """Open a session once (this is where ORT optimises the graph), keep the optimised copy, describe it."""
    ort = _ort()
    out_dir.mkdir(parents=True, exist_ok=True)
    optimized = out_dir / f"{model_path.name.removesuffix('.onnx')}.{target.name}.opt.onnx"
    tmp = optimized.with_name(f".{optimized.name}.tmp")
    session = create_session(
        model_path, target, optimized_model_path=tmp, cache_dir=cache_dir or out_dir / "trt-ep-cache"
    )
    if tmp.exists():
        os.replace(tmp, optimized)
    info = {
        "runtime": "onnxruntime",
        "onnxruntime_version": ort.__version__,
        "providers": list(session.get_providers()),
        "intra_op_threads": target.intra_op_threads,
        "inter_op_threads": target.inter_op_threads,
        "graph_optimization_level": target.graph_optimization_level,
        # Saved with every optimisation on, this copy may only run on this kind of machine.
        "optimized_model": optimized.name if optimized.exists() else None,
        **({} if saves_optimized_model(target) else {
            "optimized_model_note": "not saved: the target's providers compile nodes, which ONNX Runtime "
            "cannot serialise"}),
        **extra_info,
    }
    return EngineArtifact(
        name=name, path=model_path, precision=precision, target=target.name, build_info=info
    )
