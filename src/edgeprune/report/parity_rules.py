"""The correctness rules of an export: the shrunk model, the ONNX file and every engine must
compute what they were built from; an INT8 engine by the INT8 rule of `Thresholds`.

Part of `report.rules` (registered in its `RULES`), split out to keep each module one idea.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from edgeprune.onnx_export.exporter import ParityResult
from edgeprune.report.findings import Finding
from edgeprune.report.manifest import EngineRecord

if TYPE_CHECKING:
    from edgeprune.report.rules import Evidence


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def shrink_check(ev: Evidence) -> list[Finding]:
    """The physically shrunk model must compute what the gated model computes."""
    check = ev.manifest.shrink_check
    if check is None:
        return []
    diff, tolerance = check.max_abs_diff, check.tolerance
    failed = check.passed is False or (
        diff is not None and tolerance is not None and diff > tolerance)
    figures = {"max_abs_diff": diff, "tolerance": tolerance}
    if failed:
        return [Finding("shrink_check", "fail", "shrunk model differs from the gated model",
                        f"Max abs difference {diff} exceeds tolerance {tolerance}; the cut removed "
                        "channels that mattered or rewired a layer wrongly.", figures)]
    return [Finding("shrink_check", "ok", "shrunk model equals the gated model",
                    f"Max abs difference {diff} within tolerance {tolerance}.", figures)]


def parity_problems(parity: ParityResult) -> list[str]:
    """Why a parity record fails: a false `passed`, top-1 disagreement, or error over tolerance."""
    problems = []
    if parity.passed is False:
        problems.append("marked as failed")
    agreement = parity.top1_agreement
    if agreement is not None and agreement < 1.0:
        problems.append(f"top-1 agreement {_pct(agreement)}")
    err, tolerance = parity.max_abs_err, parity.tolerance
    if err is not None and tolerance is not None and err > tolerance:
        problems.append(f"max abs error {err:.3g} over tolerance {tolerance:.3g}")
    return problems


def onnx_parity(ev: Evidence) -> list[Finding]:
    """The exported ONNX must give the PyTorch model's answers."""
    parity = ev.manifest.onnx_parity
    if parity is None:
        return []
    problems = parity_problems(parity)
    figures = {k: getattr(parity, k) for k in ("max_abs_err", "top1_agreement", "n_samples", "tolerance")}
    if problems:
        return [Finding("onnx_parity", "fail", "ONNX parity failed",
                        "ONNX output differs from PyTorch: " + "; ".join(problems) + ".", figures)]
    return [Finding("onnx_parity", "ok", "ONNX matches PyTorch",
                    f"Max abs error {parity.max_abs_err} (tolerance {parity.tolerance}) "
                    f"over {parity.n_samples} samples, top-1 agreement "
                    f"{_pct(parity.top1_agreement or 0.0)}.", figures)]


def engine_parity(ev: Evidence) -> list[Finding]:
    """Every built engine must agree with the ONNX model it was built from; an INT8 engine is
    judged by `int8_engine` instead (its logits move by design, its decisions must not)."""
    findings, checked = [], []
    for engine in ev.manifest.engines:
        if engine.parity is None:
            continue
        if engine.precision == "int8":
            findings.append(int8_engine(ev, engine))
            continue
        name = engine.name
        problems = parity_problems(engine.parity)
        checked.append(name)
        if problems:
            findings.append(Finding(
                "engine_parity", "fail", f"engine {name} parity failed",
                f"Engine {name} ({engine.precision}) differs from ONNX: "
                + "; ".join(problems) + ".", {"engine": name, **engine.parity.to_dict()}))
    if checked and not any(f.severity == "fail" and f.figures.get("engine") in checked for f in findings):
        findings.append(Finding("engine_parity", "ok", "engines match ONNX",
                                f"Parity within tolerance for {', '.join(checked)}.",
                                {"engines": checked}))
    return findings


def int8_engine(ev: Evidence, engine: EngineRecord) -> Finding:
    """An INT8 engine passes on top-1 agreement with FP32 and on its accuracy drop against the
    pruned FP32 model (`Thresholds.int8_problems`); its logit error is stated, not judged.

    The drop is taken on the same images when the engine records the FP32 accuracy on them
    (`reference_accuracy`), else against the pruned model's test accuracy.
    """
    name, parity, t = engine.name, engine.parity, ev.thresholds
    agreement = parity.top1_agreement
    int8_acc = engine.accuracy
    reference: Optional[float] = engine.reference_accuracy
    against = f"on the same {engine.accuracy_samples or '?'} images"
    if reference is None:
        reference = ev.manifest.accuracy_after
        against = "against the pruned model's test accuracy"
    drop = (reference - int8_acc) * 100.0 + 0.0 if int8_acc is not None and reference is not None else None
    rule = (f"needs top-1 agreement with FP32 >= {t.int8_min_top1_agreement * 100:.0f}% and an accuracy "
            f"drop <= {t.int8_max_accuracy_drop_points:.1f} points")
    figures = {"engine": name, "top1_agreement": agreement, "accuracy": int8_acc,
               "reference_accuracy": reference, "drop_points": drop,
               "min_top1_agreement": t.int8_min_top1_agreement,
               "max_drop_points": t.int8_max_accuracy_drop_points,
               "max_abs_err": parity.max_abs_err, "n_samples": parity.n_samples}
    if agreement is None and drop is None:
        return Finding("engine_parity", "info", f"INT8 engine {name} not judged",
                       f"Engine {name} records neither top-1 agreement nor accuracy; an INT8 engine "
                       f"{rule}.", figures)
    measured = []
    if agreement is not None:
        measured.append(f"top-1 agreement with FP32 {_pct(agreement)} over {parity.n_samples} samples")
    if drop is not None:
        measured.append(f"accuracy {_pct(int8_acc)} vs FP32 {_pct(reference)} {against} "
                        f"({drop:+.1f} points drop)")
    err = parity.max_abs_err
    logits = f" Max logit error {err:.3g} is stated, not judged: INT8 moves logits." if err is not None else ""
    problems = t.int8_problems(agreement, drop)
    if problems:
        return Finding("engine_parity", "fail", f"INT8 engine {name} below the INT8 rule",
                       f"Engine {name}: " + "; ".join(problems) + f". An INT8 engine {rule}; measured "
                       + ", ".join(measured) + "." + logits
                       + " Calibrate on more batches or keep sensitive layers in FP32.", figures)
    return Finding("engine_parity", "ok", f"INT8 engine {name} meets the INT8 rule",
                   f"Engine {name}: " + ", ".join(measured) + f" (an INT8 engine {rule})." + logits,
                   figures)
