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
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from edgeprune.errors import InputError
from edgeprune.fileio import read_json_object, sha256_file, write_json_atomic
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
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ManifestError(f"{source} has schema_version {version!r}; this edgeprune reads "
                                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}. Upgrade edgeprune or re-export.")
        reader = _Reader(data, source)
        if version == 1:
            latency, speedups = reader.v1_latency()
        else:
            latency = tuple(reader.record(LatencyRecord, r, f"latency[{i}]")
                            for i, r in enumerate(reader.list("latency")))
            speedups = tuple(reader.speedup(s, i) for i, s in enumerate(reader.list("speedups")))
        return cls(
            name=str(data.get("name") or "export"),
            created=reader.text("created"),
            model=reader.mapping("model"),
            input=reader.input_spec(),
            num_classes=reader.integer("num_classes"),
            keep_requested=reader.fraction("keep_requested"),
            keep_achieved=reader.fraction("keep_achieved"),
            budget=str(data.get("budget") or "params"),
            keep_note=reader.text("keep_note"),
            params_before=reader.integer("params_before"),
            params_after=reader.integer("params_after"),
            flops_before=reader.integer("flops_before"),
            flops_after=reader.integer("flops_after"),
            accuracy_before=reader.fraction("accuracy_before"),
            accuracy_after=reader.fraction("accuracy_after"),
            plan=reader.mapping("plan"),
            layers=tuple(reader.record(LayerChange, r, f"layers[{i}]") for i, r in enumerate(reader.list("layers"))),
            finetune=reader.mapping("finetune"),
            shrink_check=reader.optional_record(ShrinkCheck, "shrink_check"),
            onnx_parity=reader.parity(data.get("onnx_parity"), "onnx_parity"),
            engines=tuple(reader.engine(e, i) for i, e in enumerate(reader.list("engines"))),
            latency=latency,
            speedups=speedups,
            size_bytes={k: int(v) for k, v in reader.mapping("size_bytes").items() if _is_number(v)},
            target=reader.mapping("target"),
            skipped=tuple(str(s) for s in reader.list("skipped")),
            trained_demo_now=bool(data.get("trained_demo_now", False)),
            seconds=reader.number("seconds"),
            environment=reader.mapping("environment"),
            versions=reader.mapping("versions"),
            files={str(k): str(v) for k, v in reader.mapping("files").items()},
        )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Reader:
    """Typed access to one manifest document; every error names the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data, self.source = data, source

    def fail(self, key: str, why: str) -> ManifestError:
        return ManifestError(f"{self.source}: {key} {why}; re-run `edgeprune export` to rewrite it")

    def number(self, key: str, node: Optional[Mapping[str, Any]] = None, label: Optional[str] = None) -> Optional[float]:
        value = (self.data if node is None else node).get(key)
        if value is None:
            return None
        if not _is_number(value):
            raise self.fail(label or key, f"must be a finite number, got {value!r}")
        return float(value)

    def integer(self, key: str) -> Optional[int]:
        value = self.number(key)
        return None if value is None else int(value)

    def fraction(self, key: str, node: Optional[Mapping[str, Any]] = None, label: Optional[str] = None) -> Optional[float]:
        value = self.number(key, node, label)
        if value is not None and not 0.0 <= value <= 1.0:
            raise self.fail(label or key, f"must be a fraction in [0, 1] (accuracies are not percentages), got {value}")
        return value

    def text(self, key: str) -> Optional[str]:
        value = self.data.get(key)
        return None if value is None else str(value)

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, "must be an object")
        return dict(value)

    def list(self, key: str) -> list:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, (list, tuple)):
            raise self.fail(key, "must be a list")
        return list(value)

    def record(self, kind: type, value: Any, label: str):
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        names = {f.name for f in dataclasses.fields(kind)}
        try:
            return kind(**{k: v for k, v in value.items() if k in names})
        except TypeError as error:
            raise self.fail(label, f"is incomplete ({error})") from None

    def optional_record(self, kind: type, key: str):
        value = self.data.get(key)
        return None if value is None else self.record(kind, value, key)

    def parity(self, value: Any, label: str) -> Optional[ParityResult]:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        return ParityResult(
            max_abs_err=self.number("max_abs_err", value, f"{label}.max_abs_err"),
            top1_agreement=self.fraction("top1_agreement", value, f"{label}.top1_agreement"),
            n_samples=int(value.get("n_samples") or 0),
            tolerance=self.number("tolerance", value, f"{label}.tolerance"),
            passed=value.get("passed"),
        )

    def engine(self, value: Any, index: int) -> EngineRecord:
        label = f"engines[{index}]"
        if not isinstance(value, Mapping):
            raise self.fail(label, "must be an object")
        return EngineRecord(
            name=str(value.get("name", "engine")), path=str(value.get("path", "")),
            precision=str(value.get("precision", "?")), target=value.get("target"),
            build_info=dict(value.get("build_info") or {}),
            accuracy=self.fraction("accuracy", value, f"{label}.accuracy"),
            parity=self.parity(value.get("parity"), f"{label}.parity"),
            reference_accuracy=self.fraction("reference_accuracy", value, f"{label}.reference_accuracy"),
            accuracy_samples=None if value.get("accuracy_samples") is None else int(value["accuracy_samples"]),
        )

    def speedup(self, value: Any, index: int) -> SpeedupRecord:
        record = self.record(SpeedupRecord, value, f"speedups[{index}]")
        ci = tuple(float(x) for x in record.ci95) if record.ci95 else None
        return dataclasses.replace(record, ci95=ci)

    def input_spec(self) -> Optional[InputSpec]:
        spec = self.data.get("input")
        if not isinstance(spec, Mapping) or spec.get("shape") is None:
            return None
        names = spec.get("class_names")
        return InputSpec(
            shape=tuple(int(d) for d in spec["shape"]), dtype=str(spec.get("dtype") or "float32"),
            layout=str(spec.get("layout") or "NCHW"),
            mean=None if spec.get("mean") is None else tuple(float(x) for x in spec["mean"]),
            std=None if spec.get("std") is None else tuple(float(x) for x in spec["std"]),
            class_names=None if names is None else tuple(str(n) for n in names),
            name=str(spec.get("name") or "input"), output=str(spec.get("output") or "logits"),
        )

    def v1_latency(self) -> tuple[tuple[LatencyRecord, ...], tuple[SpeedupRecord, ...]]:
        """Version 1 kept dense and pruned at one batch under latency_ms, speedup and memory_mb."""
        latency_ms, memory = self.mapping("latency_ms"), self.mapping("memory_mb")
        records = []
        for model in ("dense", "pruned"):
            figures = latency_ms.get(model)
            if not isinstance(figures, Mapping):
                continue
            label = f"latency_ms.{model}"
            n = self.number("n", figures, f"{label}.n")
            records.append(LatencyRecord(
                model=model, batch=int(figures.get("batch") or 1),
                p50_ms=self.number("p50", figures, f"{label}.p50"),
                p90_ms=self.number("p90", figures, f"{label}.p90"),
                p99_ms=self.number("p99", figures, f"{label}.p99"),
                mean_ms=self.number("mean", figures, f"{label}.mean"),
                cv=self.number("cv", figures, f"{label}.cv"),
                round_median_cv=self.number("round_median_cv", figures, f"{label}.round_median_cv"),
                n=None if n is None else int(n),
                throughput_items_per_s=self.number("throughput_items_per_s", figures),
                memory_mb=self.number(model, memory, f"memory_mb.{model}"),
            ))
        speedups = []
        value = self.number("speedup")
        if value is not None:
            ci = self.data.get("speedup_ci95")
            ci = tuple(float(x) for x in ci) if isinstance(ci, list) and len(ci) == 2 and all(map(_is_number, ci)) else None
            batch = records[0].batch if records else 1
            speedups.append(SpeedupRecord(candidate="pruned", batch=batch, speedup=value, ci95=ci))
        return tuple(records), tuple(speedups)


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
