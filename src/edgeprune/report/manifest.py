"""manifest.json of an export as one typed record: every figure the report, the gate, a bundle
and the CLI summary rely on, with one writer (`write_manifest`) and one reader (`read_manifest`).

Figures are copied from what the stages measured; nothing here computes a verdict (that is
`report.rules`). Accuracies are fractions in [0, 1], latencies milliseconds, sizes bytes: the
reader refuses a file that breaks those units instead of guessing. A figure that was not measured
is None, never 0. Version 1 files (before every benchmarked engine had its own latency record)
are read and upgraded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from edgeprune.errors import InputError
from edgeprune.fileio import read_json_object, sha256_file, write_json_atomic
from edgeprune.measure.memory import ATTRIBUTION_RESOLUTION_MB
from edgeprune.onnx_export.exporter import ParityResult

if TYPE_CHECKING:
    from edgeprune.measure.results import BenchResult

MANIFEST_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"


class ManifestError(InputError):
    """A manifest.json that is missing, of an unknown version, or breaks the contract's units."""


@dataclass(frozen=True)
class InputSpec:
    """What an app must feed the model: one image of `shape` (no batch axis), normalised."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = "NCHW"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    class_names: Optional[tuple[str, ...]] = None
    name: str = "input"
    output: str = "logits"


@dataclass(frozen=True)
class ShrinkCheck:
    """The shrunk model against the gated model with the dropped gates at zero."""

    max_abs_diff: Optional[float]
    tolerance: Optional[float]
    passed: Optional[bool]


@dataclass(frozen=True)
class EngineRecord:
    """One engine built for the target, its accuracy on the test split and its parity with ONNX."""

    name: str
    path: str
    precision: str
    target: Optional[str] = None
    build_info: Mapping[str, Any] = field(default_factory=dict)
    accuracy: Optional[float] = None
    parity: Optional[ParityResult] = None
    reference_accuracy: Optional[float] = None  # the FP32 ONNX model on the same images
    accuracy_samples: Optional[int] = None


@dataclass(frozen=True)
class LatencyRecord:
    """One benchmarked model at one batch size (from `BenchEntry`), in milliseconds."""

    model: str
    batch: int
    p50_ms: Optional[float]
    p90_ms: Optional[float] = None
    p99_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    cv: Optional[float] = None
    round_median_cv: Optional[float] = None
    n: Optional[int] = None
    throughput_items_per_s: Optional[float] = None
    memory_mb: Optional[float] = None
    runner: Optional[str] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    # `memory_mb` is in-process RSS attribution, which resolves no finer than this (None: unknown,
    # as in files written before it was recorded); a smaller figure means "< this", not a size.
    memory_resolution_mb: Optional[float] = None
    weight_bytes: Optional[int] = None        # ONNX initializers (exact)
    activation_bytes: Optional[int] = None    # peak live activations at `batch`
    activation_bound: Optional[str] = None    # "exact", "lower bound", "upper bound" (INT8 Q/DQ) or "approximate"
    fresh_peak_rss_mb: Optional[float] = None  # peak RSS of a fresh process running only this model
    engine_memory_bytes: Optional[int] = None  # device memory a compiled engine reports (TensorRT)


@dataclass(frozen=True)
class SpeedupRecord:
    """p50(baseline) / p50(candidate), measured interleaved in one run, with its 95% interval."""

    candidate: str
    batch: int
    speedup: float
    ci95: Optional[tuple[float, float]] = None
    baseline: str = "dense"


@dataclass(frozen=True)
class LayerChange:
    module: str
    out_channels_before: int
    out_channels_after: int


@dataclass(frozen=True)
class Manifest:
    """Everything one export measured. Optional figures are None when they were not measured."""

    name: str
    created: Optional[str] = None
    model: Mapping[str, Any] = field(default_factory=dict)
    input: Optional[InputSpec] = None
    num_classes: Optional[int] = None
    keep_requested: Optional[float] = None
    keep_achieved: Optional[float] = None
    budget: str = "params"
    keep_note: Optional[str] = None
    params_before: Optional[int] = None
    params_after: Optional[int] = None
    flops_before: Optional[int] = None
    flops_after: Optional[int] = None
    accuracy_before: Optional[float] = None
    accuracy_after: Optional[float] = None
    plan: Mapping[str, Any] = field(default_factory=dict)
    layers: tuple[LayerChange, ...] = ()
    finetune: Mapping[str, Any] = field(default_factory=dict)
    shrink_check: Optional[ShrinkCheck] = None
    onnx_parity: Optional[ParityResult] = None
    engines: tuple[EngineRecord, ...] = ()
    latency: tuple[LatencyRecord, ...] = ()
    speedups: tuple[SpeedupRecord, ...] = ()
    size_bytes: Mapping[str, int] = field(default_factory=dict)
    target: Mapping[str, Any] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    trained_demo_now: bool = False
    seconds: Optional[float] = None
    environment: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    #: With --budget latency: requested, predicted and measured ratio (with its 95% interval),
    #: closed-loop rounds, tolerance and the latency table's summary; empty otherwise.
    latency_budget: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = MANIFEST_SCHEMA_VERSION

    # --- derived figures (computed here once, read everywhere) --------------------------------

    @property
    def chance_accuracy(self) -> Optional[float]:
        """1 / number of classes (from num_classes, else the class names), or None if unknown."""
        classes = self.num_classes
        if not classes and self.input is not None and self.input.class_names:
            classes = len(self.input.class_names)
        return 1.0 / classes if classes else None

    @property
    def accuracy_drop(self) -> Optional[float]:
        if self.accuracy_before is None or self.accuracy_after is None:
            return None
        return self.accuracy_before - self.accuracy_after

    @property
    def headline_batch(self) -> Optional[int]:
        """The batch the summary and the speedup rules speak of: the smallest one benchmarked."""
        return min((r.batch for r in self.latency), default=None)

    @property
    def benchmarked_models(self) -> tuple[str, ...]:
        """Every model with a latency record, dense first, in the order they were measured."""
        names: list[str] = []
        for record in self.latency:
            if record.model not in names:
                names.append(record.model)
        return tuple(sorted(names, key=lambda n: n != "dense"))

    def latency_of(self, model: str, batch: Optional[int] = None) -> Optional[LatencyRecord]:
        batch = self.headline_batch if batch is None else batch
        return next((r for r in self.latency if r.model == model and r.batch == batch), None)

    def speedup_of(self, candidate: str = "pruned", batch: Optional[int] = None) -> Optional[SpeedupRecord]:
        batch = self.headline_batch if batch is None else batch
        return next((s for s in self.speedups
                     if s.candidate == candidate and s.batch == batch and s.baseline == "dense"), None)

    # --- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (lists, not tuples), with the derived figures for readers outside edgeprune."""
        data = _plain(dataclasses.asdict(self))
        data["chance_accuracy"] = self.chance_accuracy
        data["accuracy_drop"] = self.accuracy_drop
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = MANIFEST_FILE) -> "Manifest":
        """Read a manifest written by any readable version; bad units or types raise ManifestError."""
        from edgeprune.report.manifest_reader import manifest_from_dict

        return manifest_from_dict(data, source)

