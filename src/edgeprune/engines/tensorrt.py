"""TensorRT back end: ONNX -> serialized ``.plan`` with a dynamic-batch profile, and a runner on it.

All TensorRT code lives here and ``tensorrt`` is imported inside functions, so ``import
edgeprune.engines`` works without it. Only API shared by TensorRT 8.5 through 11 is used: the ONNX
parser, ``set_memory_pool_limit``, ``build_serialized_network``, name-based I/O tensors
(``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``,
``set_tensor_address``) and ``execute_async_v3``. Precision: TensorRT 11 removed the FP16/INT8
builder flags and the INT8 calibrator, so where ``BuilderFlag.FP16`` exists the flags are used,
and otherwise the precision comes from the ONNX graph itself (an FP16 copy, or the Q/DQ model) in
a strongly typed network. `build_info` records which path was taken.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, Runner, as_float_batch
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.fileio import write_bytes_atomic, write_json_atomic
from edgeprune.targets import Target

INSTALL_HINT = "pip install tensorrt (x86-64 + CUDA 12), or use JetPack's python3-libnvinfer on Jetson"


@dataclass(frozen=True)
class PrecisionPlan:
    """How a precision is reached on this TensorRT: builder flags, or types carried by the ONNX graph."""

    precision: str
    builder_flags: tuple[str, ...]
    strongly_typed: bool
    onnx_variant: str  # "fp32" (as exported), "fp16" (converted copy) or "qdq" (INT8 Q/DQ model)
    path: str  # a short label for build_info and reports

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "builder_flags": list(self.builder_flags),
            "strongly_typed": self.strongly_typed,
            "onnx_variant": self.onnx_variant,
            "precision_path": self.path,
        }


def precision_plan(trt: Any, precision: str) -> PrecisionPlan:
    """Pick the precision path from what the installed `trt` module offers (pure; testable with a fake)."""
    flags = getattr(trt, "BuilderFlag", None)
    has_fp16_flag = hasattr(flags, "FP16")
    has_int8_flag = hasattr(flags, "INT8")
    if precision == "fp32":
        # Without weak typing (TensorRT 11) every network is strongly typed; FP32 ONNX stays FP32.
        return PrecisionPlan("fp32", (), not has_fp16_flag, "fp32", "fp32 onnx graph")
    if precision == "fp16":
        if has_fp16_flag:
            return PrecisionPlan("fp16", ("FP16",), False, "fp32", "builder flag FP16")
        return PrecisionPlan("fp16", (), True, "fp16", "strongly typed fp16 onnx graph")
    if precision == "int8":
        if has_int8_flag:
            extra = ("FP16",) if has_fp16_flag else ()
            return PrecisionPlan(
                "int8", ("INT8", *extra), False, "qdq", "builder flag INT8 with Q/DQ onnx graph"
            )
        return PrecisionPlan("int8", (), True, "qdq", "strongly typed Q/DQ onnx graph")
    raise InputError(f"TensorRT cannot build precision {precision!r}; use fp32, fp16 or int8")


def tensorrt_major(trt: Any) -> int:
    match = re.match(r"(\d+)", str(getattr(trt, "__version__", "0")))
    return int(match.group(1)) if match else 0


def network_flags(trt: Any, strongly_typed: bool) -> int:
    """EXPLICIT_BATCH where TensorRT < 10 requires it; STRONGLY_TYPED where the plan needs it and it exists."""
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = 0
    if tensorrt_major(trt) < 10 and hasattr(creation, "EXPLICIT_BATCH"):
        flags |= 1 << int(creation.EXPLICIT_BATCH)
    if strongly_typed and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    return flags


def profile_shapes(target: Target, sample_shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes: the target's smallest, first and largest batch sizes."""
    sample = tuple(int(d) for d in sample_shape)
    if not sample or any(d < 1 for d in sample):
        raise UnsupportedModelError(
            f"TensorRT needs fixed non-batch input dimensions, the model has {sample_shape}; "
            "export with a fixed image size"
        )
    return tuple((batch, *sample) for batch in (target.min_batch, target.opt_batch, target.max_batch))


