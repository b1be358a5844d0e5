"""Statistics for latency samples: percentiles, sample-count rules, bootstrap intervals, and the
gate's paired (per-round) and run-level intervals.

Samples come grouped by round (one burst of iterations of one model). Rounds are the unit of
resampling and testing: consecutive iterations are correlated, rounds much less so.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

#: percentiles reported by `edgeprune bench`, as (name, q in percent).
PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0),
                                              ("p99", 99.0))


def min_samples_for_percentile(q_percent: float, confidence: float = 0.99,
                               allowed_outliers: int = 1) -> int:
    """Smallest n for which the sample's upper order statistic bounds the true q-th percentile
    at `confidence` while allowing `allowed_outliers` slow samples (LoadGen's rule:
    64 samples for p90, 662 for p99)."""
    if not 0.0 < q_percent < 100.0:
        raise ValueError(f"percentile must be in (0, 100), got {q_percent}")
    p = q_percent / 100.0
    n = allowed_outliers + 1
    while True:
        # P(at most `allowed_outliers` of n samples fall above the true percentile)
        tail = sum(math.comb(n, k) * (1 - p) ** k * p ** (n - k) for k in range(allowed_outliers + 1))
        if tail <= 1.0 - confidence:
            return n
        n += 1


MIN_SAMPLES: dict[str, int] = {name: min_samples_for_percentile(q) for name, q in PERCENTILES}


def percentiles(samples: Sequence[float]) -> tuple[dict[str, Optional[float]], dict[str, str]]:
    """Percentiles as numpy's default (linear interpolation) computes them; a percentile with
    too few samples behind it is None, and the second dict says why."""
    values = np.asarray(samples, dtype=np.float64)
    result: dict[str, Optional[float]] = {}
    notes: dict[str, str] = {}
    for name, q in PERCENTILES:
        needed = MIN_SAMPLES[name]
        if values.size >= needed:
            result[name] = float(np.percentile(values, q))
        else:
            result[name] = None
            notes[name] = f"needs at least {needed} samples for a 99%-confidence bound, have {values.size}"
    return result, notes


def round_medians(rounds: Sequence[Sequence[float]]) -> np.ndarray:
    """Median of each non-empty round."""
    return np.array([float(np.median(r)) for r in rounds if len(r)], dtype=np.float64)


def pooled_median(rounds: Sequence[Sequence[float]]) -> float:
    return float(np.median(np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds])))


def bootstrap_median_ratio(numerator: Sequence[Sequence[float]],
                           denominator: Sequence[Sequence[float]], *, paired: bool,
                           n_resamples: int = 2000, confidence: float = 0.95,
                           seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(numerator) / median(denominator), resampling whole
    rounds (a cluster bootstrap). `paired` resamples the same round indices on both sides, for
    two models interleaved in one run, so drift shared by a round cancels."""
    num = [np.asarray(r, dtype=np.float64) for r in numerator if len(r)]
    den = [np.asarray(r, dtype=np.float64) for r in denominator if len(r)]
    if not num or not den:
        raise ValueError("bootstrap needs at least one non-empty round on each side")
    if paired and len(num) != len(den):
        raise ValueError("paired bootstrap needs the same number of rounds on both sides")
    rng = np.random.default_rng(seed)
    ratios = np.empty(n_resamples, dtype=np.float64)
    for i in range(n_resamples):
        idx_num = rng.integers(0, len(num), len(num))
        idx_den = idx_num if paired else rng.integers(0, len(den), len(den))
        med_num = np.median(np.concatenate([num[j] for j in idx_num]))
        med_den = np.median(np.concatenate([den[j] for j in idx_den]))
        ratios[i] = med_num / med_den
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(low), float(high)


# --- paired and run-level intervals (the gate's two modes) ---------------------------------


def paired_log_ratios(current: Sequence[Sequence[float]],
                      baseline: Sequence[Sequence[float]]) -> np.ndarray:
    """log(median of current's round r / median of baseline's round r) for every round pair.

    Two models interleaved in one process see the same drift within a round, so the per-round
    ratio cancels it; the rounds' medians are the unit (iterations inside a burst correlate)."""
    cur, base = round_medians(current), round_medians(baseline)
    if cur.size != base.size:
        raise ValueError(f"paired rounds differ in number: {cur.size} current, {base.size} baseline")
    return np.log(cur) - np.log(base)


def median_interval(values: Sequence[float], *, confidence: float, n_resamples: int = 2000,
                    seed: int = 0) -> tuple[float, float, float]:
    """(median, low, high): the median and its percentile-bootstrap interval (scipy.stats)."""
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=np.float64)
    if data.size < 2:
        raise ValueError("an interval needs at least two values")
    if np.all(data == data[0]):
        return float(data[0]), float(data[0]), float(data[0])
    result = bootstrap((data,), np.median, confidence_level=confidence, n_resamples=n_resamples,
                       method="percentile", vectorized=True, random_state=seed)
    ci = result.confidence_interval
    return float(np.median(data)), float(ci.low), float(ci.high)


def wilcoxon_greater(values: Sequence[float], shift: float = 0.0) -> float:
    """One-sided Wilcoxon signed-rank p-value that `values` tend to exceed `shift`."""
    from scipy.stats import wilcoxon

    data = np.asarray(values, dtype=np.float64) - shift
    if not np.any(data):
        return 1.0
    return float(wilcoxon(data, alternative="greater").pvalue)


def run_level_interval(current: Sequence[float], baseline: Sequence[float], *,
                       confidence: float) -> tuple[float, float, float, float]:
    """(difference of means, low, high, baseline SD) of log run-level figures, one per bench process.

    Runs made close together (one CI job) share that moment's machine drift, so their spread
    understates how far two builds measured at different times can differ: a two-sample t test on
    them raised 2-4% A/A false alarms here (issue 14). The baseline's runs are its history, made
    at different times (separate CI jobs), so their spread holds the drift between jobs; the
    current side's mean, from one job, counts as one such run. The interval is therefore a
    prediction interval: diff ± t(n_b - 1) · s_b · sqrt(1 + 1/n_b)."""
    from scipy.stats import t as student_t

    cur, base = np.asarray(current, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if base.size < 2 or cur.size < 1:
        raise ValueError("a run-level interval needs at least two baseline runs and one current run")
    diff = float(cur.mean() - base.mean())
    sd = float(base.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2, base.size - 1)) * sd * float(np.sqrt(1.0 + 1.0 / base.size))
    return diff, diff - half, diff + half, sd
