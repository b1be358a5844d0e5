"""The one interface every back end implements: build an artifact, load it, run a batch.

Like Polygraphy's loaders and runners: a back end's `build` turns an ONNX file into whatever its
runtime executes (the ONNX itself, a Q/DQ model, a TensorRT ``.plan``, a ``torch.export``
program), and `load` returns a `Runner` whose `run` is synchronous and returns the logits on the
host as NumPy. Each back end declares the targets it serves and the file suffixes it loads, so
the registry (`edgeprune.engines`) picks one without branching on the runtime.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import numpy as np

from edgeprune.errors import InputError

if TYPE_CHECKING:
    from edgeprune.onnx_export.exporter import ParityResult
    from edgeprune.targets import Target

#: Default logit tolerance of an engine against ONNX Runtime FP32 on the CPU. FP32 on a GPU may use
#: TF32; FP16 and INT8 are judged mostly by top-1 agreement, which `ParityResult` reports beside.
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 0.5}


@dataclass(frozen=True)
class EngineArtifact:
    """One built engine: which back end, where its file is, and how it was built."""

    name: str
    path: Path
    precision: str
    target: str
    build_info: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self, relative_to: Optional[Path] = None) -> dict[str, Any]:
        path = Path(self.path)
        if relative_to is not None:
            try:
                path = path.resolve().relative_to(Path(relative_to).resolve())
            except ValueError:
                pass
        return {
            "name": self.name,
            "path": str(path),
            "precision": self.precision,
            "target": self.target,
            "build_info": dict(self.build_info),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Optional[Path] = None) -> "EngineArtifact":
        path = Path(data["path"])
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return cls(
            name=data["name"],
            path=path,
            precision=data["precision"],
            target=data["target"],
            build_info=dict(data.get("build_info", {})),
        )


class Runner(abc.ABC):
    """A loaded engine. `run` takes a float32 NCHW batch and returns float32 logits on the host."""

    name: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    #: The largest batch the engine accepts (a TensorRT profile's max), or None for any.
    max_batch_size: Optional[int] = None
    #: The only batch sizes the engine runs (a DLA engine's static profiles), or None for any up to the max.
    fixed_batch_sizes: Optional[tuple[int, ...]] = None
    #: The file loaded, when it is an ONNX graph this runner executes as written (its weight and
    #: activation bytes are computed from it); None for compiled engines (TensorRT, ExecuTorch, ...).
    graph_file: Optional[Path] = None
    #: Device memory the engine reports needing for activations and scratch (TensorRT), or None.
    device_memory_bytes: Optional[int] = None

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch synchronously; the result is on the host when this returns."""

    def close(self) -> None:
        """Release the session, engine or device memory. Safe to call twice."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, device={self.device!r}, precision={self.precision!r})"
        )


@dataclass(frozen=True)
class ModelSource:
    """One model to run, as an export folder or the pipeline holds it.

    `name` labels its measurements ("dense", "pruned"); `onnx_path` is its exported ONNX file;
    `module` is the nn.Module where the caller still has it in memory (the pipeline), else None
    (an export folder, whose ONNX and built engines are all there is).
    """

    name: str
    onnx_path: Path
    module: Any = None

    @property
    def stem(self) -> str:
        return Path(self.onnx_path).name.removesuffix(".onnx")

    def beside(self, suffix: str) -> Path:
        """A file next to the ONNX model: ``model.onnx`` -> ``model<suffix>``."""
        return Path(self.onnx_path).with_name(self.stem + suffix)


#: Builds (when needed) and opens one runner; called by `edgeprune.measure.bench.open_runners`.
RunnerLoader = Callable[[], "Runner"]


class Backend(abc.ABC):
    """A way to build and run engines, registered by name in `edgeprune.engines.BACKENDS`."""

    name: str = ""
    #: False for back ends whose artifact is not built from ONNX (torch-gpu exports the nn.Module).
    builds_from_onnx: bool = True
    #: File suffixes this back end's `load` opens.
    suffixes: tuple[str, ...] = ()

    @classmethod
    def serves(cls, target: "Target") -> bool:
        """True when this back end is the one that runs `target`."""
        return False

    @classmethod
    def unavailable_reason(cls, target: Optional["Target"] = None) -> Optional[str]:
        """None when this back end can run here, else what is missing and how to install it."""
        return None

    @abc.abstractmethod
    def build(
        self,
        source: ModelSource,
        out_dir: Path,
        target: "Target",
        calibration: Optional[Iterable[np.ndarray]] = None,
        *,
        cache_dir: Optional[Path] = None,
    ) -> EngineArtifact:
        """Build this back end's artifact for `target` from `source` into `out_dir`."""

    @abc.abstractmethod
    def load(self, path: Path, target: Optional["Target"] = None) -> Runner:
        """Load an artifact built by `build`."""

    @abc.abstractmethod
    def bench_loaders(
        self,
        source: ModelSource,
        target: "Target",
        out_dir: Path,
        *,
        calibration: Optional[list[np.ndarray]] = None,
        cache_dir: Optional[Path] = None,
    ) -> dict[str, RunnerLoader]:
        """What `target` runs for `source`, by label: its artifact found beside the ONNX file or
        built into `out_dir` now, or a clear error when neither can be done."""


