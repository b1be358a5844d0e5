"""The CI gate: is `current` a regression against `baseline`?

Two modes, one rule. Paired mode (`compare_paired`): both models ran interleaved in one process,
and the interval is over per-round ratios, which cancel the drift both sides saw. Stored-baseline
mode (`compare_runs`): bench files of separate processes, and the interval is over run-level p50s,
so the drift *between* runs is in it (per-round medians of two processes are not samples of one
distribution on a drifting machine: a U test on them was confidently wrong, issue 14). Either
way: fail when the interval's low end is over 1 + max_regression, pass when its high end is
under, else `inconclusive` with the figure that made it so. Improvements never fail. Exact memory
figures (weight and activation bytes) and accuracy take plain thresholds. Results from different
machines, runtimes, thread counts or targets are not compared (outcome "incomparable").
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from edgeprune.measure import stats
from edgeprune.measure.results import SCHEMA_VERSION
from edgeprune.measure.environment import fingerprint
from edgeprune.measure.memory import ATTRIBUTION_RESOLUTION_MB
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
    min_memory_delta_mb: float = ATTRIBUTION_RESOLUTION_MB
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
    """One metric of one (model, target, batch). `ratio` is current / baseline; `interval` is
    its interval at `confidence`, `spread` the noise figure behind it (per-round IQR in paired
    mode, run-to-run SD in stored mode) and `samples` the paired rounds or runs it rests on."""

    metric: str
    model: str
    target: str
    batch: Optional[int]
    status: str
    baseline: Optional[float]
    current: Optional[float]
    ratio: Optional[float]
    interval: Optional[tuple[float, float]]
    p_value: Optional[float]
    rule: str
    note: str
    confidence: Optional[float] = None
    spread: Optional[float] = None
    samples: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["interval"] = list(self.interval) if self.interval else None
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
    """Stored-baseline mode with one bench file per side: see `compare_runs`."""
    return compare_runs([baseline], [current], config)


def compare_runs(baselines: Sequence[dict[str, Any]], currents: Sequence[dict[str, Any]],
                 config: RegressionConfig = RegressionConfig()) -> RegressionVerdict:
    """Stored-baseline mode: `BenchResult.to_dict()` documents of several separate bench runs per
    side, judged on run-level p50s (one per process) so that the spread *between* runs, which a
    shared runner adds, is in the test. One run per side leaves that spread unknown: the latency
    check is then `inconclusive`. Raises `IncomparableError` for a schema mismatch; returns
    outcome "incomparable" when the environments differ and `allow_env_change` is off."""
    if not baselines or not currents:
        raise InputError("the gate needs at least one baseline and one current bench file")
    for label, docs in (("baseline", baselines), ("current", currents)):
        for doc in docs:
            _check_doc(doc, label)
    notes: list[str] = []
    baselines, dropped = _distinct(baselines, ())
    currents, dropped_current = _distinct(currents, baselines)
    if dropped or dropped_current:
        notes.append(f"{dropped + dropped_current} bench file(s) given more than once (or on both sides) "
                     "counted once: a repeated run is not a second measurement")
    if not currents:
        raise InputError("every current bench file is also a baseline file: pass the current job's own bench file")
    differences: dict[str, tuple] = {}
    for doc in list(baselines[1:]) + list(currents):
        for k, v in _env_differences(baselines[0], doc).items():
            differences.setdefault(k, v)
    if differences:
        listed = ", ".join(f"{k}: {b!r} -> {c!r}" for k, (b, c) in differences.items())
        if not config.allow_env_change:
            notes.append(f"environments differ ({listed}); re-measure the baseline on this "
                         "machine, or pass --allow-env-change to compare anyway")
            return RegressionVerdict(INCOMPARABLE, (), differences, tuple(notes), config)
        notes.append(f"environments differ ({listed}); compared anyway (--allow-env-change)")

    baseline, current = baselines[-1], currents[-1]
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
        checks.append(_run_level_check(key, _run_p50s(baselines, key), _run_p50s(currents, key),
                                       config))
        checks.extend(_memory_checks(key, base, entry, config))
    checks.extend(_accuracy_checks(baseline, current, config))
    missing = set(base_entries) - {_key(e, current) for e in current["entries"]}
    for model, target, batch in sorted(missing, key=str):
        notes.append(f"{model} at batch {batch} on {target} is in the baseline but not measured now")
    if matched == 0:
        notes.append("no (model, target, batch) entry is in both files")
    return RegressionVerdict(_outcome(checks, matched), tuple(checks), differences, tuple(notes),
                             config)


def compare_paired(result: dict[str, Any], config: RegressionConfig = RegressionConfig(), *,
                   baseline: str = "baseline", current: str = "current") -> RegressionVerdict:
    """Paired mode: one `BenchResult.to_dict()` in which the models `baseline` and `current` ran
    interleaved, round by round, in one process. Each round's ratio of medians sees the drift of
    that moment on both sides, so the test is on those per-round ratios."""
    _check_doc(result, "paired")
    entries = {(str(e["model"]), int(e["batch"])): e for e in result["entries"]}
    target = str(result.get("target"))
    checks: list[RegressionCheck] = []
    notes: list[str] = []
    batches = sorted({b for (_, b) in entries})
    matched = 0
    for batch in batches:
        base, cur = entries.get((baseline, batch)), entries.get((current, batch))
        if base is None or cur is None:
            notes.append(f"batch {batch} lacks the {baseline if base is None else current} model")
            continue
        matched += 1
        key = ("model", target, batch)
        checks.append(_paired_check(key, base, cur, config))
        checks.extend(_memory_checks(key, base, cur, config))
    return RegressionVerdict(_outcome(checks, matched), tuple(checks), {}, tuple(notes), config)


def _outcome(checks: Sequence[RegressionCheck], matched: int) -> str:
    if any(c.status == REGRESSION for c in checks):
        return REGRESSION
    if matched == 0 or any(c.status == INCONCLUSIVE for c in checks):
        return INCONCLUSIVE
    return PASS


def _check_doc(doc: Any, label: str) -> None:
    if not isinstance(doc, dict) or "entries" not in doc:
        raise InputError(f"the {label} is not an `edgeprune bench` result (no 'entries')")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise IncomparableError(
            f"the {label} has schema_version {doc.get('schema_version')!r}, this gate reads "
            f"{SCHEMA_VERSION}; re-run `edgeprune bench` to produce a {label} in this schema")


def _key(entry: dict[str, Any], doc: dict[str, Any]) -> tuple[str, str, int]:
    return (str(entry["model"]), str(entry.get("target", doc.get("target"))), int(entry["batch"]))


def _env_differences(baseline: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple]:
    fp_base = fingerprint(baseline.get("environment") or {}, baseline.get("target"))
    fp_cur = fingerprint(current.get("environment") or {}, current.get("target"))
    return {k: (fp_base.get(k), fp_cur.get(k)) for k in fp_base if fp_base.get(k) != fp_cur.get(k)}


def _run_p50s(docs: Sequence[dict[str, Any]], key: tuple[str, str, int]) -> list[float]:
    """The pooled p50 of `key` in each run (document) that measured it with enough rounds."""
    values = []
    for doc in docs:
        for entry in doc["entries"]:
            if _key(entry, doc) == key:
                rounds = [r for r in entry.get("samples_ms") or [] if len(r)]
                if rounds:
                    values.append(stats.pooled_median(rounds))
                elif entry.get("p50_ms"):
                    values.append(float(entry["p50_ms"]))
    return values


def _judge(ratio: float, low: float, high: float, config: RegressionConfig, spread: str
           ) -> tuple[str, str]:
    """Interval rule of both modes: fail when the whole interval is over the threshold, pass when
    it is under, else inconclusive, naming the figure that made it so."""
    limit = 1.0 + config.max_regression
    if low > limit:
        return REGRESSION, f"{ratio - 1:+.1%} slower; even the interval's low end {low:.3f} is over {limit:.3g}"
    if high < 1.0:
        return IMPROVEMENT, f"{1 - ratio:.1%} faster (interval {low:.3f}–{high:.3f})"
    if high <= limit:
        return PASS, f"{ratio - 1:+.1%}: the interval's high end {high:.3f} is within {limit:.3g}"
    return INCONCLUSIVE, (f"{ratio - 1:+.1%}: interval {low:.3f}–{high:.3f} straddles {limit:.3g} "
                          f"({spread}); lengthen the measurement or use paired mode")


def detectable_slowdown(ratio: float, low: float, config: RegressionConfig) -> float:
    """The smallest slow-down whose interval, as wide as this one, would clear the threshold:
    (1 + threshold) * ratio / low - 1 (the interval scales with the ratio on the log scale)."""
    return (1.0 + config.max_regression) * ratio / low - 1.0 if low > 0 else math.inf


def _paired_check(key: tuple[str, str, int], base: dict[str, Any], cur: dict[str, Any],
                  config: RegressionConfig) -> RegressionCheck:
    model, target, batch = key
    base_rounds = [r for r in base.get("samples_ms") or [] if len(r)]
    cur_rounds = [r for r in cur.get("samples_ms") or [] if len(r)]
    confidence = 1.0 - 2.0 * config.alpha
    rule = (f"paired: per-round log ratio of medians, {confidence:.0%} bootstrap interval of its "
            f"median; fail if low end > {1 + config.max_regression:.3g}, pass if high end <= it")
    n = min(len(base_rounds), len(cur_rounds))
    if n < config.min_samples or len(base_rounds) != len(cur_rounds):
        return RegressionCheck("p50 ms", model, target, batch, INCONCLUSIVE, base.get("p50_ms"),
                               cur.get("p50_ms"), None, None, None, rule,
                               f"{len(base_rounds)} baseline and {len(cur_rounds)} current rounds; "
                               f"need {config.min_samples} paired rounds")
    logs = stats.paired_log_ratios(cur_rounds, base_rounds)
    mid, low, high = stats.median_interval(logs, confidence=confidence,
                                           n_resamples=config.bootstrap_resamples, seed=config.seed)
    ratio, lo, hi = math.exp(mid), math.exp(low), math.exp(high)
    spread = float(np.quantile(logs, 0.75) - np.quantile(logs, 0.25))
    p = stats.wilcoxon_greater(logs, math.log1p(config.max_regression))
    status, note = _judge(ratio, lo, hi, config,
                          f"per-round ratios spread by {math.expm1(spread):.1%} (IQR) over {logs.size} rounds; "
                          f"slow-downs under {detectable_slowdown(ratio, lo, config):+.0%} cannot fail at this spread")
    return RegressionCheck("p50 ms", model, target, batch, status, base.get("p50_ms"),
                           cur.get("p50_ms"), ratio, (lo, hi), p, rule, note, confidence,
                           math.expm1(spread), int(logs.size))


def _distinct(docs: Sequence[dict[str, Any]], seen_elsewhere: Sequence[dict[str, Any]]):
    """`docs` without repeats (and without any document also in `seen_elsewhere`), and how many
    were dropped: one run passed twice would shrink the spread between runs to nothing."""
    seen = {json.dumps(d, sort_keys=True, default=str) for d in seen_elsewhere}
    kept = []
    for doc in docs:
        key = json.dumps(doc, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            kept.append(doc)
    return kept, len(docs) - len(kept)


def _run_level_check(key: tuple[str, str, int], base_runs: Sequence[float],
                     cur_runs: Sequence[float], config: RegressionConfig) -> RegressionCheck:
    model, target, batch = key
    confidence = 1.0 - 2.0 * config.alpha
    rule = (f"stored baseline: {confidence:.0%} prediction interval of the ratio of run-level p50s "
            f"(one per bench process; the baseline runs' spread, the current side counted as one run); "
            f"fail if low end > {1 + config.max_regression:.3g}, pass if high end <= it")
    base_p50 = float(np.exp(np.mean(np.log(base_runs)))) if base_runs else None
    cur_p50 = float(np.exp(np.mean(np.log(cur_runs)))) if cur_runs else None
    ratio = cur_p50 / base_p50 if base_p50 and cur_p50 else None
    if len(base_runs) < 2 or not cur_runs:
        note = (f"{len(base_runs)} baseline and {len(cur_runs)} current run(s): the spread between "
                "runs is unknown; pass --baseline several times with bench files of separate earlier "
                "jobs (5 or more) or use paired mode (--baseline-model/--current-model)")
        return RegressionCheck("p50 ms", model, target, batch, INCONCLUSIVE, base_p50, cur_p50,
                               ratio, None, None, rule, note, confidence, None, 0)
    diff, low, high, sd = stats.run_level_interval(np.log(cur_runs), np.log(base_runs),
                                                   confidence=confidence)
    if sd == 0.0:  # identical p50s in separate runs: not a spread that was measured
        return RegressionCheck("p50 ms", model, target, batch, INCONCLUSIVE, base_p50, cur_p50, ratio,
                               None, None, rule, "the baseline runs' p50s are identical, so their spread "
                               "is unknown; pass bench files of separate earlier jobs", confidence, None, 0)
    ratio, lo, hi = math.exp(diff), math.exp(low), math.exp(high)
    status, note = _judge(ratio, lo, hi, config,
                          f"run-to-run spread {math.expm1(sd):.1%} (SD) over {len(base_runs)} baseline "
                          f"runs; slow-downs under {detectable_slowdown(ratio, lo, config):+.0%} cannot fail "
                          "at this spread")
    return RegressionCheck("p50 ms", model, target, batch, status, base_p50, cur_p50, ratio,
                           (lo, hi), None, rule, note, confidence, math.expm1(sd),
                           len(base_runs) + len(cur_runs))


#: exact, deterministic figures (computed from the ONNX graph), judged with a plain threshold.
_EXACT_MEMORY = {"weight_bytes": "weight bytes", "activation_bytes": "activation bytes"}


def _memory_checks(key: tuple[str, str, int], base: dict[str, Any], cur: dict[str, Any],
                   config: RegressionConfig) -> list[RegressionCheck]:
    model, target, batch = key
    checks = []
    for field_name, label in _EXACT_MEMORY.items():
        before, after = base.get(field_name), cur.get(field_name)
        if before is None or after is None:
            continue
        ratio = after / before if before > 0 else None
        over = after > before and (ratio is None or ratio > 1 + config.max_memory_growth)
        status = REGRESSION if over else (IMPROVEMENT if after < before else PASS)
        checks.append(RegressionCheck(label, model, target, batch, status, float(before),
                                      float(after), ratio, None, None,
                                      f"fail if growth > {config.max_memory_growth:.0%} (exact figure)",
                                      f"{after - before:+,d} bytes"))
    rss = _memory_check(key, base, cur, config)
    if rss is not None:
        checks.append(rss)
    return checks


def _accuracy_checks(baseline: dict[str, Any], current: dict[str, Any],
                     config: RegressionConfig) -> list[RegressionCheck]:
    checks = []
    for model, before in (baseline.get("accuracy_pct") or {}).items():
        after = (current.get("accuracy_pct") or {}).get(model)
        if after is not None:
            checks.append(_accuracy_check(model, current.get("target", "?"), before, after, config))
    return checks


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
