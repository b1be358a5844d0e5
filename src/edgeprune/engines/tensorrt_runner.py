"""Running a TensorRT ``.plan``: name-based I/O, ``execute_async_v3`` on a stream, then a synchronise.

The TensorRT 10 runtime API only: ``Runtime`` (with ``DLA_core`` set before deserialising a DLA
engine), ``num_io_tensors``/``get_tensor_name``/``get_tensor_mode``, ``get_tensor_profile_shape``,
``set_optimization_profile_async``, ``set_input_shape``, ``set_tensor_address`` and
``execute_async_v3``. Device memory and the stream come from a small `device` object (torch's
CUDA allocator in production), so the call sequence can be checked against a fake without a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.engines.base import Runner, as_float_batch
from edgeprune.engines.tensorrt import sidecar_path
from edgeprune.engines.tensorrt_logger import shared_logger
from edgeprune.errors import BackendUnavailableError, InputError, UnsupportedModelError

#: TensorRT DataType name -> torch dtype name.
TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "BF16": "bfloat16",
}


class TorchCudaDevice:
    """Buffers from torch's CUDA allocator and one CUDA stream; torch is already a dependency."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self.stream = torch.cuda.Stream()

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def upload(self, array: np.ndarray, dtype: str) -> Any:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            return torch.from_numpy(array).to("cuda").to(getattr(torch, dtype)).contiguous()

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            return torch.empty(shape, dtype=getattr(torch, dtype), device="cuda")

    @staticmethod
    def address(buffer: Any) -> int:
        return int(buffer.data_ptr())

    def synchronize(self) -> None:
        self.stream.synchronize()

    @staticmethod
    def download(buffer: Any) -> np.ndarray:
        return buffer.float().cpu().numpy()


class TensorRTRunner(Runner):
    """Deserialises a ``.plan`` (on its DLA core where it was built for one) and runs one batch at a
    time in the profile that covers it."""

    name = "tensorrt"
    device = "cuda"

    def __init__(
        self,
        path: Path,
        precision: Optional[str] = None,
        *,
        trt: Any,
        device: Any,
        dla_core: Optional[int] = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"no TensorRT engine at {self.path}")
        sidecar = _read_sidecar(self.path)
        self._trt, self._device = trt, device
        self._logger = shared_logger(trt)
        mark = self._logger.collected.mark()
        self._runtime = trt.Runtime(self._logger)
        self.dla_core = sidecar.get("dla_core", dla_core)
        if self.dla_core is not None:
            self._runtime.DLA_core = int(self.dla_core)  # must precede deserialising a DLA engine
            self.name = f"tensorrt-dla{self.dla_core}"
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendUnavailableError(
                f"TensorRT {trt.__version__} could not load {self.path.name} ({self._logger.collected.errors(mark, 1)}): "
                "engines only load on the TensorRT version and GPU model that built them; rebuild it here"
            )
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise BackendUnavailableError(
                f"TensorRT could not create an execution context for {self.path.name}: "
                f"{self._logger.collected.errors(mark)}"
            )
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UnsupportedModelError(f"expected one input and one output, the engine has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._input_dtype = self._dtype(self.input_name)
        self._output_dtype = self._dtype(self.output_name)
        #: (min batch, max batch) of each optimisation profile, by profile index.
        self.profile_batches = [
            (int(shapes[0][0]), int(shapes[2][0]))
            for shapes in (
                engine.get_tensor_profile_shape(self.input_name, k) for k in range(engine.num_optimization_profiles)
            )
        ]
        self.max_batch_size = max(high for _, high in self.profile_batches)
        if all(low == high for low, high in self.profile_batches):
            self.fixed_batch_sizes = tuple(sorted(low for low, _ in self.profile_batches))
        self._profile = 0  # a new context starts in profile 0
        self.device_memory_bytes = engine_device_memory(engine)
        self.precision = precision or sidecar.get("precision") or "unknown"

    def _dtype(self, name: str) -> str:
        dtype_name = getattr(self._engine.get_tensor_dtype(name), "name", "FLOAT")
        return TORCH_DTYPES.get(dtype_name, "float32")

    def _profile_for(self, batch: int) -> int:
        for index, (low, high) in enumerate(self.profile_batches):
            if low <= batch <= high:
                return index
        ranges = ", ".join(f"{low}" if low == high else f"{low}-{high}" for low, high in self.profile_batches)
        raise InputError(
            f"batch {batch} is outside every profile of {self.path.name} (batches {ranges}); "
            "use one of those or rebuild for this batch size"
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._context is None:
            raise InputError(f"runner for {self.path} is closed")
        batch = as_float_batch(batch)
        profile = self._profile_for(batch.shape[0])
        context, device, mark = self._context, self._device, self._logger.collected.mark()
        if profile != self._profile:
            if not context.set_optimization_profile_async(profile, device.stream_handle):
                raise BackendUnavailableError(
                    f"TensorRT could not switch to profile {profile}: {self._logger.collected.errors(mark)}"
                )
            self._profile = profile
        device_input = device.upload(batch, self._input_dtype)
        if not context.set_input_shape(self.input_name, tuple(batch.shape)):
            raise InputError(f"input shape {tuple(batch.shape)} is outside the engine's profile {profile}")
        output = device.empty(tuple(context.get_tensor_shape(self.output_name)), self._output_dtype)
        context.set_tensor_address(self.input_name, device.address(device_input))
        context.set_tensor_address(self.output_name, device.address(output))
        if not context.execute_async_v3(device.stream_handle):
            raise BackendUnavailableError(
                f"TensorRT execute_async_v3 failed: {self._logger.collected.errors(mark)}"
            )
        device.synchronize()  # the output is complete only after the stream has drained
        return device.download(output)

    def close(self) -> None:
        self._context = None
        self._engine = None
        self._runtime = None


def engine_device_memory(engine: Any) -> Optional[int]:
    """Bytes of device memory an execution context of `engine` allocates (activations and scratch):
    `device_memory_size_v2` in TensorRT 10, `device_memory_size` before it."""
    for name in ("device_memory_size_v2", "device_memory_size"):
        value = getattr(engine, name, None)
        if isinstance(value, int) and value >= 0:
            return value
    return None


def _read_sidecar(plan_path: Path) -> dict[str, Any]:
    sidecar = sidecar_path(plan_path)
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"{sidecar}: unreadable build record ({error}); rebuild the engine") from None
    return data if isinstance(data, dict) else {}
