"""Statistics of a sweep: per (criterion, keep) summaries over seeds, the operating point, the
Pareto front, and the CSV layout.

Pure functions over plain records so that every figure in sweep.json can be recomputed from the
per-run files alone. Intervals are two-sided Student-t intervals on the mean over seeds: with
three seeds the t quantile is 4.30, not 1.96, and the interval says so honestly.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

#: slack for comparing a mean accuracy with the tolerance floor (float rounding, not statistics)
_EPS = 1e-9


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t interval of the mean; spread is None for n < 2."""

    n: int
    mean: float
    std: Optional[float]
    ci95_low: Optional[float]
    ci95_high: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(values: Iterable[float], confidence: float = 0.95) -> Summary:
    """Summary of `values` (at least one); the interval uses scipy's t quantile with n - 1 dof."""
    from scipy import stats

    data = np.asarray([float(v) for v in values], dtype=np.float64)
    if data.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(data.mean())
    if data.size < 2:
        return Summary(1, mean, None, None, None)
    std = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, data.size - 1)) * std / math.sqrt(data.size)
    return Summary(int(data.size), mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class AggregateRow:
    """One (criterion, keep) cell of the sweep, summarised over its seeds."""

    criterion: str
    keep: float
    seeds: tuple[int, ...]
    accuracy_pct: Summary
    accuracy_before_finetune_pct: Summary
    dense_accuracy_pct: float
    keep_achieved: float
    params_after: float
    flops_after: float
    pruned_p50_ms: Optional[Summary]
    dense_p50_ms: Optional[Summary]
    speedup: Optional[Summary]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.keep_achieved

    def to_dict(self) -> dict[str, Any]:
        out = {"criterion": self.criterion, "keep": self.keep, "seeds": list(self.seeds),
               "sparsity": self.sparsity, "keep_achieved": self.keep_achieved,
               "params_after": self.params_after, "flops_after": self.flops_after,
               "dense_accuracy_pct": self.dense_accuracy_pct}
        for name in ("accuracy_pct", "accuracy_before_finetune_pct", "pruned_p50_ms", "dense_p50_ms", "speedup"):
            value = getattr(self, name)
            out[name] = value.to_dict() if value is not None else None
        return out


def aggregate(records: Sequence[Mapping[str, Any]]) -> list[AggregateRow]:
    """Group run records by (criterion, keep), in the order criteria first appear, keeps descending."""
    cells: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for record in records:
        cells.setdefault((record["criterion"], float(record["keep"])), []).append(record)
    order = list(dict.fromkeys(r["criterion"] for r in records))
    rows = []
    for (criterion, keep), group in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), -kv[0][1])):
        group = sorted(group, key=lambda r: r["seed"])
        latency = [r["latency"] for r in group if r.get("latency")]
        rows.append(AggregateRow(
            criterion=criterion,
            keep=keep,
            seeds=tuple(int(r["seed"]) for r in group),
            accuracy_pct=summarize(r["accuracy_pct"] for r in group),
            accuracy_before_finetune_pct=summarize(r["accuracy_before_finetune_pct"] for r in group),
            dense_accuracy_pct=float(np.mean([r["dense_accuracy_pct"] for r in group])),
            keep_achieved=float(np.mean([r["keep_achieved"] for r in group])),
            params_after=float(np.mean([r["params_after"] for r in group])),
            flops_after=float(np.mean([r["flops_after"] for r in group])),
            pruned_p50_ms=summarize(x["pruned_p50_ms"] for x in latency) if latency else None,
            dense_p50_ms=summarize(x["dense_p50_ms"] for x in latency) if latency else None,
            speedup=summarize(x["speedup"] for x in latency) if latency else None,
        ))
    return rows


