"""The report's verdict as rules over an export's evidence, so no sentence of praise is canned.

Each rule is a small function from the evidence (the typed `Manifest` and the thresholds) to
findings; `RULES` lists them in report order. A rule whose figures are absent stays silent and
`missing_figures` says once what was not measured, so nothing is ever invented. Accuracies and
keep ratios are fractions in [0, 1] (the manifest's reader enforces it); tolerances on them are in
percentage points. Every threshold, and each judgement shared with the sweep and bench rules, lives
in `report.thresholds`; the correctness rules are in `report.parity_rules`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Optional

from edgeprune.report.findings import SEVERITIES, Finding, Verdict, verdict
from edgeprune.report.manifest import Manifest, as_manifest
from edgeprune.report.parity_rules import engine_parity, int8_engine, onnx_parity, parity_problems, shrink_check
from edgeprune.report.thresholds import (
    DEFAULT_THRESHOLDS,
    MIN_SAMPLES_P90,
    MIN_SAMPLES_P99,
    Thresholds,
    comparison_cv,
)

#: Targets whose kernels want channel counts in multiples of 8 (tensor cores, FP16/INT8).
GPU_DEVICES = ("cuda", "gpu", "jetson")
GPU_RUNTIMES = ("tensorrt", "trt", "cuda")

__all__ = ["GPU_DEVICES", "RULES", "SEVERITIES", "Evidence", "Finding", "Thresholds", "Verdict", "engine_parity",
           "evaluate", "int8_engine", "onnx_parity", "parity_problems", "shrink_check", "verdict"]


@dataclass(frozen=True)
class Evidence:
    """What the rules judge: one export's manifest (a `Manifest`, or its JSON document)."""

    manifest: Manifest
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        object.__setattr__(self, "manifest", as_manifest(self.manifest))


Rule = Callable[[Evidence], list[Finding]]


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


# --- rules -----------------------------------------------------------------------------------


def untrained_model(ev: Evidence) -> list[Finding]:
    """An accuracy near chance means the model never learned; nothing else in the report matters."""
    chance = ev.manifest.chance_accuracy
    if chance is None:
        return []
    margin = ev.thresholds.chance_margin(chance)
    figures = {"chance_accuracy": chance, "margin": margin}
    before, after = ev.manifest.accuracy_before, ev.manifest.accuracy_after
    for label, value, title in (
        ("dense", before, "the model looks untrained"),
        ("pruned", after, "the pruned model looks untrained (accuracy at chance)"),
    ):
        if value is not None and ev.thresholds.looks_untrained(value, chance):
            return [Finding(
                "untrained_model", "fail", title,
                f"The {label} accuracy of {_pct(value)} is no more than {margin * 100:.1f} points "
                f"above chance ({_pct(chance)}): the model looks untrained, so its accuracy figures and the "
                f"channels pruning chose say nothing about a real model. Train it (or check the "
                f"labels) first.",
                {**figures, f"accuracy_{label}": value},
            )]
    if before is None and after is None:
        return []
    shown = before if before is not None else after
    return [Finding(
        "untrained_model", "ok", "accuracy above chance",
        f"Accuracy {_pct(shown)} is {(shown - chance) * 100:.1f} points above chance "
        f"({_pct(chance)}).",
        {**figures, "accuracy": shown},
    )]


def _at_chance(ev: Evidence) -> bool:
    return any(f.severity == "fail" for f in untrained_model(ev))