def timing_cache_file(cache_dir: Path, trt_version: str, gpu_name: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU model: timings from another GPU are wrong here."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu_name}-sm{compute_capability}-trt{trt_version}").strip("-")
    return Path(cache_dir) / f"timing-{slug}.cache"


def default_cache_dir() -> Path:
    root = os.environ.get("EDGEPRUNE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "edgeprune"
    )
    return Path(root).expanduser() / "tensorrt"


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as error:
        raise BackendUnavailableError(f"tensorrt is not installed: {INSTALL_HINT}") from error
    return tensorrt


def cuda_device_info() -> dict[str, str]:
    """GPU name and compute capability through torch (already a dependency); raises when there is no GPU."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(
            "TensorRT needs an NVIDIA GPU, and CUDA is not available here (no GPU or no driver)"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu_name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def convert_to_fp16(onnx_path: Path, out_path: Path) -> Path:
    """An FP16 copy of the graph with FP32 inputs and outputs, for strongly typed FP16 builds."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    write_bytes_atomic(Path(out_path), model.SerializeToString())
    return Path(out_path)


def _sample_shape(onnx_path: Path) -> tuple[int, ...]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])


class TensorRTBackend(Backend):
    """Builds ``<model>.<target>.plan`` from ONNX; loads it into a `TensorRTRunner`."""

    name = "tensorrt"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        import importlib.util

        if importlib.util.find_spec("tensorrt") is None:
            return f"tensorrt is not installed: {INSTALL_HINT}"
        try:
            cuda_device_info()
        except BackendUnavailableError as error:
            return str(error)
        return None

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        trt = import_tensorrt()
        device = cuda_device_info()
        onnx_path, out_dir = Path(onnx_path), Path(out_dir)
        plan = precision_plan(trt, target.precision)
        stem = onnx_path.name.removesuffix(".onnx")
        info: dict[str, Any] = {
            "runtime": "tensorrt",
            "tensorrt_version": trt.__version__,
            **device,
            **plan.to_dict(),
        }

        model_path = onnx_path
        if plan.onnx_variant == "fp16":
            model_path = convert_to_fp16(onnx_path, out_dir / f"{stem}.fp16.onnx")
        elif plan.onnx_variant == "qdq":
            from edgeprune.engines.ort_int8 import quantize_qdq, take_calibration

            batches = take_calibration(calibration, target.calibration_batches, target.name)
            model_path = out_dir / f"{stem}.int8-trt.onnx"
            info["quantization"] = quantize_qdq(onnx_path, model_path, batches, symmetric_activations=True)
        info["built_from"] = model_path.name

        shapes = profile_shapes(target, _sample_shape(onnx_path))
        cache_file = timing_cache_file(
            cache_dir or default_cache_dir(),
            trt.__version__,
            device["gpu_name"],
            device["compute_capability"],
        )
        serialized, timing_cache = _build_serialized(trt, model_path, target, plan, shapes, cache_file, info)
        plan_path = out_dir / f"{stem}.{target.name}.plan"
        write_bytes_atomic(plan_path, serialized)
        write_bytes_atomic(cache_file, timing_cache)
        info["timing_cache"] = str(cache_file)
        info["profile"] = {"min": list(shapes[0]), "opt": list(shapes[1]), "max": list(shapes[2])}
        # A plan does not say how it was built; the sidecar lets a later load (or a bundle) know.
        write_json_atomic(sidecar_path(plan_path), info)
        return EngineArtifact(
            name=self.name, path=plan_path, precision=target.precision, target=target.name, build_info=info
        )

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        return TensorRTRunner(path, precision=target.precision if target is not None else None)


def sidecar_path(plan_path: Path) -> Path:
    return Path(plan_path).with_name(Path(plan_path).name + ".json")


def collecting_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps warnings and errors for our messages instead of printing them."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{getattr(severity, 'name', severity)}: {msg}")

        def errors(self, last: int = 3) -> str:
            found = [m for m in self.messages if "ERROR" in m.split(":", 1)[0]]
            return " | ".join(found[-last:]) or "no error was logged"

    return CollectingLogger()


