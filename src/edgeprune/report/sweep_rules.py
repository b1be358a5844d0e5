"""The sweep's verdict: the export's rules, applied to a grid of pruned models.

A sweep recommends an operating point ("keep 0.3 is within 1 pt of dense"); that sentence is
only as good as the dense model it is measured against and the seeds behind it. The rules here
read the sweep as sweep.json holds it (plain dicts, accuracies in percent) and judge through the
same `Thresholds` as the export report, so a CI job can re-judge a sweep from the file alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from edgeprune.report.findings import Finding, Verdict, verdict
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS, EPS, Thresholds, comparison_cv

#: sweep points named in one finding before "and N more"
_SHOWN = 6


@dataclass(frozen=True)
class SweepEvidence:
    """What the sweep rules read. `candidate` is the point the tolerance rule picks on mean
    accuracy (`sweep_stats.operating_point`), before any rule has judged it."""

    dense: Sequence[Mapping[str, Any]]  # {"name", "accuracy_pct"} per dense model
    chance_accuracy_pct: Optional[float]
    aggregates: Sequence[Mapping[str, Any]]  # AggregateRow.to_dict()
    records: Sequence[Mapping[str, Any]]  # SweepRecord.to_dict()
    candidate: Optional[Mapping[str, Any]]  # OperatingPoint.to_dict()
    tolerance_points: float
    finetune_epochs: int
    thresholds: Thresholds = DEFAULT_THRESHOLDS

    @property
    def dense_accuracy_pct(self) -> float:
        return sum(float(d["accuracy_pct"]) for d in self.dense) / len(self.dense)


@dataclass(frozen=True)
class SweepJudgement:
    """The findings, the verdict derived from them, and whether the candidate is recommended."""

    findings: tuple[Finding, ...]
    verdict: Verdict
    recommended: bool

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict.to_dict(), "operating_point_recommended": self.recommended,
                "findings": [f.to_dict() for f in self.findings]}


SweepRule = Callable[[SweepEvidence], list[Finding]]


def _label(row: Mapping[str, Any]) -> str:
    return f"keep {float(row['keep']):g} {row['criterion']}"


def _listed(items: Sequence[str]) -> str:
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return "; ".join(items[:_SHOWN]) + more


# --- the dense baseline ------------------------------------------------------------------------


def dense_untrained(ev: SweepEvidence) -> list[Finding]:
    """A dense model near chance never learned: no keep ratio can be judged against it."""
    if ev.chance_accuracy_pct is None:
        return []
    t, chance = ev.thresholds, ev.chance_accuracy_pct / 100.0
    margin = t.chance_margin(chance)
    untrained = [d for d in ev.dense if t.looks_untrained(float(d["accuracy_pct"]) / 100.0, chance)]
    figures = {"chance_accuracy_pct": ev.chance_accuracy_pct, "margin_points": margin * 100.0,
               "dense_accuracy_pct": {str(d["name"]): d["accuracy_pct"] for d in ev.dense}}
    if untrained:
        shown = ", ".join(f"{d['name']} {float(d['accuracy_pct']):.2f}%" for d in untrained)
        return [Finding(
            "dense_untrained", "fail", "the dense model looks untrained",
            f"Dense accuracy ({shown}) is no more than {margin * 100:.1f} points above chance "
            f"({ev.chance_accuracy_pct:.1f}%): the dense model never learned, so no keep ratio can "
            "be judged against it and no operating point is recommended. Train it for more epochs "
            "(edgeprune train --epochs N) and sweep again.", figures)]
    return [Finding("dense_untrained", "ok", "dense accuracy above chance",
                    f"Dense accuracy {ev.dense_accuracy_pct:.2f}% is "
                    f"{ev.dense_accuracy_pct - ev.chance_accuracy_pct:.1f} points above chance "
                    f"({ev.chance_accuracy_pct:.1f}%).", figures)]


def dense_undertrained(ev: SweepEvidence) -> list[Finding]:
    """Fine-tuned pruned models that beat dense by more than the noise: the baseline had not
    finished training, and the fine-tune's extra epochs are what the comparison measures."""
    if ev.finetune_epochs == 0:
        return []
    t, dense = ev.thresholds, ev.dense_accuracy_pct
    beaten = []
    for row in ev.aggregates:
        acc = row["accuracy_pct"]
        low = acc.get("ci95_low")
        if t.beats_dense(acc["mean"] / 100.0, dense / 100.0, None if low is None else low / 100.0):
            seeds = f"{acc['n']} seeds, 95% interval from {low:.1f}%" if low is not None else "1 seed"
            beaten.append((row, f"{_label(row)} {acc['mean']:.1f}% ({seeds})"))
    figures = {"dense_accuracy_pct": dense, "beats_dense_points": t.beats_dense_points,
               "beaten_by": [{"criterion": r["criterion"], "keep": r["keep"],
                              "accuracy_pct": r["accuracy_pct"]["mean"]} for r, _ in beaten]}
    if not beaten:
        return [Finding("dense_undertrained", "ok", "no pruned model beats dense beyond the noise",
                        f"No fine-tuned pruned model is more than {t.beats_dense_points:.1f} points "
                        f"above dense ({dense:.2f}%) outside its seed interval.", figures)]
    epochs = ev.finetune_epochs
    return [Finding(
        "dense_undertrained", "warn", "the dense baseline looks under-trained",
        f"After {epochs} fine-tune epoch(s), pruned models beat dense ({dense:.2f}%) by more than "
        f"{t.beats_dense_points:.1f} points (and, with several seeds, by more than their 95% interval): "
        + _listed([text for _, text in beaten])
        + ". A model cut from the dense one should not beat it: the dense model had not finished "
        "training, and the gain is the extra epochs. Train the dense model for more epochs, or "
        f"compare against the dense model fine-tuned for the same {epochs} extra epoch(s); no "
        "operating point is recommended against this baseline.", figures)]