def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- the one writer ---------------------------------------------------------------------------


def latency_records(bench: Optional["BenchResult"]) -> tuple[tuple[LatencyRecord, ...], tuple[SpeedupRecord, ...]]:
    """Every entry and comparison of a benchmark, as manifest records (nothing if not benchmarked)."""
    if bench is None:
        return (), ()
    records = tuple(
        LatencyRecord(
            model=e.model, batch=e.batch, p50_ms=e.p50_ms, p90_ms=e.p90_ms, p99_ms=e.p99_ms,
            mean_ms=e.mean_ms, cv=e.cv, round_median_cv=e.round_median_cv, n=e.n,
            throughput_items_per_s=e.throughput_items_per_s,
            memory_mb=e.model_memory_mb if e.model_memory_mb is not None else e.peak_rss_mb,
            runner=e.runner, device=e.device, precision=e.precision,
            memory_resolution_mb=(ATTRIBUTION_RESOLUTION_MB
                                  if (e.model_memory_mb if e.model_memory_mb is not None
                                      else e.peak_rss_mb) is not None else None),
            weight_bytes=getattr(e, "weight_bytes", None),
            activation_bytes=getattr(e, "activation_bytes", None),
            activation_bound=getattr(e, "activation_bound", None),
            fresh_peak_rss_mb=getattr(e, "fresh_peak_rss_mb", None),
            engine_memory_bytes=getattr(e, "engine_memory_bytes", None),
        )
        for e in bench.entries
    )
    speedups = tuple(
        SpeedupRecord(candidate=c.candidate, batch=c.batch, speedup=c.speedup,
                      ci95=tuple(c.speedup_ci95), baseline=c.baseline)
        for c in bench.comparisons
    )
    return records, speedups


def layer_changes(dense_model: Any, pruned_model: Any) -> tuple[LayerChange, ...]:
    """Output width of every conv / linear layer before and after the shrink."""
    changes = []
    shrunk = dict(pruned_model.named_modules())
    for name, module in dense_model.named_modules():
        before = getattr(module, "out_channels", getattr(module, "out_features", None))
        if before is None or name not in shrunk:
            continue
        after = getattr(shrunk[name], "out_channels", getattr(shrunk[name], "out_features", 0))
        changes.append(LayerChange(name, int(before), int(after)))
    return tuple(changes)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(export_dir: Path, manifest: Manifest) -> Manifest:
    """Write `manifest.json` atomically with the sha256 of every other file in the folder."""
    export_dir = Path(export_dir)
    files = {
        str(path.relative_to(export_dir)): sha256_file(path)
        for path in sorted(export_dir.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE and not path.name.startswith(".")
    }
    manifest = dataclasses.replace(manifest, files=files, schema_version=MANIFEST_SCHEMA_VERSION)
    write_json_atomic(export_dir / MANIFEST_FILE, manifest.to_dict())
    return manifest


def read_manifest(export_dir: Path) -> Manifest:
    """The manifest of an export folder; a missing or malformed file is a one-line ManifestError."""
    path = Path(export_dir) / MANIFEST_FILE
    document = read_json_object(path, ManifestError, "pass a folder written by `edgeprune export`")
    return Manifest.from_dict(document, str(path))


def as_manifest(value: "Manifest | Mapping[str, Any]") -> Manifest:
    """A `Manifest` from itself or from a manifest document (a dict as read from JSON)."""
    return value if isinstance(value, Manifest) else Manifest.from_dict(value)
