"""What `edgeprune bench` output must say about its own figures: the export's rules, per entry.

Reads a bench result as bench.json holds it (`BenchResult.to_dict()`) and judges through the
same `Thresholds` as the export report: noisy timings, percentiles from too few samples, a
speedup inside the noise, and a model that ran on another device than its target names.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

from edgeprune.report.findings import Finding
from edgeprune.report.rules import GPU_DEVICES
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS, MIN_SAMPLES, Thresholds, comparison_cv

BenchRule = Callable[[Mapping[str, Any], Optional[Mapping[str, Any]], Thresholds], list[Finding]]


def number(mapping: Any, key: str) -> Optional[float]:
    """The finite number under `key`, or None when absent, null or not a number."""
    value = mapping.get(key) if isinstance(mapping, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _entries(bench: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [e for e in bench.get("entries") or [] if isinstance(e, Mapping)]


def _where(entry: Mapping[str, Any]) -> str:
    return f"{entry.get('model', '?')} batch {entry.get('batch', '?')}"


def entry_noise_cv(entry: Mapping[str, Any]) -> Optional[float]:
    """The CV a bench entry is judged on: of its per-round medians when it has two rounds or
    more (a single round has no spread between rounds), else of its single iterations."""
    rounds = number(entry, "rounds")
    round_cv = number(entry, "round_median_cv") if rounds is not None and rounds >= 2 else None
    return comparison_cv(round_cv, number(entry, "cv"))


def bench_timing_noise(bench: Mapping[str, Any], target: Optional[Mapping[str, Any]],
                       t: Thresholds) -> list[Finding]:
    """A noisy entry is unreliable; spikes in single iterations alone are information."""
    findings = []
    for entry in _entries(bench):
        cv, iteration_cv = entry_noise_cv(entry), number(entry, "cv")
        if cv is None:
            continue
        figures = {"model": entry.get("model"), "batch": entry.get("batch"), "cv": cv, "cv_max": t.timing_cv_max}
        if t.is_noisy(cv):
            findings.append(Finding(
                "bench_timing_noise", "warn", f"{_where(entry)}: timings unreliable",
                f"Coefficient of variation {cv * 100:.1f}% is over {t.timing_cv_max * 100:.0f}%; the "
                "machine was busy or throttling. Re-run on a quiet machine before trusting it.", figures))
        elif iteration_cv is not None and t.is_noisy(iteration_cv):
            findings.append(Finding(
                "bench_timing_noise", "info", f"{_where(entry)}: latency spikes in single iterations",
                f"Single-iteration CV {iteration_cv * 100:.1f}%, per-round medians {cv * 100:.1f}%: rare "
                "slow iterations widen p99 but not the medians.", {**figures, "iteration_cv": iteration_cv}))
    return findings


def bench_tail_samples(bench: Mapping[str, Any], target: Optional[Mapping[str, Any]],
                       t: Thresholds) -> list[Finding]:
    """A percentile from too few samples is a guess; say which were not reported and why."""
    findings = []
    for entry in _entries(bench):
        n = number(entry, "n")
        if n is None:
            continue
        short = {name: need for name, need in MIN_SAMPLES.items() if name != "p50" and n < need}
        if short:
            findings.append(Finding(
                "bench_tail_samples", "info", f"{_where(entry)}: {', '.join(short)} not reported",
                f"{int(n)} timed samples; a 99%-confidence bound needs "
                + ", ".join(f"{need} for {name}" for name, need in short.items())
                + ". Raise --min-iterations.",
                {"model": entry.get("model"), "batch": entry.get("batch"), "n": n, "needed": short}))
    return findings


def bench_speedup(bench: Mapping[str, Any], target: Optional[Mapping[str, Any]],
                  t: Thresholds) -> list[Finding]:
    """Each interleaved comparison is judged like the export's speedup."""
    findings = []
    for c in bench.get("comparisons") or []:
        value, ci = number(c, "speedup"), c.get("speedup_ci95")
        if value is None:
            continue
        ci = tuple(float(x) for x in ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
        pair = f"{c.get('candidate')} vs {c.get('baseline')} at batch {c.get('batch')}"
        interval = f"95% interval {ci[0]:.2f}–{ci[1]:.2f}×" if ci else "no interval recorded"
        figures = {"comparison": pair, "speedup": value, "speedup_ci95": ci}
        judgement = t.judge_speedup(value, ci)
        if judgement == "within_noise":
            findings.append(Finding("bench_speedup", "warn", f"{pair}: no measurable speedup",
                                    f"{value:.2f}× is within the noise ({interval}).", figures))
        elif judgement == "slower":
            findings.append(Finding("bench_speedup", "fail", f"{pair}: slower than the baseline",
                                    f"{value:.2f}× ({interval}): the candidate is slower on this target.",
                                    figures))
        else:
            findings.append(Finding("bench_speedup", "ok", f"{pair}: speedup {value:.2f}×",
                                    f"{value:.2f}× ({interval}).", figures))
    return findings


def _device_kind(device: str) -> str:
    device = device.lower()
    return "gpu" if any(d in device for d in GPU_DEVICES) else "cpu"


def bench_device(bench: Mapping[str, Any], target: Optional[Mapping[str, Any]],
                 t: Thresholds) -> list[Finding]:
    """A latency measured on the CPU is not the GPU target's latency, nor the other way round."""
    if not isinstance(target, Mapping) or not target.get("device"):
        return []
    wanted = str(target["device"])
    elsewhere = [e for e in _entries(bench) if e.get("device")
                 and _device_kind(str(e["device"])) != _device_kind(wanted)]
    if not elsewhere:
        return []
    shown = ", ".join(f"{_where(e)} on {e['device']}" for e in elsewhere)
    return [Finding(
        "bench_device", "fail", f"ran off target: target {target.get('name', '?')} is {wanted}",
        f"These timings were not taken where the target says ({wanted}): {shown}. They are not the "
        "target's latency; install the runtime the target needs or pick the matching target.",
        {"target_device": wanted, "entries": [_where(e) for e in elsewhere]})]


BENCH_RULES: list[BenchRule] = [bench_device, bench_timing_noise, bench_tail_samples, bench_speedup]


def evaluate_bench(bench: Mapping[str, Any], target: Any = None,
                   thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[Finding]:
    """Run every rule in `BENCH_RULES`; `target` is a Target, its dict, or None (no device rule)."""
    if target is not None and not isinstance(target, Mapping):
        target = target.to_dict() if hasattr(target, "to_dict") else None
    return [finding for rule in BENCH_RULES for finding in rule(bench, target, thresholds)]
