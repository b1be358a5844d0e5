"""The report's verdict as rules over an export's evidence, so no sentence of praise is canned.

Each rule is a small function from the evidence (manifest.json, bench.json, thresholds) to
findings; `RULES` lists them in report order. A rule whose figures are absent stays silent and
`missing_figures` says once what was not measured, so nothing is ever invented. Accuracies and
keep ratios are fractions in [0, 1] (a manifest in percent is detected, see
`evidence.accuracy_scale`); tolerances on them are in percentage points.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from edgeprune.report.evidence import (
    accuracy,
    chance_accuracy,
    is_gpu_target,
    is_interval,
    latency_samples_ms,
    measured_speedup,
    number,
    pruned_channel_counts,
)

SEVERITIES = ("ok", "info", "warn", "fail")
_RANK = {severity: rank for rank, severity in enumerate(SEVERITIES)}

#: Samples needed for an upper bound on p99 / p90 at 99% confidence (MEASURING.md).
MIN_SAMPLES_P99 = 662
MIN_SAMPLES_P90 = 64


@dataclass(frozen=True)
class Finding:
    """One computed statement about an export; `figures` holds the numbers it rests on."""

    rule_id: str
    severity: str
    title: str
    message: str
    figures: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in _RANK:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "figures": dict(self.figures),
        }


@dataclass(frozen=True)
class Verdict:
    """The overall status ('ok' | 'warn' | 'fail') and a one-line summary built from findings."""

    status: str
    summary: str
    failures: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"status": self.status, "summary": self.summary,
                "failures": list(self.failures), "warnings": list(self.warnings)}


@dataclass(frozen=True)
class Thresholds:
    """Every number a rule compares against, in one place so the report can print them."""

    accuracy_tolerance_points: float = 1.0
    accuracy_fail_points: float = 5.0
    chance_margin_points: float = 3.0
    chance_margin_fraction_of_chance: float = 0.25
    keep_tolerance: float = 0.005
    timing_cv_max: float = 0.10
    gpu_channel_multiple: int = 8

    def __post_init__(self) -> None:
        if self.accuracy_tolerance_points < 0 or self.keep_tolerance < 0 or self.timing_cv_max <= 0:
            raise ValueError("tolerances must be non-negative and timing_cv_max positive")
        if self.accuracy_fail_points < self.accuracy_tolerance_points:
            raise ValueError("accuracy_fail_points must be at least accuracy_tolerance_points")
        if self.gpu_channel_multiple < 1:
            raise ValueError("gpu_channel_multiple must be at least 1")

    def chance_margin(self, chance: float) -> float:
        """How far above chance (as a fraction) an accuracy must be to count as learned."""
        return max(self.chance_margin_points / 100.0, self.chance_margin_fraction_of_chance * chance)


@dataclass(frozen=True)
class Evidence:
    manifest: Mapping[str, Any]
    bench: Optional[Mapping[str, Any]]
    thresholds: Thresholds


Rule = Callable[[Evidence], list[Finding]]


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


# --- rules -----------------------------------------------------------------------------------


def untrained_model(ev: Evidence) -> list[Finding]:
    """An accuracy near chance means the model never learned; nothing else in the report matters."""
    chance = chance_accuracy(ev.manifest)
    if chance is None:
        return []
    margin = ev.thresholds.chance_margin(chance)
    figures = {"chance_accuracy": chance, "margin": margin}
    before = accuracy(ev.manifest, "accuracy_before")
    after = accuracy(ev.manifest, "accuracy_after")
    for label, value, title in (
        ("dense", before, "the model looks untrained"),
        ("pruned", after, "the pruned model looks untrained (accuracy at chance)"),
    ):
        if value is not None and value <= chance + margin:
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
    requested, achieved = number(m, "keep_requested"), number(m, "keep_achieved")
    if requested is None or achieved is None:
        return []
    tolerance = ev.thresholds.keep_tolerance
    budget = m.get("budget") or "params"
    budget_words = {"params": "parameters", "flops": "FLOPs"}.get(budget, budget)
    note = m.get("keep_note")
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
    elif not findings:
        findings.append(Finding(
            "budget_met", "ok", "keep ratio met",
            f"Requested keep {requested:.3f} of the {budget_words}, achieved {achieved:.3f} "
            f"(within ±{tolerance * 100:.1f} points).",
            figures,
        ))
    return findings


def _counted_keep(manifest: Mapping[str, Any], budget: str) -> Optional[float]:
    before = number(manifest, f"{budget}_before")
    after = number(manifest, f"{budget}_after")
    return after / before if before and after is not None else None


def accuracy_drop(ev: Evidence) -> list[Finding]:
    """Accuracy lost to pruning, against the tolerance the user accepted."""
    before = accuracy(ev.manifest, "accuracy_before")
    after = accuracy(ev.manifest, "accuracy_after")
    if before is not None and after is not None:
        drop = before - after
    else:
        drop = accuracy(ev.manifest, "accuracy_drop")
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


def shrink_check(ev: Evidence) -> list[Finding]:
    """The physically shrunk model must compute what the gated model computes."""
    check = ev.manifest.get("shrink_check")
    if not isinstance(check, Mapping):
        return []
    diff, tolerance = number(check, "max_abs_diff"), number(check, "tolerance")
    failed = check.get("passed") is False or (
        diff is not None and tolerance is not None and diff > tolerance)
    figures = {"max_abs_diff": diff, "tolerance": tolerance}
    if failed:
        return [Finding("shrink_check", "fail", "shrunk model differs from the gated model",
                        f"Max abs difference {diff} exceeds tolerance {tolerance}; the cut removed "
                        "channels that mattered or rewired a layer wrongly.", figures)]
    return [Finding("shrink_check", "ok", "shrunk model equals the gated model",
                    f"Max abs difference {diff} within tolerance {tolerance}.", figures)]


def parity_problems(parity: Mapping[str, Any]) -> list[str]:
    """Why a parity record fails: a false `passed`, top-1 disagreement, or error over tolerance."""
    problems = []
    if parity.get("passed") is False:
        problems.append("marked as failed")
    agreement = number(parity, "top1_agreement")
    if agreement is not None and agreement < 1.0:
        problems.append(f"top-1 agreement {_pct(agreement)}")
    err, tolerance = number(parity, "max_abs_err"), number(parity, "tolerance")
    if err is not None and tolerance is not None and err > tolerance:
        problems.append(f"max abs error {err:.3g} over tolerance {tolerance:.3g}")
    return problems


def onnx_parity(ev: Evidence) -> list[Finding]:
    """The exported ONNX must give the PyTorch model's answers."""
    parity = ev.manifest.get("onnx_parity")
    if not isinstance(parity, Mapping):
        return []
    problems = parity_problems(parity)
    figures = {k: parity.get(k) for k in ("max_abs_err", "top1_agreement", "n_samples", "tolerance")}
    if problems:
        return [Finding("onnx_parity", "fail", "ONNX parity failed",
                        "ONNX output differs from PyTorch: " + "; ".join(problems) + ".", figures)]
    return [Finding("onnx_parity", "ok", "ONNX matches PyTorch",
                    f"Max abs error {parity.get('max_abs_err')} (tolerance {parity.get('tolerance')}) "
                    f"over {parity.get('n_samples')} samples, top-1 agreement "
                    f"{_pct(number(parity, 'top1_agreement') or 0.0)}.", figures)]


