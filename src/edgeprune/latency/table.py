"""Measured layer latencies, cached on disk by layer signature and target fingerprint.

A point is one layer at one channel count (`LayerSpec.key`), measured once per machine and
runtime: the cache file of a fingerprint holds every point measured there, reused across
layers and models. A file that is unreadable, of another schema, or recorded under another
fingerprint (copied from another machine) is not trusted: it is set aside and rebuilt.
A `LayerTable` is one layer's sampled grid of points; between samples it interpolates linearly.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from edgeprune.fileio import write_json_atomic
from edgeprune.latency.layers import LayerSpec

CACHE_SCHEMA_VERSION = 1


def default_cache_dir() -> Path:
    """``$EDGEPRUNE_CACHE_DIR/latency``, else ``~/.cache/edgeprune/latency``."""
    root = os.environ.get("EDGEPRUNE_CACHE_DIR") or Path.home() / ".cache" / "edgeprune"
    return Path(root) / "latency"


@dataclass(frozen=True)
class Fingerprint:
    """What must match for a measured point to be reused: machine, runtime and version,
    execution providers, threads, precision, graph optimisation level and the clock read."""

    machine: str
    cores: int
    runtime: str
    runtime_version: str
    providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    precision: str
    graph_optimization_level: str
    clock: str = "wall"  # what the timings read (see `profile.LayerProfiler.clock`)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "providers": list(self.providers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fingerprint":
        return cls(**{**data, "providers": tuple(data["providers"])})

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PointCache:
    """Median latency (ms) of every measured point under one fingerprint; `note` says why a
    file found on disk was not used, when it was not."""

    fingerprint: Fingerprint
    path: Optional[Path] = None
    points: dict[str, dict[str, Any]] = field(default_factory=dict)
    note: str = ""
    loaded: set[str] = field(default_factory=set)  # keys read from disk
    used: set[str] = field(default_factory=set)  # keys asked for since opening

    def get(self, spec: LayerSpec) -> Optional[float]:
        entry = self.points.get(spec.key)
        if entry is None:
            return None
        self.used.add(spec.key)
        return float(entry["ms"])

    @property
    def reused(self) -> int:
        """Points read from disk and used since: measured earlier, not again."""
        return len(self.loaded & self.used)

    def put(self, spec: LayerSpec, ms: float, rounds: int) -> None:
        self.points[spec.key] = {"ms": float(ms), "rounds": int(rounds)}

    def save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, {"schema_version": CACHE_SCHEMA_VERSION,
                                          "fingerprint": self.fingerprint.to_dict(), "points": self.points})


def open_cache(fingerprint: Fingerprint, cache_dir: Optional[Path] = None) -> PointCache:
    """The cache of `fingerprint` in `cache_dir` (see the module docstring for what is not trusted)."""
    path = Path(cache_dir or default_cache_dir()) / f"latency-{fingerprint.digest}.json"
    cache = PointCache(fingerprint, path)
    if not path.exists():
        return cache
    reason = _untrusted_reason(path, fingerprint)
    if reason:
        cache.note = f"{path}: {reason}; rebuilt from new measurements"
        return cache
    data = json.loads(path.read_text(encoding="utf-8"))
    cache.points = {k: v for k, v in data["points"].items() if _valid_point(v)}
    cache.loaded = set(cache.points)
    return cache


def _untrusted_reason(path: Path, fingerprint: Fingerprint) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"not readable JSON ({type(error).__name__})"
    if not isinstance(data, dict) or data.get("schema_version") != CACHE_SCHEMA_VERSION:
        return "not a latency cache of this edgeprune (schema_version differs)"
    if data.get("fingerprint") != fingerprint.to_dict():
        return "recorded under another machine or runtime (fingerprint differs)"
    if not isinstance(data.get("points"), dict):
        return "has no points mapping"
    return ""


def _valid_point(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("ms"), (int, float)) and np.isfinite(entry["ms"]) \
        and entry["ms"] > 0


@dataclass(frozen=True)
class LayerTable:
    """One layer's latency as a function of (cin, cout), from measured points.

    Each axis is sampled with the other at full width (densely where the kernels step); between
    samples it is linear. Off the two axes the latency is their product over the full layer's
    (a conv's time is close to proportional to cin x cout), corrected by the ratio measured on a
    coarse grid (the corners and the middle), interpolated bilinearly. Grouped convs have one
    free axis (whole groups go together), so `cin_points` is empty.
    """

    spec: LayerSpec
    cin_points: tuple[int, ...]
    cin_ms: tuple[float, ...]
    cout_points: tuple[int, ...]
    cout_ms: tuple[float, ...]
    check_cin: tuple[int, ...] = ()
    check_cout: tuple[int, ...] = ()
    check_ratio: tuple[tuple[float, ...], ...] = ()  # measured / separable estimate on the coarse grid

    def separable_ms(self, cin: float, cout: float) -> float:
        along_out = float(np.interp(cout, self.cout_points, self.cout_ms))
        if not self.cin_points:
            return along_out
        along_in = float(np.interp(cin, self.cin_points, self.cin_ms))
        full = float(np.interp(self.spec.cin, self.cin_points, self.cin_ms))
        return along_in * along_out / full

    def latency_ms(self, cin: float, cout: float) -> float:
        estimate = self.separable_ms(cin, cout)
        if self.check_ratio:
            estimate *= _bilinear(self.check_cin, self.check_cout, np.asarray(self.check_ratio), cin, cout)
        return estimate

    @property
    def full_ms(self) -> float:
        return self.latency_ms(self.spec.cin, self.spec.cout)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "cin_points": list(self.cin_points), "cin_ms": list(self.cin_ms),
                "cout_points": list(self.cout_points), "cout_ms": list(self.cout_ms),
                "check_cin": list(self.check_cin), "check_cout": list(self.check_cout),
                "check_ratio": [list(r) for r in self.check_ratio]}


def _bilinear(xs, ys, grid: np.ndarray, x: float, y: float) -> float:
    """Linear interpolation on a rectangular grid; outside it, the nearest edge value."""
    xs, ys = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(xs) == 1 or len(ys) == 1:
        return float(np.interp(y, ys, grid[0]) if len(xs) == 1 else np.interp(x, xs, grid[:, 0]))
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    j = int(np.clip(np.searchsorted(ys, y) - 1, 0, len(ys) - 2))
    tx = min(max((x - xs[i]) / (xs[i + 1] - xs[i]), 0.0), 1.0)
    ty = min(max((y - ys[j]) / (ys[j + 1] - ys[j]), 0.0), 1.0)
    top = grid[i, j] * (1 - ty) + grid[i, j + 1] * ty
    bottom = grid[i + 1, j] * (1 - ty) + grid[i + 1, j + 1] * ty
    return float(top * (1 - tx) + bottom * tx)


@dataclass(frozen=True)
class ModelTable:
    """Every layer's table plus the model's measured whole latency: the fixed cost of what is
    not in a table (pooling, adds, activations, per-call overhead) is the difference."""

    layers: tuple[LayerTable, ...]
    dense_ms: float
    fingerprint: Fingerprint
    measured_points: int
    cached_points: int
    seconds: float
    cache_path: Optional[Path] = None
    cache_note: str = ""

    @property
    def layers_ms(self) -> float:
        return float(sum(t.full_ms for t in self.layers))

    @property
    def fixed_ms(self) -> float:
        return self.dense_ms - self.layers_ms

    def summary(self) -> dict[str, Any]:
        return {"dense_ms": self.dense_ms, "layers_ms": self.layers_ms, "fixed_ms": self.fixed_ms,
                "layers": len(self.layers), "measured_points": self.measured_points,
                "cached_points": self.cached_points, "seconds": self.seconds,
                "cache": str(self.cache_path) if self.cache_path else None, "cache_note": self.cache_note,
                "fingerprint": self.fingerprint.to_dict()}
