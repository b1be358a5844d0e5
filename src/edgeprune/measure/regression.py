"""The CI gate: is `current` a regression against `baseline`?

A latency regression must be both large (ratio of medians over 1 + max_regression) and
significant (one-sided Mann-Whitney U on per-round medians, p < alpha): ratio-only gates on a
shared machine either cry wolf or need huge thresholds. Improvements never fail. Memory and
accuracy are deterministic enough for plain thresholds. Results from different machines,
runtimes, thread counts or targets are not compared at all (outcome "incomparable").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from edgeprune.measure import stats
from edgeprune.measure.results import SCHEMA_VERSION
from edgeprune.measure.environment import fingerprint
from edgeprune.errors import IncomparableError, InputError

PASS, REGRESSION, INCONCLUSIVE, INCOMPARABLE = "pass", "regression", "inconclusive", "incomparable"
IMPROVEMENT = "improvement"
_MEMORY_LABELS = {"model_memory_mb": "memory MB", "gpu_peak_mb": "GPU MB",
                  "peak_rss_mb": "peak RSS MB"}


@dataclass(frozen=True)
class RegressionConfig:
    """Tolerances. Fractions for ratios (0.05 = 5%), percentage points for accuracy;
    `min_samples` is the number of rounds each side needs for a latency test."""

    max_regression: float = 0.05
    max_accuracy_drop: float = 0.5
    max_memory_growth: float = 0.10
    # RSS attribution on a CPU moves by a few MB between identical runs (allocator arenas: the same
    # 1 MB model measured 0.6 and 2.6 MB in an A/A pair here), so smaller growth is below what the
    # method can resolve and is not judged.
    min_memory_delta_mb: float = 8.0
    alpha: float = 0.01
    min_samples: int = 10
    allow_env_change: bool = False
    strict: bool = False
    bootstrap_resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_regression", "max_memory_growth", "max_accuracy_drop",
                     "min_memory_delta_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_samples < 2:
            raise ValueError(f"min_samples must be >= 2 rounds, got {self.min_samples}")
        if self.bootstrap_resamples < 100:
            raise ValueError(f"bootstrap_resamples must be >= 100, got {self.bootstrap_resamples}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RegressionCheck:
    """One metric of one (model, target, batch). `ratio` is current / baseline."""

    metric: str
    model: str
    target: str
    batch: Optional[int]
    status: str
    baseline: Optional[float]
    current: Optional[float]
    ratio: Optional[float]
    ci95: Optional[tuple[float, float]]
    p_value: Optional[float]
    rule: str
    note: str

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ci95"] = list(self.ci95) if self.ci95 else None
        return d


@dataclass(frozen=True)
class RegressionVerdict:
    """The outcome and every check behind it; `exit_code` follows docs/measuring.md."""

    outcome: str
    checks: tuple[RegressionCheck, ...]
    env_differences: dict[str, tuple[Any, Any]]
    notes: tuple[str, ...]
    config: RegressionConfig

    @property
    def exit_code(self) -> int:
        if self.outcome == REGRESSION:
            return 1
        if self.outcome == INCOMPARABLE:
            return 2
        if self.outcome == INCONCLUSIVE:
            return 2 if self.config.strict else 0
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "outcome": self.outcome,
            "exit_code": self.exit_code,
            "checks": [c.to_dict() for c in self.checks],
            "env_differences": {k: list(v) for k, v in self.env_differences.items()},
            "notes": list(self.notes),
            "config": self.config.to_dict(),
        }


def parse_fraction(text: str) -> float:
    """'5%' -> 0.05 and '0.05' -> 0.05. A bare number >= 1 is refused as ambiguous."""
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1].strip()) / 100.0
        else:
            value = float(raw)
            if value >= 1.0:
                raise InputError(f"{raw!r} is ambiguous: write '{raw}%' for percent or a "
                                 f"fraction such as {value / 100:g}")
    except ValueError:
        raise InputError(f"{raw!r} is not a percentage: write '5%' or '0.05'") from None
    if value < 0 or value != value:
        raise InputError(f"{raw!r} must be a non-negative percentage")
    return value


def compare(baseline: dict[str, Any], current: dict[str, Any],
            config: RegressionConfig = RegressionConfig()) -> RegressionVerdict:
    """Compare two `BenchResult.to_dict()` documents. Raises `IncomparableError` for a
    schema mismatch (the files cannot be read alike); returns outcome "incomparable" when the
    environments differ and `allow_env_change` is off."""
    for label, doc in (("baseline", baseline), ("current", current)):
        if not isinstance(doc, dict) or "entries" not in doc:
            raise InputError(f"the {label} is not an `edgeprune bench` result (no 'entries')")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise IncomparableError(
                f"the {label} has schema_version {doc.get('schema_version')!r}, this gate reads "
                f"{SCHEMA_VERSION}; re-run `edgeprune bench` to produce a {label} in this schema")
    differences = _env_differences(baseline, current)
    notes: list[str] = []
    if differences:
        listed = ", ".join(f"{k}: {b!r} -> {c!r}" for k, (b, c) in differences.items())
        if not config.allow_env_change:
            notes.append(f"environments differ ({listed}); re-measure the baseline on this "
                         "machine, or pass --allow-env-change to compare anyway")
            return RegressionVerdict(INCOMPARABLE, (), differences, tuple(notes), config)
        notes.append(f"environments differ ({listed}); compared anyway (--allow-env-change)")

    base_entries = {_key(e, baseline): e for e in baseline["entries"]}
    checks: list[RegressionCheck] = []
    matched = 0
    for entry in current["entries"]:
        key = _key(entry, current)
        base = base_entries.get(key)
        if base is None:
            notes.append(f"{key[0]} at batch {key[2]} on {key[1]} has no baseline entry")
            continue
        matched += 1
        checks.append(_latency_check(key, base, entry, config))
        memory = _memory_check(key, base, entry, config)
        if memory is not None:
            checks.append(memory)
    for model, before in (baseline.get("accuracy_pct") or {}).items():
        after = (current.get("accuracy_pct") or {}).get(model)
        if after is not None:
            checks.append(_accuracy_check(model, current.get("target", "?"), before, after, config))
    missing = set(base_entries) - {_key(e, current) for e in current["entries"]}
    for model, target, batch in sorted(missing, key=str):
        notes.append(f"{model} at batch {batch} on {target} is in the baseline but not measured now")

    if any(c.status == REGRESSION for c in checks):
        outcome = REGRESSION
    elif matched == 0 or any(c.status == INCONCLUSIVE for c in checks):
        outcome = INCONCLUSIVE
        if matched == 0:
            notes.append("no (model, target, batch) entry is in both files")
    else:
        outcome = PASS
    return RegressionVerdict(outcome, tuple(checks), differences, tuple(notes), config)


def _key(entry: dict[str, Any], doc: dict[str, Any]) -> tuple[str, str, int]:
    return (str(entry["model"]), str(entry.get("target", doc.get("target"))), int(entry["batch"]))


def _env_differences(baseline: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    fp_base = fingerprint(baseline.get("environment") or {}, baseline.get("target"))
    fp_cur = fingerprint(current.get("environment") or {}, current.get("target"))
    return {k: (fp_base.get(k), fp_cur.get(k)) for k in fp_base if fp_base.get(k) != fp_cur.get(k)}


def _latency_check(key: tuple[str, str, int], base: dict[str, Any], cur: dict[str, Any],
                   config: RegressionConfig) -> RegressionCheck:
    model, target, batch = key
    base_rounds = [r for r in base.get("samples_ms") or [] if len(r)]
    cur_rounds = [r for r in cur.get("samples_ms") or [] if len(r)]
    rule = (f"fail if p50 ratio > {1 + config.max_regression:.3g} and "
            f"Mann-Whitney p < {config.alpha:g} (per-round medians)")
    if len(base_rounds) < config.min_samples or len(cur_rounds) < config.min_samples:
        return RegressionCheck("p50 ms", model, target, batch, INCONCLUSIVE,
                         base.get("p50_ms"), cur.get("p50_ms"), None, None, None, rule,
                         f"too few rounds to test: {len(base_rounds)} baseline, "
                         f"{len(cur_rounds)} current, need {config.min_samples} each")
    base_p50, cur_p50 = stats.pooled_median(base_rounds), stats.pooled_median(cur_rounds)
    ratio = cur_p50 / base_p50
    base_med, cur_med = stats.round_medians(base_rounds), stats.round_medians(cur_rounds)
    p_slower = stats.mann_whitney_greater(cur_med, base_med)
    p_faster = stats.mann_whitney_greater(base_med, cur_med)
    ci = stats.bootstrap_median_ratio(cur_rounds, base_rounds, paired=False,
                                      n_resamples=config.bootstrap_resamples, seed=config.seed)
    large = ratio > 1.0 + config.max_regression
    if large and p_slower < config.alpha:
        status, note = REGRESSION, f"{ratio - 1:+.1%} slower and significant"
    elif ratio < 1.0 and p_faster < config.alpha:
        status, note = IMPROVEMENT, f"{1 - ratio:.1%} faster and significant"
    elif large:
        status, note = PASS, f"{ratio - 1:+.1%} but not significant (noise)"
    elif p_slower < config.alpha:
        status, note = PASS, f"{ratio - 1:+.1%}: significant but within tolerance"
    else:
        status, note = PASS, f"{ratio - 1:+.1%}: no significant change"
    return RegressionCheck("p50 ms", model, target, batch, status, base_p50, cur_p50, ratio, ci,
                     p_slower, rule, note)


def _memory_check(key: tuple[str, str, int], base: dict[str, Any], cur: dict[str, Any],
                  config: RegressionConfig) -> Optional[RegressionCheck]:
    model, target, batch = key
    for field_name in ("model_memory_mb", "gpu_peak_mb", "peak_rss_mb"):
        before, after = base.get(field_name), cur.get(field_name)
        if before is not None and after is not None:
            break
    else:
        return None
    delta = after - before
    ratio = after / before if before > 0 else None
    over = delta > config.min_memory_delta_mb and (ratio is None or ratio > 1 + config.max_memory_growth)
    rule = f"fail if growth > {config.max_memory_growth:.0%} and > {config.min_memory_delta_mb:g} MB"
    status = REGRESSION if over else (IMPROVEMENT if delta < -config.min_memory_delta_mb else PASS)
    return RegressionCheck(_MEMORY_LABELS[field_name], model, target, batch,
                     status, before, after, ratio, None, None, rule, f"{delta:+.1f} MB")


def _accuracy_check(model: str, target: str, before: float, after: float,
                    config: RegressionConfig) -> RegressionCheck:
    drop = before - after
    status = REGRESSION if drop > config.max_accuracy_drop else (IMPROVEMENT if drop < 0 else PASS)
    return RegressionCheck("accuracy %", model, target, None, status, before, after,
                     after / before if before else None, None, None,
                     f"fail if drop > {config.max_accuracy_drop:g} points", f"{-drop:+.2f} points")