def engine_parity(ev: Evidence) -> list[Finding]:
    """Every built engine must agree with the ONNX model it was built from."""
    engines = ev.manifest.get("engines")
    if not isinstance(engines, list):
        return []
    findings, checked = [], []
    for engine in engines:
        if not isinstance(engine, Mapping) or not isinstance(engine.get("parity"), Mapping):
            continue
        name = str(engine.get("name", "engine"))
        problems = parity_problems(engine["parity"])
        checked.append(name)
        if problems:
            findings.append(Finding(
                "engine_parity", "fail", f"engine {name} parity failed",
                f"Engine {name} ({engine.get('precision', '?')}) differs from ONNX: "
                + "; ".join(problems) + ".", {"engine": name, **dict(engine["parity"])}))
    if checked and not findings:
        findings.append(Finding("engine_parity", "ok", "engines match ONNX",
                                f"Parity within tolerance for {', '.join(checked)}.",
                                {"engines": checked}))
    return findings


def speedup(ev: Evidence) -> list[Finding]:
    """A speedup counts only when it is outside the timing noise; a slowdown is never hidden.

    Within noise: the 95% interval of the speedup includes 1.0. Only without an interval does
    the larger timing CV stand in for it (|speedup - 1| under that CV).
    """
    value = measured_speedup(ev.manifest)
    if value is None:
        return []
    ci = ev.manifest.get("speedup_ci95")
    ci = tuple(float(x) for x in ci) if is_interval(ci) else None
    cvs = [_noise_cv(ev.manifest, k) for k in ("dense", "pruned")]
    cv = max((c for c in cvs if c is not None), default=None) if ci is None else None
    figures = {"speedup": value, "speedup_ci95": ci, "cv": cv}
    findings = _speedup_contradiction(ev.manifest, value)
    noise_parts = []
    within_noise = False
    if ci is not None:
        within_noise |= ci[0] <= 1.0 <= ci[1]
        noise_parts.append(f"95% interval {ci[0]:.2f}–{ci[1]:.2f}×")
    if cv is not None:
        within_noise |= abs(value - 1.0) < cv
        noise_parts.append(f"timing CV {_pct(cv)}")
    noise = ", ".join(noise_parts) or "no interval or CV recorded"
    if within_noise:
        direction = "slower" if value < 1 else "faster"
        findings.append(Finding(
            "speedup", "warn", "no measurable speedup",
            f"Pruned runs {value:.2f}× the dense speed ({direction} on paper), but the difference "
            f"is within the noise ({noise}).", figures))
    elif value < 1.0:
        findings.append(Finding(
            "speedup", "fail", f"slowdown: pruned model is slower than dense ({value:.2f}×)",
            f"Pruned runs at {value:.2f}× the dense speed ({noise}); pruning made it slower on this "
            "target. Try --round-to 8/16 or a different budget.", figures))
    elif ci is None and cv is None:
        findings.append(Finding(
            "speedup", "info", f"speedup {value:.2f}× without a noise estimate",
            f"Pruned runs {value:.2f}× the dense speed; no interval or CV was recorded, so "
            "whether this is outside the timing noise is unknown.", figures))
    else:
        findings.append(Finding(
            "speedup", "ok", f"speedup {value:.2f}×",
            f"Pruned runs {value:.2f}× the dense speed ({noise}).", figures))
    return findings