def baseline_problem(ev: SweepEvidence) -> Optional[Finding]:
    """The finding that makes the dense baseline unusable for a recommendation, if any."""
    for rule in (dense_untrained, dense_undertrained):
        for finding in rule(ev):
            if finding.severity in ("warn", "fail"):
                return finding
    return None


# --- the operating point -----------------------------------------------------------------------


def _cell(ev: SweepEvidence, criterion: str, keep: float) -> Optional[Mapping[str, Any]]:
    return next((r for r in ev.aggregates if r["criterion"] == criterion
                 and math.isclose(float(r["keep"]), keep)), None)


def _cell_records(ev: SweepEvidence, criterion: str, keep: float) -> list[Mapping[str, Any]]:
    return [r for r in ev.records if r["criterion"] == criterion and math.isclose(float(r["keep"]), keep)]


def operating_point(ev: SweepEvidence) -> list[Finding]:
    """'Within tolerance of dense' needs a trained baseline and an accuracy interval over seeds."""
    tolerance, dense = ev.tolerance_points, ev.dense_accuracy_pct
    point = ev.candidate
    blocked = baseline_problem(ev)
    if point is None:
        return [Finding("operating_point", "info", "no operating point within tolerance",
                        f"none: no keep ratio stays within {tolerance:g} point(s) of dense "
                        f"({dense:.2f}%) on average.", {"tolerance_points": tolerance})]
    name = f"keep {float(point['keep']):g} with {point['criterion']}"
    if blocked is not None:
        return [Finding(
            "operating_point", "info", "no operating point recommended",
            f"none recommended: {blocked.title}. The tolerance rule would pick {name} "
            f"({point['accuracy_pct']:.2f}% vs dense {dense:.2f}%), but 'within {tolerance:g} pt' of "
            "such a baseline says nothing.", {"candidate": dict(point), "blocked_by": blocked.rule_id})]
    row = _cell(ev, point["criterion"], float(point["keep"]))
    acc = row["accuracy_pct"] if row is not None else {"n": 1, "ci95_low": None, "ci95_high": None}
    floor = dense - tolerance
    head = (f"{name} ({100 * float(point['sparsity']):.0f}% of parameters removed): "
            f"{point['accuracy_pct']:.2f}% vs dense {dense:.2f}%")
    speed = _speed_words(ev, point)
    figures = {"candidate": dict(point), "n_seeds": acc["n"], "accuracy_ci95_pct":
               [acc["ci95_low"], acc["ci95_high"]], "floor_pct": floor}
    if acc["n"] < 2 or acc["ci95_low"] is None:
        return [Finding(
            "operating_point", "warn", "operating point rests on one seed",
            f"{head} on one seed, so its accuracy interval is unknown and 'within {tolerance:g} pt' "
            f"is not established{speed}. Run --seeds 3 before relying on it.", figures)]
    interval = f"95% interval {acc['ci95_low']:.1f}–{acc['ci95_high']:.1f}% over {acc['n']} seeds"
    if acc["ci95_low"] >= floor - EPS:
        return [Finding("operating_point", "ok", f"operating point {name}",
                        f"{head} (within {tolerance:g} pt; {interval}){speed}.", figures)]
    return [Finding(
        "operating_point", "warn", "operating point not established within tolerance",
        f"{head}: the mean is within {tolerance:g} pt but the {interval} reaches below dense − "
        f"{tolerance:g} ({floor:.2f}%){speed}. Run more seeds or choose a higher keep ratio.", figures)]


