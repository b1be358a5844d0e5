"""TensorRT back end: ONNX -> serialized ``.plan``; the runner is in `tensorrt_runner`.

A GPU engine has one dynamic-batch profile (the target's smallest, first and largest batch). A
DLA engine has one static profile per batch size, because DLA has no dynamic dimensions; layers
the DLA cannot run fall back to the GPU, and `build_info["dla_layers"]` records how many did.
``tensorrt`` is imported inside functions, so ``import edgeprune.engines`` works without it.
Only API shared by TensorRT 8.5 through 11 is used (written against TensorRT 10): the ONNX
parser, ``set_memory_pool_limit``, ``build_serialized_network`` and optimisation profiles.
Precision: TensorRT 11 removed the FP16/INT8 builder flags and the INT8 calibrator, so where
``BuilderFlag.FP16`` exists the flags are used, and otherwise the precision comes from the ONNX
graph itself (an FP16 copy, or the Q/DQ model) in
a strongly typed network. `build_info` records which path was taken.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import (
    Backend,
    EngineArtifact,
    ModelSource,
    Runner,
    RunnerLoader,
    onnx_sample_shape,
)
from edgeprune.engines.tensorrt_logger import shared_logger
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


Shape = tuple[int, ...]


def _fixed_sample(sample_shape: tuple[int, ...]) -> Shape:
    sample = tuple(int(d) for d in sample_shape)
    if not sample or any(d < 1 for d in sample):
        raise UnsupportedModelError(
            f"TensorRT needs fixed non-batch input dimensions, the model has {sample_shape}; "
            "export with a fixed image size"
        )
    return sample


def profile_shapes(target: Target, sample_shape: tuple[int, ...]) -> tuple[Shape, Shape, Shape]:
    """(min, opt, max) input shapes: the target's smallest, first and largest batch sizes."""
    sample = _fixed_sample(sample_shape)
    return tuple((batch, *sample) for batch in (target.min_batch, target.opt_batch, target.max_batch))


def optimization_profiles(target: Target, sample_shape: tuple[int, ...]) -> tuple[tuple[Shape, Shape, Shape], ...]:
    """The engine's profiles: one dynamic (min, opt, max) on the GPU; on DLA, which supports no
    dynamic dimensions, one static profile (min = opt = max) per batch size, smallest first."""
    if target.dla_core is None:
        return (profile_shapes(target, sample_shape),)
    sample = _fixed_sample(sample_shape)
    return tuple(((b, *sample),) * 3 for b in sorted(target.batch_sizes))


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


def plan_matches_here(plan_path: Path, trt_version: str, gpu_name: str) -> bool:
    """True when the plan's sidecar says it was built by this TensorRT on this GPU model (a plan
    loads nowhere else)."""
    sidecar = sidecar_path(plan_path)
    if not (Path(plan_path).is_file() and sidecar.is_file()):
        return False
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return info.get("tensorrt_version") == trt_version and info.get("gpu_name") == gpu_name


class TensorRTBackend(Backend):
    """Builds ``<model>.<target>.plan`` from ONNX; loads it into a `TensorRTRunner`."""

    name = "tensorrt"
    suffixes = (".plan", ".engine", ".trt")

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "tensorrt"

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
        source: ModelSource,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        trt = import_tensorrt()
        device = cuda_device_info()
        onnx_path, out_dir = Path(source.onnx_path), Path(out_dir)
        plan = precision_plan(trt, target.precision)
        stem = source.stem
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

        profiles = optimization_profiles(target, onnx_sample_shape(onnx_path))
        cache_file = timing_cache_file(
            cache_dir or default_cache_dir(),
            trt.__version__,
            device["gpu_name"],
            device["compute_capability"],
        )
        serialized, timing_cache = _build_serialized(trt, model_path, target, plan, profiles, cache_file, info)
        plan_path = out_dir / f"{stem}.{target.name}.plan"
        write_bytes_atomic(plan_path, serialized)
        write_bytes_atomic(cache_file, timing_cache)
        info["timing_cache"] = str(cache_file)
        info["profiles"] = [{"min": list(a), "opt": list(b), "max": list(c)} for a, b, c in profiles]
        # A plan does not say how it was built; the sidecar lets a later load (or a bundle) know.
        write_json_atomic(sidecar_path(plan_path), info)
        return EngineArtifact(
            name=self.name, path=plan_path, precision=target.precision, target=target.name, build_info=info
        )

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        from edgeprune.engines.tensorrt_runner import TensorRTRunner, TorchCudaDevice

        trt = import_tensorrt()
        cuda_device_info()
        return TensorRTRunner(
            path,
            precision=target.precision if target is not None else None,
            dla_core=target.dla_core if target is not None else None,
            trt=trt,
            device=TorchCudaDevice(),
        )

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The plan beside the ONNX file when this TensorRT on this GPU built it, else one built now."""
        trt = import_tensorrt()
        device = cuda_device_info()
        plan = source.beside(f".{target.name}.plan")
        if not plan_matches_here(plan, trt.__version__, device["gpu_name"]):
            if target.precision == "int8" and calibration is None:
                raise InputError(
                    f"no {target.name} plan for {source.name} built by TensorRT {trt.__version__} on "
                    f"{device['gpu_name']} beside {Path(source.onnx_path).name}, and an INT8 build needs "
                    f"calibration data: run `edgeprune export --target {target.name}` on this machine"
                )
            plan = self.build(source, out_dir, target, calibration, cache_dir=cache_dir).path
        return {source.name: lambda: self.load(plan, target)}


def sidecar_path(plan_path: Path) -> Path:
    return Path(plan_path).with_name(Path(plan_path).name + ".json")


def dla_layer_counts(trt: Any, network: Any, config: Any) -> dict[str, Any]:
    """How many of the network's layers the builder places on DLA and how many fall back to the
    GPU (``IBuilderConfig.can_run_on_DLA`` per layer, asked with the DLA configuration set)."""
    on_gpu = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not config.can_run_on_DLA(layer):
            on_gpu.append(layer.name)
    total = int(network.num_layers)
    return {
        "network_layers": total,
        "on_dla": total - len(on_gpu),
        "on_gpu": len(on_gpu),
        "gpu_fallback_layers": on_gpu[:20],
        "method": "IBuilderConfig.can_run_on_DLA per network layer",
    }


def _build_serialized(
    trt: Any,
    model_path: Path,
    target: Target,
    plan: PrecisionPlan,
    profiles: tuple[tuple[Shape, Shape, Shape], ...],
    cache_file: Path,
    info: dict[str, Any],
) -> tuple[bytes, bytes]:
    logger = shared_logger(trt)
    mark = logger.collected.mark()
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
        info["dla_layers"] = dla_layer_counts(trt, network, config)

    input_name = network.get_input(0).name
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, *shapes)
        config.add_optimization_profile(profile)

    cached = cache_file.read_bytes() if cache_file.is_file() else b""
    info["timing_cache_reused"] = bool(cached)
    timing_cache = config.create_timing_cache(cached)
    config.set_timing_cache(timing_cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedModelError(
            f"TensorRT could not build an engine from {model_path.name} for {target.name}: "
            f"{logger.collected.errors(mark)}"
        )
    info["tensorrt_warnings"] = [m for m in logger.collected.since(mark) if m.startswith("WARNING")][-10:]
    return bytes(memoryview(serialized)), bytes(memoryview(config.get_timing_cache().serialize()))