def _speedup_contradiction(manifest: Mapping[str, Any], recorded: float) -> list[Finding]:
    dense = number(manifest, "latency_ms", "dense", "p50")
    pruned = number(manifest, "latency_ms", "pruned", "p50")
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


def _noise_cv(manifest: Mapping[str, Any], label: str) -> Optional[float]:
    """The CV that says whether a comparison can be trusted: of the per-round medians when
    recorded (what the interleaved comparison uses), else of the single iterations."""
    round_cv = number(manifest, "latency_ms", label, "round_median_cv")
    return round_cv if round_cv is not None else number(manifest, "latency_ms", label, "cv")


def timing_noise(ev: Evidence) -> list[Finding]:
    """A latency with a large coefficient of variation is reported as unreliable, not hidden.

    Judged on the per-round medians when recorded: single iterations on a shared machine carry
    rare preemption spikes (reported as information) that do not move the medians compared.
    """
    cvs = {k: _noise_cv(ev.manifest, k) for k in ("dense", "pruned")}
    cvs = {k: v for k, v in cvs.items() if v is not None}
    spikes = {k: number(ev.manifest, "latency_ms", k, "cv") for k in ("dense", "pruned")}
    spikes = {k: v for k, v in spikes.items()
              if v is not None and number(ev.manifest, "latency_ms", k, "round_median_cv") is not None
              and v > ev.thresholds.timing_cv_max}
    if not cvs:
        for label, samples in latency_samples_ms(ev.bench).items():
            if len(samples) >= 2 and statistics.fmean(samples) > 0:
                cvs[label] = statistics.stdev(samples) / statistics.fmean(samples)
    if not cvs:
        return []
    limit = ev.thresholds.timing_cv_max
    shown = ", ".join(f"{k} {_pct(v)}" for k, v in cvs.items())
    noisy = {k: v for k, v in cvs.items() if v > limit}
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
    for label in ("dense", "pruned"):
        n = number(ev.manifest, "latency_ms", label, "n")
        if n is None:
            continue
        for name, need in (("p99", MIN_SAMPLES_P99), ("p90", MIN_SAMPLES_P90)):
            if number(ev.manifest, "latency_ms", label, name) is not None and n < need:
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
    if not is_gpu_target(ev.manifest.get("target")):
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
    wanted = {
        "accuracy before pruning": number(m, "accuracy_before"),
        "accuracy after pruning": number(m, "accuracy_after"),
        "parameter counts": number(m, "params_after"),
        "FLOPs": number(m, "flops_after"),
        "dense latency": number(m, "latency_ms", "dense", "p50"),
        "pruned latency": number(m, "latency_ms", "pruned", "p50"),
        "speedup interval": m.get("speedup_ci95") if is_interval(m.get("speedup_ci95")) else None,
        "memory": number(m, "memory_mb", "pruned"),
        "size on disk": number(m, "size_bytes", "pruned_onnx"),
        "ONNX parity": m.get("onnx_parity") if isinstance(m.get("onnx_parity"), Mapping) else None,
    }
    missing = [label for label, value in wanted.items() if value is None]
    for engine in m.get("engines") or []:
        if isinstance(engine, Mapping) and not isinstance(engine.get("parity"), Mapping):
            missing.append(f"parity of engine {engine.get('name', '?')}")
    if not missing:
        return []
    return [Finding("missing_figures", "info", "not measured: " + ", ".join(missing),
                    "These figures are absent from the manifest; the report shows them as "
                    "'not measured' rather than estimating them.", {"missing": missing})]