def budget_met(ev: Evidence) -> list[Finding]:
    """What was asked and what was achieved never silently differ (DESIGN.md, Budget)."""
    m = ev.manifest
    requested, achieved = m.keep_requested, m.keep_achieved
    if requested is None or achieved is None:
        return []
    tolerance = ev.thresholds.keep_tolerance
    if m.budget == "latency" and m.latency_budget.get("tolerance") is not None:
        tolerance = float(m.latency_budget["tolerance"])  # a measured ratio: the closed loop's tolerance
    budget = m.budget
    budget_words = {"params": "parameters", "flops": "FLOPs"}.get(budget, budget)
    note = m.keep_note
    figures = {"keep_requested": requested, "keep_achieved": achieved, "tolerance": tolerance}
    findings = []
    counted = _counted_keep(m, budget)
    if counted is not None and abs(counted - achieved) > tolerance + 1e-12:
        findings.append(Finding(
            "budget_met", "fail", "recorded keep ratio contradicts the counts",
            f"keep_achieved says {achieved:.3f} but {budget}_after / {budget}_before is "
            f"{counted:.3f}; the manifest is inconsistent.",
            {**figures, "keep_counted": counted},
        ))
    gap = achieved - requested
    if abs(gap) > tolerance + 1e-12:
        findings.append(Finding(
            "budget_met", "fail",
            f"keep ratio missed: asked {_pct(requested)}, got {_pct(achieved)}",
            f"Requested keep {requested:.3f} of the {budget_words}; the plan achieved {achieved:.3f} "
            f"({gap * 100:+.1f} points, tolerance ±{tolerance * 100:.1f})."
            + (f" Plan note: {note}" if note else ""),
            {**figures, "gap": gap},
        ))
    elif not findings and budget == "latency" and _interval_leaves_band(m.latency_budget, requested, tolerance):
        low, high = m.latency_budget["measured_ratio_ci95"]
        findings.append(Finding(
            "budget_met", "info", "latency budget met by the median, not confirmed",
            f"Requested {requested:.3f} of the dense latency, measured {achieved:.3f} (within ±{tolerance * 100:.1f} "
            f"points), but the 95% interval {low:.3f}-{high:.3f} reaches outside that band: the timings were too "
            "noisy to confirm it. Re-measure with `edgeprune bench` on a quieter machine or with more rounds.",
            {**figures, "ci95_low": low, "ci95_high": high},
        ))
    elif not findings:
        findings.append(Finding(
            "budget_met", "ok", "keep ratio met",
            f"Requested keep {requested:.3f} of the {budget_words}, achieved {achieved:.3f} "
            f"(within ±{tolerance * 100:.1f} points).",
            figures,
        ))
    return findings


def _interval_leaves_band(record: Mapping[str, Any], requested: float, tolerance: float) -> bool:
    interval = record.get("measured_ratio_ci95")
    if not interval or len(interval) != 2:
        return False
    return interval[0] < requested - tolerance or interval[1] > requested + tolerance


def _counted_keep(manifest: Manifest, budget: str) -> Optional[float]:
    before = getattr(manifest, f"{budget}_before", None)
    after = getattr(manifest, f"{budget}_after", None)
    return after / before if before and after is not None else None


def accuracy_drop(ev: Evidence) -> list[Finding]:
    """Accuracy lost to pruning, against the tolerance the user accepted."""
    before, after = ev.manifest.accuracy_before, ev.manifest.accuracy_after
    drop = ev.manifest.accuracy_drop
    if drop is None:
        return []
    points = drop * 100 + 0.0
    t = ev.thresholds
    if _at_chance(ev):
        return [Finding("accuracy_drop", "info", "accuracy change not meaningful",
                        f"The accuracy changed by {0.0 - points:+.1f} points, but a model at chance "
                        "accuracy has nothing to lose; this figure says nothing about pruning.",
                        {"drop_points": points})]
    figures = {"accuracy_before": before, "accuracy_after": after, "drop_points": points,
               "tolerance_points": t.accuracy_tolerance_points}
    shown = (f"from {_pct(before)} to {_pct(after)}" if before is not None and after is not None
             else f"by {points:.1f} points")
    if points > t.accuracy_fail_points:
        return [Finding("accuracy_drop", "fail", f"accuracy dropped {points:.1f} points",
                        f"Accuracy fell {shown}, more than {t.accuracy_fail_points:.1f} points "
                        f"(tolerance {t.accuracy_tolerance_points:.1f}).", figures)]
    if points > t.accuracy_tolerance_points:
        return [Finding("accuracy_drop", "warn", f"accuracy dropped {points:.1f} points",
                        f"Accuracy fell {shown}, over the tolerance of "
                        f"{t.accuracy_tolerance_points:.1f} points.", figures)]
    return [Finding("accuracy_drop", "ok", "accuracy within tolerance",
                    f"Accuracy changed {shown} ({0.0 - points:+.1f} points; tolerance "
                    f"{t.accuracy_tolerance_points:.1f}).", figures)]


