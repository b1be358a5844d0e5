"""The benchmark's configuration and versioned result types, with their JSON round trips.

Raw per-iteration samples are kept, grouped by round, so that the gate (and a sceptical reader)
can recompute every figure from the file alone.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from edgeprune.errors import InputError
from edgeprune.fileio import write_json_atomic

SCHEMA_VERSION = 1
ORDERS = ("alternate", "random")


@dataclass(frozen=True)
class BenchConfig:
    """How long and how often to measure. Timing stops only when BOTH `min_seconds` of timed
    runs and `min_iterations` are reached for every model, and at least `rounds` rounds ran."""

    warmup_s: float = 0.2
    min_iterations: int = 200
    min_seconds: float = 2.0
    rounds: int = 20
    batch_sizes: tuple[int, ...] = (1,)
    threads: Optional[int] = None
    order: str = "alternate"
    memory_iterations: int = 3
    bootstrap_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0 seconds, got {self.warmup_s}")
        if self.min_iterations < 1:
            raise ValueError(f"min_iterations must be >= 1, got {self.min_iterations}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers, got {self.batch_sizes}")
        if len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError(f"batch_sizes has duplicates: {self.batch_sizes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None (runtime default), got {self.threads}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.memory_iterations < 0:
            raise ValueError(f"memory_iterations must be >= 0, got {self.memory_iterations}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["batch_sizes"] = list(self.batch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class BenchEntry:
    """One model at one batch size. Latency percentiles are None when there are too few samples
    (see `percentile_notes`); memory fields are None where they could not be attributed."""

    model: str
    batch: int
    runner: str
    device: str
    precision: Optional[str]
    n: int
    rounds: int
    iterations_per_round: int
    warmup_s: float
    warmup_iterations: int
    timed_s: float
    p50_ms: float
    p90_ms: Optional[float]
    p95_ms: Optional[float]
    p99_ms: Optional[float]
    percentile_notes: dict[str, str]
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    round_median_cv: float
    throughput_items_per_s: float
    peak_rss_mb: Optional[float]
    load_rss_mb: Optional[float]
    run_rss_growth_mb: Optional[float]
    model_memory_mb: Optional[float]
    gpu_peak_mb: Optional[float]
    samples_ms: tuple[tuple[float, ...], ...] = field(repr=False)
    # computed from the ONNX graph the runner executes (measure.onnx_memory): deterministic;
    # `activation_bound` says whether the activation figure is exact or a bound
    weight_bytes: Optional[int] = None
    activation_bytes: Optional[int] = None
    activation_exact: Optional[bool] = None
    activation_bound: Optional[str] = None
    # measured in a fresh process per model (measure.memory.fresh_process_peak_rss)
    fresh_peak_rss_mb: Optional[float] = None
    fresh_runtime_rss_mb: Optional[float] = None
    # the file the runner loaded, and the device memory the engine itself reports needing for
    # its activations and scratch (TensorRT's device_memory_size); None where it has no such figure
    model_file: Optional[str] = None
    engine_memory_bytes: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["samples_ms"] = [list(r) for r in self.samples_ms]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchEntry":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["samples_ms"] = tuple(tuple(float(x) for x in r) for r in d.get("samples_ms", ()))
        values["percentile_notes"] = dict(d.get("percentile_notes") or {})
        return cls(**values)


@dataclass(frozen=True)
class Comparison:
    """`speedup` = p50 of `baseline` / p50 of `candidate`, measured interleaved in one run; the
    interval is a paired bootstrap over rounds."""

    batch: int
    baseline: str
    candidate: str
    speedup: float
    speedup_ci95: tuple[float, float]
    rounds: int
    statistic: str = "ratio of medians p50(baseline)/p50(candidate), 95% paired round bootstrap"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["speedup_ci95"] = list(self.speedup_ci95)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Comparison":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        values["speedup_ci95"] = tuple(d["speedup_ci95"])
        return cls(**values)


@dataclass(frozen=True)
class BenchResult:
    """Everything one `edgeprune bench` measured, versioned for the gate."""

    target: str
    environment: dict[str, Any]
    config: BenchConfig
    entries: tuple[BenchEntry, ...]
    comparisons: tuple[Comparison, ...] = ()
    accuracy_pct: dict[str, float] = field(default_factory=dict)
    memory_method: Optional[str] = None
    source: Optional[str] = None
    created: Optional[str] = None
    schema_version: int = SCHEMA_VERSION

    def entry(self, model: str, batch: int) -> BenchEntry:
        for e in self.entries:
            if e.model == model and e.batch == batch:
                return e
        raise KeyError(f"no entry for model {model!r} at batch {batch}")

    def to_dict(self) -> dict[str, Any]:
        from edgeprune.measure.environment import fingerprint

        return {
            "schema_version": self.schema_version,
            "created": self.created,
            "source": self.source,
            "target": self.target,
            "environment": self.environment,
            "fingerprint": fingerprint(self.environment, self.target),
            "config": self.config.to_dict(),
            "memory_method": self.memory_method,
            "accuracy_pct": dict(self.accuracy_pct),
            "entries": [e.to_dict() for e in self.entries],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(f"benchmark result has schema_version {version!r}, this edgeprune "
                             f"reads {SCHEMA_VERSION}; re-run `edgeprune bench` to refresh it")
        return cls(
            target=d["target"],
            environment=dict(d["environment"]),
            config=BenchConfig.from_dict(d["config"]),
            entries=tuple(BenchEntry.from_dict(e) for e in d["entries"]),
            comparisons=tuple(Comparison.from_dict(c) for c in d.get("comparisons", ())),
            accuracy_pct={k: float(v) for k, v in (d.get("accuracy_pct") or {}).items()},
            memory_method=d.get("memory_method"),
            source=d.get("source"),
            created=d.get("created"),
            schema_version=version,
        )

    def write(self, path: Path) -> None:
        write_json_atomic(Path(path), self.to_dict())


def load_result_dict(path: Path) -> dict[str, Any]:
    """Read a bench JSON file; a missing or malformed file is the user's input error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; run `edgeprune bench ... --json {path}` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON benchmark result ({error})") from None
    if not isinstance(data, dict) or "entries" not in data:
        raise InputError(f"{path}: not an `edgeprune bench` result (no 'entries'); "
                         "pass the file written by `edgeprune bench --json`")
    return data