#: Above this share of frozen parameters the pruning could only touch a minority of the model.
MOSTLY_FROZEN = 0.5


def frozen_share(ev: Evidence) -> list[Finding]:
    """Warn when most parameters sit in channels the analysis had to leave unpruned."""
    plan = ev.manifest.get("plan") or {}
    fraction = number(plan, "frozen_fraction")
    if fraction is None or fraction <= MOSTLY_FROZEN:
        return []
    largest = (plan.get("frozen_params") or [{}])[0]
    where = f" The largest part: {largest.get('where')} ({largest.get('op')}): {largest.get('reason')}." if largest else ""
    return [Finding(
        "frozen_share", "warn", f"most parameters could not be pruned ({_pct(fraction)} frozen)",
        f"{_pct(fraction)} of the parameters sit in channels the analysis left unpruned, so the budget "
        f"was met on the rest.{where} Run `edgeprune inspect` for every frozen part and its reason.",
        {"frozen_fraction": fraction, "threshold": MOSTLY_FROZEN},
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
    manifest: Mapping[str, Any],
    bench: Optional[Mapping[str, Any]] = None,
    *,
    accuracy_tolerance_points: float = 1.0,
    accuracy_fail_points: float = 5.0,
    keep_tolerance: float = 0.005,
    timing_cv_max: float = 0.10,
    gpu_channel_multiple: int = 8,
) -> list[Finding]:
    """Run every rule in `RULES` over one export's manifest (and bench.json, if any)."""
    thresholds = Thresholds(
        accuracy_tolerance_points=accuracy_tolerance_points,
        accuracy_fail_points=max(accuracy_fail_points, accuracy_tolerance_points),
        keep_tolerance=keep_tolerance,
        timing_cv_max=timing_cv_max,
        gpu_channel_multiple=gpu_channel_multiple,
    )
    evidence = Evidence(manifest=manifest, bench=bench, thresholds=thresholds)
    return [finding for rule in RULES for finding in rule(evidence)]


def verdict(findings: list[Finding]) -> Verdict:
    """Worst severity wins; the summary lists the failing and warning titles, nothing else."""
    failures = tuple(f.title for f in findings if f.severity == "fail")
    warnings = tuple(f.title for f in findings if f.severity == "warn")
    if failures:
        summary = "FAIL: " + "; ".join(failures)
        if warnings:
            summary += ". Also: " + "; ".join(warnings)
        return Verdict("fail", summary + ".", failures, warnings)
    if warnings:
        return Verdict("warn", "WARN: " + "; ".join(warnings) + ".", failures, warnings)
    passed = sum(f.severity == "ok" for f in findings)
    missing = [f.title for f in findings if f.rule_id == "missing_figures"]
    summary = f"OK: {passed} checks passed, none warned or failed"
    if missing:
        summary += f"; {missing[0]}"
    return Verdict("ok", summary + ".", failures, warnings)