@dataclass(frozen=True)
class OperatingPoint:
    """The most aggressive keep ratio whose mean accuracy stays within tolerance of dense."""

    criterion: str
    keep: float
    sparsity: float
    accuracy_pct: float
    dense_accuracy_pct: float
    tolerance_points: float
    drop_points: float
    speedup: Optional[float]
    rule: str = "lowest keep whose mean accuracy over seeds >= dense accuracy - tolerance"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def operating_point(rows: Sequence[AggregateRow], dense_accuracy_pct: float, tolerance_points: float,
                    criterion: Optional[str] = None) -> Optional[OperatingPoint]:
    """Lowest keep (highest sparsity) within tolerance; ties at one keep go to the higher mean
    accuracy. None when no cell is within tolerance. `criterion` restricts the search."""
    floor = dense_accuracy_pct - tolerance_points
    within = [r for r in rows if (criterion is None or r.criterion == criterion)
              and r.accuracy_pct.mean >= floor - _EPS]
    if not within:
        return None
    best = min(within, key=lambda r: (r.keep, -r.accuracy_pct.mean, r.criterion))
    return OperatingPoint(
        criterion=best.criterion, keep=best.keep, sparsity=best.sparsity,
        accuracy_pct=best.accuracy_pct.mean, dense_accuracy_pct=dense_accuracy_pct,
        tolerance_points=tolerance_points, drop_points=dense_accuracy_pct - best.accuracy_pct.mean,
        speedup=best.speedup.mean if best.speedup is not None else None,
    )


def pareto_front(latency_ms: Sequence[Optional[float]], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy),
    sorted by latency. Points without a latency take no part."""
    points = [(float(l), float(a), i) for i, (l, a) in enumerate(zip(latency_ms, accuracy)) if l is not None]
    front = []
    for lat, acc, i in points:
        dominated = any(
            l2 <= lat and a2 >= acc and (l2 < lat or a2 > acc) for l2, a2, j in points if j != i
        )
        if not dominated:
            front.append((lat, -acc, i))
    return [i for *_, i in sorted(front)]


#: sweep.csv columns. Run rows fill `seed`; aggregate rows fill the spread columns instead.
CSV_COLUMNS = (
    "row", "criterion", "keep", "seed", "n", "keep_achieved", "sparsity", "params_after", "flops_after",
    "accuracy_pct", "accuracy_std_pct", "accuracy_ci95_low_pct", "accuracy_ci95_high_pct",
    "accuracy_before_finetune_pct", "dense_accuracy_pct",
    "pruned_p50_ms", "dense_p50_ms", "speedup", "speedup_std", "speedup_ci95_low", "speedup_ci95_high",
)


def csv_text(records: Sequence[Mapping[str, Any]], rows: Sequence[AggregateRow]) -> str:
    """One `run` row per record (in record order), then one `mean` row per aggregate cell: the
    mean, its sample std and its 95% t interval over seeds."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in records:
        latency = r.get("latency") or {}
        writer.writerow(_clean({
            "row": "run", "criterion": r["criterion"], "keep": r["keep"], "seed": r["seed"], "n": 1,
            "keep_achieved": r["keep_achieved"], "sparsity": 1.0 - r["keep_achieved"],
            "params_after": r["params_after"], "flops_after": r["flops_after"],
            "accuracy_pct": r["accuracy_pct"], "accuracy_before_finetune_pct": r["accuracy_before_finetune_pct"],
            "dense_accuracy_pct": r["dense_accuracy_pct"], "pruned_p50_ms": latency.get("pruned_p50_ms"),
            "dense_p50_ms": latency.get("dense_p50_ms"), "speedup": latency.get("speedup"),
        }))
    for row in rows:
        speed = row.speedup
        writer.writerow(_clean({
            "row": "mean", "criterion": row.criterion, "keep": row.keep, "n": row.accuracy_pct.n,
            "keep_achieved": row.keep_achieved, "sparsity": row.sparsity, "params_after": row.params_after,
            "flops_after": row.flops_after, "accuracy_pct": row.accuracy_pct.mean,
            "accuracy_std_pct": row.accuracy_pct.std, "accuracy_ci95_low_pct": row.accuracy_pct.ci95_low,
            "accuracy_ci95_high_pct": row.accuracy_pct.ci95_high,
            "accuracy_before_finetune_pct": row.accuracy_before_finetune_pct.mean,
            "dense_accuracy_pct": row.dense_accuracy_pct,
            "pruned_p50_ms": row.pruned_p50_ms.mean if row.pruned_p50_ms else None,
            "dense_p50_ms": row.dense_p50_ms.mean if row.dense_p50_ms else None,
            "speedup": speed.mean if speed else None, "speedup_std": speed.std if speed else None,
            "speedup_ci95_low": speed.ci95_low if speed else None,
            "speedup_ci95_high": speed.ci95_high if speed else None,
        }))
    return buffer.getvalue()


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Floats at 6 significant digits, None as an empty cell."""
    return {k: ("" if v is None else f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