def speedup(ev: Evidence) -> list[Finding]:
    """A speedup counts only when it is outside the timing noise; a slowdown is never hidden.

    Within noise: the 95% interval of the speedup includes 1.0. Only without an interval does
    the larger timing CV stand in for it (|speedup - 1| under that CV).
    """
    value, ci = _headline_speedup(ev.manifest)
    if value is None:
        return []
    cvs = [_noise_cv(ev.manifest, k) for k in ("dense", "pruned")]
    cv = max((c for c in cvs if c is not None), default=None) if ci is None else None
    figures = {"speedup": value, "speedup_ci95": ci, "cv": cv}
    findings = _speedup_contradiction(ev.manifest, value)
    noise = noise_words(ci, cv)
    judgement = ev.thresholds.judge_speedup(value, ci, cv)
    if judgement == "within_noise":
        direction = "slower" if value < 1 else "faster"
        findings.append(Finding(
            "speedup", "warn", "no measurable speedup",
            f"Pruned runs {value:.2f}× the dense speed ({direction} on paper), but the difference "
            f"is within the noise ({noise}).", figures))
    elif judgement == "slower":
        findings.append(Finding(
            "speedup", "fail", f"slowdown: pruned model is slower than dense ({value:.2f}×)",
            f"Pruned runs at {value:.2f}× the dense speed ({noise}); pruning made it slower on this "
            "target. Try --round-to 8/16 or a different budget.", figures))
    elif judgement == "no_noise_estimate":
        findings.append(Finding(
            "speedup", "info", f"speedup {value:.2f}× without a noise estimate",
            f"Pruned runs {value:.2f}× the dense speed; no interval or CV was recorded, so "
            "whether this is outside the timing noise is unknown.", figures))
    else:
        findings.append(Finding(
            "speedup", "ok", f"speedup {value:.2f}×",
            f"Pruned runs {value:.2f}× the dense speed ({noise}).", figures))
    return findings


def noise_words(ci: Optional[tuple[float, float]], cv: Optional[float]) -> str:
    """How a speedup's noise is stated beside it: its interval, else the timing CV."""
    parts = []
    if ci is not None:
        parts.append(f"95% interval {ci[0]:.2f}–{ci[1]:.2f}×")
    if cv is not None:
        parts.append(f"timing CV {_pct(cv)}")
    return ", ".join(parts) or "no interval or CV recorded"


def _p50(manifest: Manifest, model: str) -> Optional[float]:
    record = manifest.latency_of(model)
    return None if record is None else record.p50_ms


def _headline_speedup(manifest: Manifest) -> tuple[Optional[float], Optional[tuple[float, float]]]:
    """The recorded pruned-vs-dense speedup and interval, else the ratio of the p50 latencies."""
    recorded = manifest.speedup_of("pruned")
    if recorded is not None:
        return recorded.speedup, recorded.ci95
    dense, pruned = _p50(manifest, "dense"), _p50(manifest, "pruned")
    return (dense / pruned if dense and pruned else None), None


def _speedup_contradiction(manifest: Manifest, recorded: float) -> list[Finding]:
    dense, pruned = _p50(manifest, "dense"), _p50(manifest, "pruned")
    if not dense or not pruned:
        return []
    from_latency = dense / pruned
    opposite = (recorded - 1.0) * (from_latency - 1.0) < 0
    if opposite and abs(math.log(recorded)) > 0.02 and abs(math.log(from_latency)) > 0.02:
        return [Finding(
            "speedup", "fail", "recorded speedup contradicts the latencies",
            f"speedup is recorded as {recorded:.2f}× but the p50 latencies (dense {dense:.3f} ms, "
            f"pruned {pruned:.3f} ms) give {from_latency:.2f}×.",
            {"speedup": recorded, "speedup_from_p50": from_latency})]
    return []


def _noise_cv(manifest: Manifest, label: str) -> Optional[float]:
    """The CV that says whether a comparison can be trusted: of the per-round medians when
    recorded (what the interleaved comparison uses), else of the single iterations."""
    record = manifest.latency_of(label)
    return None if record is None else comparison_cv(record.round_median_cv, record.cv)


