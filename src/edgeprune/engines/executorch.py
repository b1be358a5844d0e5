"""ExecuTorch back end: the shrunk nn.Module through ``torch.export``, lowered to XNNPACK, as a ``.pte``.

What a phone app loads: `build` captures the module with ``torch.export`` (batch dynamic up to
the target's largest batch), quantises it for INT8 targets with PT2E and the XNNPACK quantizer
(calibrated on the run's data, like the ONNX Runtime INT8 path), lowers it with
``to_edge_transform_and_lower`` and the XNNPACK partitioner, and writes ``<model>.pte`` (or
``<model>.int8.pte``). `load` runs the file through ``executorch.runtime``, the x86 build of the
same runtime and XNNPACK kernels an Android or iOS app links. Ops XNNPACK does not take stay on
ExecuTorch's portable kernels; `build_info["portable_ops"]` names them. ExecuTorch is imported
inside functions (``pip install 'edgeprune[executorch]'``).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import (
    Backend,
    EngineArtifact,
    ModelSource,
    Runner,
    RunnerLoader,
    as_float_batch,
    onnx_sample_shape,
)
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError
from edgeprune.fileio import write_bytes_atomic, write_json_atomic
from edgeprune.targets import Target

INSTALL_HINT = "pip install 'edgeprune[executorch]'"
XNNPACK = "XnnpackBackend"


def unavailable_reason() -> Optional[str]:
    """None when executorch and its runtime are installed (checked without importing them)."""
    try:
        found = importlib.util.find_spec("executorch") is not None and \
            importlib.util.find_spec("executorch.runtime") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"executorch is not installed: {INSTALL_HINT}"
    return None


def _require_executorch() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)


def export_failure(error: BaseException) -> str:
    """Where and why ``torch.export`` refused the model, on one line: torch's reason, and the
    user's source line that raised it (torch quotes it, else the deepest frame outside torch)."""
    text = str(error)
    reason = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    reason = re.sub(r"\s*\(unhinted:.*", "", reason)
    match = re.search(r'File "([^"]+)", line (\d+), in \w+\n\s+(.+)', text)
    if match:
        where = (match.group(1), int(match.group(2)), match.group(3).strip())
    else:
        torch_dir = os.path.dirname(os.path.dirname(importlib.util.find_spec("torch").origin or ""))
        frames = [f for f in traceback.extract_tb(error.__traceback__)
                  if not f.filename.startswith(torch_dir) and f.filename != __file__]
        where = (frames[-1].filename, frames[-1].lineno, (frames[-1].line or "").strip()) if frames else None
    if where is None:
        return reason
    return f"{reason} at {Path(where[0]).name}:{where[1]} (`{where[2]}`)"


def capture(module: Any, sample_shape: tuple[int, ...], max_batch: int) -> Any:
    """``torch.export`` of an eval-mode copy, batch dynamic in [1, max_batch]; a model it cannot
    capture is refused with the op and the line, and the ONNX-built mobile target named instead."""
    import torch

    shape = tuple(int(d) for d in sample_shape)
    if not shape or any(d < 1 for d in shape):
        raise UnsupportedModelError(f"ExecuTorch needs fixed sample dimensions, got {sample_shape}")
    model = copy.deepcopy(module).eval().to("cpu", torch.float32)
    # Batch 2, not 1: an example batch of 1 would let tracing specialise the batch dimension away.
    example = (torch.zeros((2, *shape)),)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max(2, max_batch))},)
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic)
    except Exception as error:  # torch.export raises many types for code it cannot capture
        raise UnsupportedModelError(
            f"torch.export cannot capture the model for ExecuTorch: {export_failure(error)}; make that "
            "code traceable, or use --target mobile-ort (built from the ONNX file instead)"
        ) from None


def quantize_pt2e(program: Any, calibration: list[np.ndarray], max_batch: int) -> tuple[Any, dict[str, Any]]:
    """Static INT8 by PT2E with the XNNPACK quantizer (symmetric, per-channel weights), calibrated
    on `calibration`; returns the re-exported quantised program and what was done."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(torch.from_numpy(batch))
    converted = convert_pt2e(prepared)
    example = tuple(program.example_inputs[0])
    dynamic = ({0: torch.export.Dim("batch", min=1, max=max(2, max_batch))},)
    quantized = torch.export.export(converted, example, dynamic_shapes=dynamic)
    return quantized, {
        "quantization": "PT2E static, XNNPACK quantizer, symmetric int8, per-channel weights",
        "calibration_batches": len(calibration),
        "calibration_samples": int(sum(len(b) for b in calibration)),
    }


def lower_to_xnnpack(program: Any) -> tuple[bytes, dict[str, Any]]:
    """The ``.pte`` bytes of `program` lowered with the XNNPACK partitioner, and what it delegated."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    graph = edge.exported_program().graph_module.graph
    calls = [n for n in graph.nodes if n.op == "call_function"]
    delegates = sum(1 for n in calls if getattr(n.target, "__name__", "") == "executorch_call_delegate")
    portable = Counter(
        str(getattr(n.target, "_name", n.target)) for n in calls
        if getattr(n.target, "__module__", "") != "_operator"
        and getattr(n.target, "__name__", "") != "executorch_call_delegate"
        and "sym_size" not in str(n.target)
    )
    return edge.to_executorch().buffer, {"xnnpack_delegates": delegates, "portable_ops": dict(portable)}


