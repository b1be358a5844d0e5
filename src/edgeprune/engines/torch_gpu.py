"""PyTorch on the GPU: the shrunk nn.Module itself, in FP16 (or FP32), replayed through CUDA graphs.

This back end runs the module, not a file built from ONNX, so the pipeline passes it directly:
``build_torch_runner(shrunk_model, target)``. One CUDA graph is captured per input shape on first
use; later calls copy the batch into the captured input and replay, which removes Python and
kernel-launch overhead the way a deployed TorchScript/CUDA-graph server would.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from edgeprune.engines.base import Backend, EngineArtifact, Runner, as_float_batch
from edgeprune.errors import BackendUnavailableError, InputError
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
    """An eval-mode copy of the module on CUDA; one captured CUDA graph per input shape."""

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
        self._model = copy.deepcopy(module).eval().to(device="cuda", dtype=self._dtype)
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
    """The runner for a ``runtime: torch`` target, from the (shrunk) module the pipeline holds."""
    if target.runtime != "torch":
        raise InputError(f"target {target.name} runs {target.runtime}, not torch; use build_engines for it")
    return TorchGpuRunner(module, target.precision, use_cuda_graphs=use_cuda_graphs)


class TorchGpuBackend(Backend):
    """Registered for completeness; it needs the module, so `build`/`load` point to `build_torch_runner`."""

    name = "torch-gpu"
    builds_from_onnx = False

    @classmethod
    def unavailable_reason(cls, target: Optional[Target] = None) -> Optional[str]:
        return cuda_unavailable_reason()

    def build(
        self,
        onnx_path: Path,
        out_dir: Path,
        target: Target,
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        raise InputError("the torch-gpu back end runs the nn.Module: call build_torch_runner(module, target)")

    def load(self, path: Path, target: Optional[Target] = None) -> Runner:
        raise InputError("the torch-gpu back end runs the nn.Module: call build_torch_runner(module, target)")