def timing_noise(ev: Evidence) -> list[Finding]:
    """A latency with a large coefficient of variation is reported as unreliable, not hidden.

    Judged on the per-round medians when recorded: single iterations on a shared machine carry
    rare preemption spikes (reported as information) that do not move the medians compared.
    """
    models = ev.manifest.benchmarked_models
    cvs = {k: _noise_cv(ev.manifest, k) for k in models}
    cvs = {k: v for k, v in cvs.items() if v is not None}
    records = {k: ev.manifest.latency_of(k) for k in models}
    spikes = {k: r.cv for k, r in records.items()
              if r is not None and r.cv is not None and r.round_median_cv is not None
              and ev.thresholds.is_noisy(r.cv)}
    if not cvs:
        return []
    limit = ev.thresholds.timing_cv_max
    shown = ", ".join(f"{k} {_pct(v)}" for k, v in cvs.items())
    noisy = {k: v for k, v in cvs.items() if ev.thresholds.is_noisy(v)}
    figures = {"cv": cvs, "cv_max": limit}
    if noisy:
        return [Finding(
            "timing_noise", "warn", "timings unreliable",
            f"Coefficient of variation over {_pct(limit)}: {shown}. The machine was busy or "
            "throttling; re-run the benchmark on a quiet machine before trusting the latencies.",
            figures)]
    findings = [Finding("timing_noise", "ok", "timings stable",
                        f"Coefficient of variation {shown} (limit {_pct(limit)}).", figures)]
    if spikes:
        findings.append(Finding(
            "timing_noise", "info", "latency spikes in single iterations",
            "Single-iteration CV " + ", ".join(f"{k} {_pct(v)}" for k, v in spikes.items())
            + ": rare slow iterations (preemption on a shared machine) widen p99 but not the "
            "per-round medians the comparison uses.", {"iteration_cv": spikes}))
    return findings


def tail_samples(ev: Evidence) -> list[Finding]:
    """A percentile from too few samples is a guess; say so (MEASURING.md)."""
    findings = []
    for label in ev.manifest.benchmarked_models:
        record = ev.manifest.latency_of(label)
        n = None if record is None else record.n
        if n is None:
            continue
        for name, need in (("p99", MIN_SAMPLES_P99), ("p90", MIN_SAMPLES_P90)):
            if getattr(record, f"{name}_ms") is not None and n < need:
                findings.append(Finding(
                    "tail_samples", "info", f"{label} {name} from too few samples",
                    f"The {label} {name} rests on {int(n)} samples; a trustworthy {name} needs at "
                    f"least {need}.", {"model": label, "percentile": name, "n": n, "needed": need}))
                break
    return findings


def gpu_channel_alignment(ev: Evidence) -> list[Finding]:
    """On GPU targets, pruned channel counts off a multiple of 8 miss the fast kernels.

    Only layers pruning changed are named: an unpruned layer's width was the designer's choice.
    """
    if not is_gpu_target(ev.manifest.target):
        return []
    multiple = ev.thresholds.gpu_channel_multiple
    rows = pruned_channel_counts(ev.manifest)
    odd = [(name, after) for name, before, after in rows if after != before and after % multiple]
    if not odd:
        return [Finding("gpu_channel_alignment", "ok", f"channel counts are multiples of {multiple}",
                        f"Every pruned layer keeps a multiple of {multiple} channels.",
                        {"multiple": multiple})] if rows else []
    named = ", ".join(f"{name} ({after})" for name, after in odd[:10])
    more = f" and {len(odd) - 10} more" if len(odd) > 10 else ""
    return [Finding(
        "gpu_channel_alignment", "warn", f"channel counts not multiples of {multiple}",
        f"On a GPU target these layers keep channel counts off a multiple of {multiple}, which "
        f"can be slower than a wider layer: {named}{more}. Re-plan with --round-to {multiple}.",
        {"multiple": multiple, "layers": [name for name, _ in odd]})]


