"""PyTorch on the GPU: the shrunk nn.Module's own graph, in FP16 (or FP32), replayed through CUDA graphs.

Like the other back ends it builds a file and loads it: `build` exports the nn.Module with
``torch.export`` (dynamic batch) to ``<model>.<target>.pt2`` beside the ONNX file, and `load`
opens that program with ``torch.export.load``, so an export folder can be benchmarked later
without the Python class that defined the model. The ONNX file cannot stand in for it (it does
not hold a torch program), so a folder without the ``.pt2`` is refused, never run elsewhere.
One CUDA graph is captured per input shape on first use; later calls copy the batch into the
captured input and replay, which removes Python and kernel-launch overhead the way a deployed
CUDA-graph server would.
"""

from __future__ import annotations

import copy
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
from edgeprune.fileio import write_json_atomic
from edgeprune.targets import Target

_WARMUP_ITERATIONS = 3


def cuda_unavailable_reason() -> Optional[str]:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "torch is not installed: pip install torch"
    if not torch.cuda.is_available():
        return "CUDA is not available (no NVIDIA GPU, no driver, or a CPU-only torch build)"
    return None


class TorchGpuRunner(Runner):
    """The module on CUDA in the target's precision; one captured CUDA graph per input shape.

    `module` must already be in eval mode (an exported program's module is; it refuses ``.eval()``).
    """

    name = "torch-gpu"
    device = "cuda"

    def __init__(self, module: Any, precision: str = "fp16", *, use_cuda_graphs: bool = True) -> None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"the torch-gpu back end needs CUDA: {reason}")
        import torch

        if precision not in ("fp16", "fp32"):
            raise InputError(f"the torch-gpu back end runs fp16 or fp32, not {precision}")
        self._torch = torch
        self.precision = precision
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._model = module.to(device="cuda", dtype=self._dtype)
        self._use_cuda_graphs = use_cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def _capture(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        torch = self._torch
        static_input = torch.zeros(shape, dtype=self._dtype, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(_WARMUP_ITERATIONS):  # warm up cuDNN autotuning outside the graph
                self._model(static_input)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            static_output = self._model(static_input)
        return graph, static_input, static_output

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._model is None:
            raise InputError("torch-gpu runner is closed")
        torch = self._torch
        host = torch.from_numpy(as_float_batch(batch))
        if not self._use_cuda_graphs:
            with torch.no_grad():
                return self._model(host.to("cuda", self._dtype)).float().cpu().numpy()
        shape = tuple(host.shape)
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(shape)
        graph, static_input, static_output = self._graphs[shape]
        static_input.copy_(host)
        graph.replay()
        return static_output.float().cpu().numpy()  # .cpu() waits for the replay to finish

    def close(self) -> None:
        self._graphs.clear()
        self._model = None
        if cuda_unavailable_reason() is None:
            self._torch.cuda.empty_cache()


def build_torch_runner(module: Any, target: Target, *, use_cuda_graphs: bool = True) -> TorchGpuRunner:
    """A runner on an in-memory module (an eval-mode copy; the caller's module is untouched)."""
    if target.runtime != "torch":
        raise InputError(f"target {target.name} runs {target.runtime}, not torch; use build_engines for it")
    return TorchGpuRunner(copy.deepcopy(module).eval(), target.precision, use_cuda_graphs=use_cuda_graphs)


def export_program(module: Any, sample_shape: tuple[int, ...], path: Path) -> dict[str, Any]:
    """Save the module's graph with ``torch.export`` (batch dimension dynamic) to `path`, atomically."""
    import torch

    shape = tuple(int(d) for d in sample_shape)
    if not shape or any(d < 1 for d in shape):
        raise UnsupportedModelError(f"the torch-gpu back end needs fixed sample dimensions, got {sample_shape}")
    model = copy.deepcopy(module).eval().to("cpu", torch.float32)
    # Batch 2, not 1: an example batch of 1 would let tracing specialise the batch dimension away.
    example = torch.zeros((2, *shape))
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as error:  # torch.export raises many types for untraceable code
        raise UnsupportedModelError(
            f"torch.export cannot export the model for the torch-gpu back end ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); use a TensorRT or ONNX Runtime target"
        ) from None
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")  # torch.export.save wants the .pt2 suffix
    torch.export.save(program, str(tmp))
    tmp.replace(path)
    return {"runtime": "torch", "torch_version": torch.__version__, "format": "torch.export program, dynamic batch"}


def program_path(source: ModelSource, target: Target, out_dir: Optional[Path] = None) -> Path:
    name = f"{source.stem}.{target.name}.pt2"
    return Path(out_dir) / name if out_dir is not None else source.beside(f".{target.name}.pt2")


class TorchGpuBackend(Backend):
    """Exports the nn.Module to ``<model>.<target>.pt2``; runs it on CUDA through `TorchGpuRunner`."""

    name = "torch-gpu"
    builds_from_onnx = False
    suffixes = (".pt2",)

    @classmethod
    def serves(cls, target: Target) -> bool:
        return target.runtime == "torch"

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        return cuda_unavailable_reason()

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
                f"the torch-gpu back end builds from the nn.Module, and none was given for {source.name}: "
                f"run `edgeprune export --target {target.name}` (it writes {source.stem}.{target.name}.pt2)"
            )
        path = program_path(source, target, out_dir)
        info = export_program(source.module, onnx_sample_shape(Path(source.onnx_path)), path)
        info["precision"] = target.precision
        write_json_atomic(path.with_name(path.name + ".json"), info)
        return EngineArtifact(name=self.name, path=path, precision=target.precision, target=target.name,
                              build_info=info)

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise BackendUnavailableError(f"the torch-gpu back end needs CUDA: {reason}")
        import torch

        path = Path(path)
        if not path.is_file():
            raise InputError(f"no torch program at {path}")
        module = torch.export.load(str(path)).module()
        return TorchGpuRunner(module, target.precision if target is not None else "fp16")

    def bench_loaders(
        self,
        source: ModelSource,
        target: Target,
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """The in-memory module exported now, or the program an earlier export left beside the ONNX."""
        if source.module is not None:
            path = self.build(source, out_dir, target).path
        else:
            path = program_path(source, target)
            if not path.is_file():
                raise InputError(
                    f"no {path.name} beside {Path(source.onnx_path).name}: the torch-gpu back end runs the "
                    f"model's torch program, which an ONNX file does not hold; run `edgeprune export "
                    f"--target {target.name}` to write it"
                )
        return {source.name: lambda: self.load(path, target)}