def onnx_sample_shape(onnx_path: Path) -> tuple[int, ...]:
    """One sample's input dimensions (no batch) of an ONNX model; -1 where a dimension is symbolic."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims[1:])


def as_float_batch(batch: Any) -> np.ndarray:
    """A contiguous float32 array from a NumPy array or a (CPU or GPU) torch tensor."""
    if hasattr(batch, "detach"):
        batch = batch.detach().cpu().numpy()
    array = np.ascontiguousarray(batch, dtype=np.float32)
    if array.ndim < 2:
        raise InputError(f"expected a batch shaped (N, C, H, W), got shape {array.shape}")
    return array


def run_batched(runner: Runner, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits for every image, in batches the runner accepts: none above its profile maximum and,
    for an engine built for fixed batch sizes (DLA), each padded with zeros up to one of those (a
    CNN in eval mode treats every sample alone, so the padding changes no real sample's logits)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    step = min(batch_size, runner.max_batch_size or batch_size)
    sizes = sorted(runner.fixed_batch_sizes or ())
    if sizes:
        step = max([s for s in sizes if s <= step] or sizes[:1])
    outputs = []
    for start in range(0, len(images), step):
        chunk = images[start : start + step]
        if sizes and len(chunk) not in sizes:
            padded = min(s for s in sizes if s >= len(chunk))
            filler = np.zeros((padded - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
            outputs.append(runner.run(np.concatenate([chunk, filler]))[: len(chunk)])
        else:
            outputs.append(runner.run(chunk))
    return np.concatenate(outputs)


def accuracy_of_runner(runner: Runner, images: Any, labels: Any, batch_size: int = 64) -> float:
    """Top-1 accuracy of `runner` over `images` in batches of up to `batch_size` (see `run_batched`)."""
    images = as_float_batch(images)
    labels = np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels).reshape(-1)
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} labels")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise InputError("no images to measure accuracy on")
    predicted = np.argmax(run_batched(runner, images, batch_size), axis=-1)
    return int(np.sum(predicted == labels)) / len(images)


def compare_with_onnxruntime(
    runner: Runner, onnx_path: Path, images: Any, tolerance: Optional[float] = None
) -> "ParityResult":
    """Parity of an engine against the FP32 ONNX model on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    from edgeprune.onnx_export.exporter import ParityResult

    batch = as_float_batch(images)
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(runner.precision, 1e-3)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    chunks = [batch[i : i + 64] for i in range(0, len(batch), 64)]
    reference = np.concatenate([session.run(None, {input_name: chunk})[0] for chunk in chunks])
    actual = run_batched(runner, batch).astype(np.float32)
    max_abs_err = float(np.max(np.abs(reference - actual)))
    return ParityResult(
        max_abs_err=max_abs_err,
        top1_agreement=float(np.mean(reference.argmax(-1) == actual.argmax(-1))),
        n_samples=len(batch),
        tolerance=float(tolerance),
        passed=bool(np.isfinite(max_abs_err) and max_abs_err <= tolerance),
    )