def missing_figures(ev: Evidence) -> list[Finding]:
    """Say once what was not measured; the report leaves those cells blank, never estimated."""
    m = ev.manifest
    pruned_latency = m.latency_of("pruned")
    wanted = {
        "accuracy before pruning": m.accuracy_before,
        "accuracy after pruning": m.accuracy_after,
        "parameter counts": m.params_after,
        "FLOPs": m.flops_after,
        "dense latency": _p50(m, "dense"),
        "pruned latency": _p50(m, "pruned"),
        "speedup interval": _headline_speedup(m)[1],
        "memory": None if pruned_latency is None else pruned_latency.memory_mb,
        "size on disk": m.size_bytes.get("pruned_onnx"),
        "ONNX parity": m.onnx_parity,
    }
    missing = [label for label, value in wanted.items() if value is None]
    for engine in m.engines:
        if engine.parity is None:
            missing.append(f"parity of engine {engine.name}")
    if not missing:
        return []
    return [Finding("missing_figures", "info", "not measured: " + ", ".join(missing),
                    "These figures are absent from the manifest; the report shows them as "
                    "'not measured' rather than estimating them.", {"missing": missing})]


def is_gpu_target(target: Mapping[str, Any]) -> bool:
    device = str(target.get("device") or "").lower()
    runtime = str(target.get("runtime") or "").lower()
    return any(d in device for d in GPU_DEVICES) or any(r in runtime for r in GPU_RUNTIMES)


def pruned_channel_counts(manifest: Manifest) -> list[tuple[str, int, int]]:
    """(name, channels before, channels after) per layer, else per plan group."""
    rows = [(c.module, c.out_channels_before, c.out_channels_after) for c in manifest.layers]
    if rows:
        return rows
    for group in manifest.plan.get("groups") or []:
        before, after = group.get("channels_before"), group.get("channels_after")
        if isinstance(before, int) and isinstance(after, int):
            rows.append((str(group.get("name", group.get("id", "?"))), before, after))
    return rows


def frozen_share(ev: Evidence) -> list[Finding]:
    """Warn when most parameters sit in channels the analysis had to leave unpruned."""
    plan = ev.manifest.plan
    fraction = plan.get("frozen_fraction")
    limit = ev.thresholds.mostly_frozen_fraction
    if not isinstance(fraction, (int, float)) or fraction <= limit:
        return []
    largest = (plan.get("frozen_params") or [{}])[0]
    where = f" The largest part: {largest.get('where')} ({largest.get('op')}): {largest.get('reason')}." if largest else ""
    return [Finding(
        "frozen_share", "warn", f"most parameters could not be pruned ({_pct(fraction)} frozen)",
        f"{_pct(fraction)} of the parameters sit in channels the analysis left unpruned, so the budget "
        f"was met on the rest.{where} Run `edgeprune inspect` for every frozen part and its reason.",
        {"frozen_fraction": fraction, "threshold": limit},
    )]


RULES: list[Rule] = [
    untrained_model,
    budget_met,
    frozen_share,
    accuracy_drop,
    shrink_check,
    onnx_parity,
    engine_parity,
    speedup,
    timing_noise,
    tail_samples,
    gpu_channel_alignment,
    missing_figures,
]


def evaluate(
    manifest: Manifest | Mapping[str, Any],
    *,
    accuracy_tolerance_points: float = DEFAULT_THRESHOLDS.accuracy_tolerance_points,
    accuracy_fail_points: float = DEFAULT_THRESHOLDS.accuracy_fail_points,
    keep_tolerance: float = DEFAULT_THRESHOLDS.keep_tolerance,
    timing_cv_max: float = DEFAULT_THRESHOLDS.timing_cv_max,
    gpu_channel_multiple: int = DEFAULT_THRESHOLDS.gpu_channel_multiple,
    thresholds: Optional[Thresholds] = None,
) -> list[Finding]:
    """Run every rule in `RULES` over one export's manifest (a `Manifest` or its JSON document).

    `thresholds`, when given, is used as it is, instead of the keyword figures.
    """
    if thresholds is None:
        thresholds = replace(
            DEFAULT_THRESHOLDS,
            accuracy_tolerance_points=accuracy_tolerance_points,
            accuracy_fail_points=max(accuracy_fail_points, accuracy_tolerance_points),
            keep_tolerance=keep_tolerance,
            timing_cv_max=timing_cv_max,
            gpu_channel_multiple=gpu_channel_multiple,
        )
    evidence = Evidence(manifest=manifest, thresholds=thresholds)
    return [finding for rule in RULES for finding in rule(evidence)]