def _build_serialized(
    trt: Any,
    model_path: Path,
    target: Target,
    plan: PrecisionPlan,
    shapes: tuple[tuple[int, ...], ...],
    cache_file: Path,
    info: dict[str, Any],
) -> tuple[bytes, bytes]:
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan.strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UnsupportedModelError(f"TensorRT's ONNX parser rejected {model_path.name}: {errors}")

    config = builder.create_builder_config()
    if target.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mb << 20)
    if hasattr(config, "builder_optimization_level"):  # TensorRT >= 8.6
        config.builder_optimization_level = target.builder_optimization_level
        info["builder_optimization_level"] = target.builder_optimization_level
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if target.dla_core is not None:
        if builder.num_DLA_cores <= target.dla_core:
            raise BackendUnavailableError(
                f"target {target.name} asks for DLA core {target.dla_core}, this device has {builder.num_DLA_cores}"
            )
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = target.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        info["dla_core"] = target.dla_core

    profile = builder.create_optimization_profile()
    input_name = network.get_input(0).name
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)

    cached = cache_file.read_bytes() if cache_file.is_file() else b""
    info["timing_cache_reused"] = bool(cached)
    timing_cache = config.create_timing_cache(cached)
    config.set_timing_cache(timing_cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedModelError(
            f"TensorRT could not build an engine from {model_path.name} for {target.name}: {logger.errors()}"
        )
    info["tensorrt_warnings"] = [m for m in logger.messages if m.startswith("WARNING")][-10:]
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize()))


_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "BF16": "bfloat16",
}


class TensorRTRunner(Runner):
    """Deserialises a ``.plan`` and runs it with ``execute_async_v3`` on torch-allocated device buffers."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, precision: Optional[str] = None) -> None:
        import json

        import torch

        trt = import_tensorrt()
        cuda_device_info()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no TensorRT engine at {self.path}")
        self._trt, self._torch = trt, torch
        self._logger = collecting_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} could not load {self.path.name} ({self._logger.errors(1)}): engines "
                "only load on the TensorRT version and GPU model that built them; rebuild it here"
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedModelError(
                f"expected one input and one output, the engine has {inputs} and {outputs}"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._input_dtype = self._torch_dtype(self.input_name)
        self._output_dtype = self._torch_dtype(self.output_name)
        self.max_batch_size = int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        sidecar = sidecar_path(self.path)
        if precision is None and sidecar.is_file():
            precision = json.loads(sidecar.read_text()).get("precision")
        self.precision = precision or "unknown"
        self._stream = torch.cuda.Stream()

    def _torch_dtype(self, name: str) -> Any:
        dtype_name = getattr(self._engine.get_tensor_dtype(name), "name", "FLOAT")
        return getattr(self._torch, _TORCH_DTYPES.get(dtype_name, "float32"))

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._context is None:
            raise InputError(f"runner for {self.path} is closed")
        batch = as_float_batch(batch)
        if batch.shape[0] > self.max_batch_size:
            raise InputError(
                f"batch {batch.shape[0]} exceeds the engine's profile maximum {self.max_batch_size}"
            )
        torch = self._torch
        with torch.cuda.stream(self._stream):
            device_input = (
                torch.from_numpy(batch).to("cuda", non_blocking=False).to(self._input_dtype).contiguous()
            )
            if not self._context.set_input_shape(self.input_name, tuple(device_input.shape)):
                raise InputError(f"input shape {tuple(device_input.shape)} is outside the engine's profile")
            output = torch.empty(
                tuple(self._context.get_tensor_shape(self.output_name)),
                dtype=self._output_dtype,
                device="cuda",
            )
            self._context.set_tensor_address(self.input_name, device_input.data_ptr())
            self._context.set_tensor_address(self.output_name, output.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendUnavailableError(f"TensorRT execute_async_v3 failed: {self._logger.errors()}")
            self._stream.synchronize()
        return output.float().cpu().numpy()

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None