def pte_path(source: ModelSource, target: Target, out_dir: Optional[Path] = None) -> Path:
    """``model.onnx`` -> ``model.pte`` (``model.int8.pte`` for an INT8 target)."""
    name = f"{source.stem}{'.int8' if target.precision == 'int8' else ''}.pte"
    return Path(out_dir) / name if out_dir is not None else source.beside(name[len(source.stem):])


def build_pte(module: Any, sample_shape: tuple[int, ...], path: Path, target: Target,
              calibration: Optional[list[np.ndarray]] = None) -> dict[str, Any]:
    """Capture, (quantise,) lower and write `path` atomically; return its build info."""
    _require_executorch()
    import executorch  # noqa: F401 - the version below
    import torch
    from importlib import metadata

    program = capture(module, sample_shape, target.max_batch)
    info: dict[str, Any] = {"runtime": "executorch", "executorch_version": metadata.version("executorch"),
                            "torch_version": torch.__version__, "delegate": "xnnpack",
                            "precision": target.precision}
    if target.precision == "int8":
        if not calibration:
            raise InputError(f"target {target.name} is INT8 and needs calibration batches drawn from the "
                             "training data (calibration=)")
        program, quant_info = quantize_pt2e(program, calibration, target.max_batch)
        info.update(quant_info)
    data, lowered = lower_to_xnnpack(program)
    info.update(lowered)
    write_bytes_atomic(Path(path), data)
    return info


def _threads(count: int) -> int:
    """The pool size for `count` (0 = one per available core, ExecuTorch's own default)."""
    if count > 0:
        return count
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class ExecuTorchRunner(Runner):
    """One ``.pte`` method through ``executorch.runtime``; outputs copied to NumPy.

    ExecuTorch's thread pool is one per process: loading a runner sets it to the target's thread
    count (0 = one per core), so runners of different thread counts are measured apart.
    """

    name = "executorch"
    device = "cpu"

    def __init__(self, path: Path, target: Optional[Target] = None) -> None:
        _require_executorch()
        import torch
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )
        from executorch.runtime import Runtime

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no ExecuTorch program at {self.path}")
        runtime = Runtime.get()
        if not runtime.backend_registry.is_available(XNNPACK):
            raise BackendUnavailableError(f"this executorch build has no XNNPACK backend: {INSTALL_HINT}")
        self.threads = _threads(target.intra_op_threads if target is not None else 0)
        if _threadpool_get_thread_count() != self.threads:
            _unsafe_reset_threadpool(self.threads)
        self._torch = torch
        program = runtime.load_program(self.path)
        meta = program.metadata("forward")
        # Memory is planned for the largest batch the export allowed; larger ones cannot run.
        self.max_batch_size = int(meta.input_tensor_meta(0).sizes()[0])
        self._method = program.load_method("forward")
        self._program = program
        self.precision = "int8" if self.path.name.endswith(".int8.pte") else "fp32"
        self.name = "executorch-int8" if self.precision == "int8" else "executorch"

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._method is None:
            raise InputError(f"runner for {self.path} is closed")
        array = as_float_batch(batch)
        if len(array) > (self.max_batch_size or len(array)):
            raise InputError(f"{self.path.name} runs batches of up to {self.max_batch_size}, got {len(array)}")
        outputs = self._method.execute([self._torch.from_numpy(array)])
        return outputs[0].numpy().copy()

    def close(self) -> None:
        self._method = None
        self._program = None


class ExecuTorchBackend(Backend):
    """Exports the nn.Module to ``<model>.pte`` (XNNPACK); runs it through `ExecuTorchRunner`."""

    name = "executorch"
    builds_from_onnx = False
    suffixes = (".pte",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "executorch"

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
        if source.module is None:
            raise InputError(
                f"the executorch back end builds from the nn.Module, and none was given for {source.name}: "
                f"run `edgeprune export --target {target.name}` (it writes {pte_path(source, target).name})"
            )
        batches = None
        if target.precision == "int8":
            from edgeprune.engines.ort_int8 import take_calibration

            batches = take_calibration(calibration, target.calibration_batches, target.name)
        path = pte_path(source, target, out_dir)
        info = build_pte(source.module, onnx_sample_shape(Path(source.onnx_path)), path, target, batches)
        write_json_atomic(path.with_name(path.name + ".json"), info)
        return EngineArtifact(name="executorch-int8" if target.precision == "int8" else self.name, path=path,
                              precision=target.precision, target=target.name, build_info=info)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        return ExecuTorchRunner(path, target)

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The ``.pte`` beside the ONNX file (what `build_engines` or an earlier export wrote), else
        the in-memory module exported now; an ONNX file alone is refused (it holds no torch program)."""
        path = pte_path(source, target)
        if not path.is_file():
            if source.module is not None:
                path = self.build(source, out_dir, target, calibration).path
            else:
                    raise InputError(
                        f"no {path.name} beside {Path(source.onnx_path).name}: ExecuTorch runs the model's "
                        f"torch.export program, which an ONNX file does not hold; run `edgeprune export "
                        f"--target {target.name}` to write it"
                    )
        return {source.name: lambda: self.load(path, target)}