# --- latency of every sweep point --------------------------------------------------------------


def _record_cvs(latency: Mapping[str, Any]) -> dict[str, float]:
    cvs = {label: comparison_cv(latency.get(f"{label}_round_median_cv"), latency.get(f"{label}_cv"))
           for label in ("dense", "pruned")}
    return {k: float(v) for k, v in cvs.items() if v is not None}


def _record_speedup(ev: SweepEvidence, record: Mapping[str, Any]) -> str:
    """The export's speedup judgement, applied to one sweep run's interleaved comparison."""
    latency = record["latency"]
    ci = latency.get("speedup_ci95")
    ci = tuple(float(x) for x in ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    cv = max(_record_cvs(latency).values(), default=None) if ci is None else None
    return ev.thresholds.judge_speedup(float(latency["speedup"]), ci, cv)


def _timed(ev: SweepEvidence) -> list[Mapping[str, Any]]:
    return [r for r in ev.records if r.get("latency") and r["latency"].get("speedup") is not None]


def _run_words(record: Mapping[str, Any]) -> str:
    latency = record["latency"]
    ci = latency.get("speedup_ci95")
    interval = f", 95% interval {ci[0]:.2f}–{ci[1]:.2f}×" if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""
    return f"{_label(record)} seed {record['seed']} ({float(latency['speedup']):.2f}×{interval})"


def _speed_words(ev: SweepEvidence, point: Mapping[str, Any]) -> str:
    records = [r for r in _cell_records(ev, point["criterion"], float(point["keep"])) if r in _timed(ev)]
    if not records or point.get("speedup") is None:
        return ""
    judged = {_record_speedup(ev, r) for r in records}
    lows = [r["latency"]["speedup_ci95"][0] for r in records if r["latency"].get("speedup_ci95")]
    highs = [r["latency"]["speedup_ci95"][1] for r in records if r["latency"].get("speedup_ci95")]
    spread = f"95% intervals {min(lows):.2f}–{max(highs):.2f}×" if lows else "no interval recorded"
    if judged == {"faster"}:
        return f", {point['speedup']:.2f}x faster ({spread})"
    if "slower" in judged:
        return f", slower than dense: {point['speedup']:.2f}x ({spread})"
    return f", no measurable speedup: {point['speedup']:.2f}x ({spread}, within the noise)"


def sweep_speedup(ev: SweepEvidence) -> list[Finding]:
    """Every sweep point's speedup is judged like an export's; the recommended point's decides."""
    timed = _timed(ev)
    if not timed:
        return []
    judged = [(r, _record_speedup(ev, r)) for r in timed]
    point = ev.candidate if baseline_problem(ev) is None else None
    at_point = [(r, j) for r, j in judged if point is not None and r["criterion"] == point["criterion"]
                and math.isclose(float(r["keep"]), float(point["keep"]))]
    findings = []
    slower_at = [_run_words(r) for r, j in at_point if j == "slower"]
    noise_at = [_run_words(r) for r, j in at_point if j in ("within_noise", "no_noise_estimate")]
    if slower_at:
        findings.append(Finding("sweep_speedup", "fail", "slowdown at the operating point",
                                "The recommended point runs slower than dense: " + _listed(slower_at)
                                + ". Try --round-to 8/16 or a lower keep ratio.", {"runs": slower_at}))
    elif noise_at:
        findings.append(Finding("sweep_speedup", "warn", "no measurable speedup at the operating point",
                                "The recommended point's speedup is within the timing noise: "
                                + _listed(noise_at) + ".", {"runs": noise_at}))
    elsewhere = [(r, j) for r, j in judged if (r, j) not in at_point]
    slower = [_run_words(r) for r, j in elsewhere if j == "slower"]
    noise = [_run_words(r) for r, j in elsewhere if j in ("within_noise", "no_noise_estimate")]
    if slower:
        findings.append(Finding("sweep_speedup", "info", f"slower than dense at {len(slower)} sweep run(s)",
                                "Pruned slower than dense (outside the noise): " + _listed(slower) + ".",
                                {"runs": slower}))
    if noise:
        findings.append(Finding("sweep_speedup", "info", f"no measurable speedup at {len(noise)} sweep run(s)",
                                "Speedup within the timing noise: " + _listed(noise) + ".", {"runs": noise}))
    if not findings:
        findings.append(Finding("sweep_speedup", "ok", "every sweep run is faster than dense",
                                f"All {len(timed)} timed runs are faster than dense outside their 95% "
                                "interval.", {"runs": len(timed)}))
    return findings


def sweep_timing_noise(ev: SweepEvidence) -> list[Finding]:
    """Each run's dense and pruned timings are judged on the export's CV limit."""
    timed = _timed(ev)
    if not timed:
        return []
    limit = ev.thresholds.timing_cv_max
    noisy, worst = [], 0.0
    for record in timed:
        cvs = _record_cvs(record["latency"])
        worst = max([worst, *cvs.values()])
        bad = {k: v for k, v in cvs.items() if ev.thresholds.is_noisy(v)}
        if bad:
            noisy.append(f"{_label(record)} seed {record['seed']} ("
                         + ", ".join(f"{k} CV {v * 100:.1f}%" for k, v in bad.items()) + ")")
    figures = {"cv_max": limit, "largest_cv": worst, "noisy_runs": noisy}
    if noisy:
        return [Finding("sweep_timing_noise", "warn", f"timings unreliable at {len(noisy)} of {len(timed)} sweep runs",
                        f"Coefficient of variation over {limit * 100:.1f}%: " + _listed(noisy)
                        + ". The machine was busy or throttling; re-run with more --bench-seconds on a "
                        "quiet machine before trusting those latencies.", figures)]
    return [Finding("sweep_timing_noise", "ok", "timings stable",
                    f"Largest coefficient of variation {worst * 100:.1f}% over {len(timed)} runs "
                    f"(limit {limit * 100:.1f}%).", figures)]


def sweep_missing_figures(ev: SweepEvidence) -> list[Finding]:
    """Say once what the sweep did not record, so a silent rule is not read as a pass."""
    missing = []
    if ev.chance_accuracy_pct is None:
        missing.append("chance accuracy (number of classes)")
    if not _timed(ev):
        missing.append("latency (--bench-seconds 0)")
    if not missing:
        return []
    return [Finding("missing_figures", "info", "not measured: " + ", ".join(missing),
                    "The rules that need these figures stayed silent.", {"missing": missing})]


SWEEP_RULES: list[SweepRule] = [
    dense_untrained,
    dense_undertrained,
    operating_point,
    sweep_speedup,
    sweep_timing_noise,
    sweep_missing_figures,
]


def judge_sweep(ev: SweepEvidence) -> SweepJudgement:
    """Run every rule in `SWEEP_RULES`; the candidate is recommended only on a usable baseline."""
    findings = tuple(f for rule in SWEEP_RULES for f in rule(ev))
    recommended = ev.candidate is not None and baseline_problem(ev) is None
    return SweepJudgement(findings, verdict(findings), recommended)
