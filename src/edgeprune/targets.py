"""Target profiles: where a pruned model runs, and what that implies for pruning and engines.

A target is a small YAML file (the built-ins live in the repository's ``targets/*.yaml`` and ship
as the data package ``edgeprune.profiles``). It fixes the
runtime, precision and device, the batch sizes to build and measure, thread counts, the TensorRT
workspace, and the channel multiple that pruning rounds to so the shrunk layers stay fast on that
hardware. Bad files fail early with the file and the key named, never halfway through a build.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from edgeprune.errors import TargetError

SCHEMA_VERSION = 1
DEFAULT_TARGET = "cpu-x86"

RUNTIMES = ("onnxruntime", "tensorrt", "torch", "executorch", "ort-mobile", "openvino")
#: Runtimes measured on the host CPU (a phone's runtime runs its x86 build here), with no providers.
CPU_RUNTIMES = ("executorch", "ort-mobile", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "cuda", "jetson")
GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
#: Execution providers that need a GPU; asking for one where it is missing is an error, not a
#: silent CPU fallback.
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


class TargetFieldError(ValueError):
    """A bad value in a target, with the key it belongs to (so the message can name it)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


@dataclass(frozen=True)
class Target:
    """Where and how a model runs. Validated on construction; immutable afterwards.

    ``batch_sizes[0]`` is the batch the target is tuned for (TensorRT's "opt" shape); the
    smallest and largest entries are the profile's min and max.
    """

    name: str
    description: str = ""
    runtime: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    execution_providers: tuple[str, ...] = ()
    batch_sizes: tuple[int, ...] = (1,)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    workspace_mb: int = 0
    round_to: int = 8
    latency_budget_ms: Optional[float] = None
    dla_core: Optional[int] = None
    calibration_batches: int = 8
    builder_optimization_level: int = 3
    #: ort-mobile only: the required_operators.config of the reduced ONNX Runtime build an app
    #: already ships; a model that needs an operator outside it is refused. None: any operator.
    operator_config: Optional[str] = None

    def __post_init__(self) -> None:
        # YAML gives lists; freeze them so the dataclass is hashable and truly immutable.
        for key in ("execution_providers", "batch_sizes"):
            value = getattr(self, key)
            if isinstance(value, list):
                object.__setattr__(self, key, tuple(value))
        if self.runtime == "onnxruntime" and self.device == "cpu" and self.execution_providers == ():
            object.__setattr__(self, "execution_providers", ("CPUExecutionProvider",))
        _validate(self)

    @property
    def min_batch(self) -> int:
        return min(self.batch_sizes)

    @property
    def opt_batch(self) -> int:
        return self.batch_sizes[0]

    @property
    def max_batch(self) -> int:
        return max(self.batch_sizes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["execution_providers"] = list(self.execution_providers)
        data["batch_sizes"] = list(self.batch_sizes)
        return {"schema_version": SCHEMA_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Target":
        """Build from a mapping; unknown keys are errors (a typo must not be silently ignored)."""
        if not isinstance(data, dict):
            raise TargetFieldError("<top level>", f"expected a mapping, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k != "schema_version"}
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise TargetFieldError(str(key), f"unknown key (known keys: {', '.join(sorted(known))})")
        if "name" not in data:
            raise TargetFieldError("name", "missing")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(key: str, value: Any, minimum: int) -> None:
    if not _is_int(value):
        raise TargetFieldError(key, f"expected an integer, got {value!r}")
    if value < minimum:
        raise TargetFieldError(key, f"must be >= {minimum}, got {value}")


def _require_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TargetFieldError(key, f"must be one of {', '.join(choices)}; got {value!r}")


def _validate(t: Target) -> None:
    if not isinstance(t.name, str) or not t.name.strip():
        raise TargetFieldError("name", "must be a non-empty string")
    if not isinstance(t.description, str):
        raise TargetFieldError("description", f"expected a string, got {t.description!r}")
    _require_choice("runtime", t.runtime, RUNTIMES)
    _require_choice("precision", t.precision, PRECISIONS)
    _require_choice("device", t.device, DEVICES)
    _require_choice("graph_optimization_level", t.graph_optimization_level, GRAPH_OPTIMIZATION_LEVELS)

    if not isinstance(t.execution_providers, tuple) or not all(
        isinstance(p, str) and p.endswith("ExecutionProvider") for p in t.execution_providers
    ):
        raise TargetFieldError(
            "execution_providers",
            "expected a list of ONNX Runtime provider names such as CPUExecutionProvider",
        )
    if not isinstance(t.batch_sizes, tuple) or not t.batch_sizes:
        raise TargetFieldError("batch_sizes", "expected a non-empty list of positive integers")
    for size in t.batch_sizes:
        if not _is_int(size) or size < 1:
            raise TargetFieldError("batch_sizes", f"expected positive integers, got {size!r}")
    if len(set(t.batch_sizes)) != len(t.batch_sizes):
        raise TargetFieldError("batch_sizes", "contains duplicates")

    _require_int("intra_op_threads", t.intra_op_threads, 0)
    _require_int("inter_op_threads", t.inter_op_threads, 0)
    _require_int("workspace_mb", t.workspace_mb, 0)
    _require_int("round_to", t.round_to, 1)
    _require_int("calibration_batches", t.calibration_batches, 1)
    _require_int("builder_optimization_level", t.builder_optimization_level, 0)
    if t.builder_optimization_level > 5:
        raise TargetFieldError(
            "builder_optimization_level", f"must be 0..5, got {t.builder_optimization_level}"
        )
    if t.latency_budget_ms is not None:
        value = t.latency_budget_ms
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise TargetFieldError("latency_budget_ms", f"expected a positive number or null, got {value!r}")
    if t.dla_core is not None:
        _require_int("dla_core", t.dla_core, 0)
    if t.operator_config is not None and (not isinstance(t.operator_config, str) or not t.operator_config):
        raise TargetFieldError("operator_config",
                               f"expected a path to a .config file or null, got {t.operator_config!r}")
    _validate_combination(t)


def _validate_combination(t: Target) -> None:
    """Reject combinations no back end can honour, rather than quietly running something else."""
    if t.runtime == "onnxruntime":
        if not t.execution_providers:
            raise TargetFieldError("execution_providers", "onnxruntime targets need at least one provider")
        if t.precision == "fp16":
            raise TargetFieldError(
                "precision", "onnxruntime targets run fp32 or int8; use runtime tensorrt or torch for fp16"
            )
        wants_gpu = any(p in GPU_PROVIDERS for p in t.execution_providers)
        if t.device == "cpu" and wants_gpu:
            raise TargetFieldError(
                "execution_providers", "a cpu target cannot list CUDA or TensorRT providers"
            )
        if t.device in ("cuda", "jetson") and not wants_gpu:
            raise TargetFieldError(
                "execution_providers",
                f"a {t.device} target needs CUDAExecutionProvider or TensorrtExecutionProvider",
            )
    elif t.runtime in CPU_RUNTIMES:
        if t.device != "cpu":
            raise TargetFieldError("device", f"runtime {t.runtime} runs on the cpu device here, not {t.device}")
        if t.execution_providers:
            raise TargetFieldError(
                "execution_providers", f"only onnxruntime targets use execution providers, not {t.runtime}"
            )
        allowed = ("fp32", "int8") if t.runtime == "executorch" else ("fp32",)
        if t.precision not in allowed:
            raise TargetFieldError("precision", f"the {t.runtime} back end runs {' or '.join(allowed)}")
    else:
        if t.device == "cpu":
            raise TargetFieldError("device", f"runtime {t.runtime} needs a cuda or jetson device")
        if t.execution_providers:
            raise TargetFieldError(
                "execution_providers", f"only onnxruntime targets use execution providers, not {t.runtime}"
            )
    if t.operator_config is not None and t.runtime != "ort-mobile":
        raise TargetFieldError("operator_config", "only ort-mobile targets have a reduced operator build")
    if t.runtime == "torch" and t.precision == "int8":
        raise TargetFieldError("precision", "the torch back end runs fp32 or fp16")
    if t.dla_core is not None:
        if t.runtime != "tensorrt" or t.device != "jetson":
            raise TargetFieldError("dla_core", "DLA cores exist only on Jetson with runtime tensorrt")
        if t.precision == "fp32":
            raise TargetFieldError("dla_core", "DLA runs fp16 or int8, not fp32")


@functools.cache
def builtin_dir() -> Path:
    """The folder of the built-in profiles, wherever the package was installed from."""
    spec = importlib.util.find_spec("edgeprune.profiles")
    if spec is None or not spec.submodule_search_locations:
        raise TargetError("the built-in target profiles are missing: reinstall edgeprune")
    return Path(next(iter(spec.submodule_search_locations)))


def builtin_target_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def load_target(name_or_path: str | Path | Target | None = None) -> Target:
    """A built-in target by name (``cpu-x86``), or a user's YAML file by path.

    Raises `TargetError` naming the file and the key when the profile is missing or invalid.
    """
    if isinstance(name_or_path, Target):
        return name_or_path
    if name_or_path is None:
        name_or_path = DEFAULT_TARGET
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith((".yaml", ".yml")) or path.is_file()):
        path = builtin_dir() / f"{text}.yaml"
        if not path.is_file():
            raise TargetError(
                f"unknown target {text!r}: use one of {', '.join(builtin_target_names())} "
                "or the path to a YAML file"
            )
    return _load_file(path)


def list_targets() -> list[Target]:
    """Every built-in target, sorted by name."""
    return [_load_file(builtin_dir() / f"{name}.yaml") for name in builtin_target_names()]


def _load_file(path: Path) -> Target:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TargetError(f"{path}: cannot read target file ({error.strerror or error})") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise TargetError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if data is None:
        raise TargetError(f"{path}: the file is empty")
    try:
        return Target.from_dict(data)
    except TargetFieldError as error:
        raise TargetError(f"{path}: key {error.key!r}: {str(error).split(': ', 1)[1]}") from error
    except (TypeError, ValueError) as error:
        raise TargetError(f"{path}: {error}") from error


__all__ = [
    "DEFAULT_TARGET",
    "Target",
    "TargetFieldError",
    "builtin_target_names",
    "list_targets",
    "load_target",
]
