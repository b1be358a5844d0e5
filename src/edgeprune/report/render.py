"""Render report.md and a self-contained report.html for an export folder.

Every figure comes from the export's `Manifest` (and, for the latency histogram, the raw samples
in bench.json), and every verdict sentence is a `Finding` from `rules.py`; an absent figure is
printed as "not measured". The HTML embeds its plots as base64 PNG data URIs so it can be mailed
or attached to CI as one file with no external resources.
"""
from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import jinja2

from edgeprune.errors import InputError
from edgeprune.fileio import read_json_object, write_bytes_atomic, write_text_atomic
from edgeprune.report import plots
from edgeprune.report.manifest import Manifest, read_manifest
from edgeprune.report.rules import Finding, Thresholds, Verdict, evaluate, pruned_channel_counts, verdict
from edgeprune.report.thresholds import DEFAULT_THRESHOLDS

TEMPLATE_DIR = Path(__file__).parent / "templates"
NOT_MEASURED = "not measured"
PLOTS_DIR = "plots"
#: Plot files this module owns; stale ones are removed when a re-render has nothing to draw.
PLOT_FILES = ("channels.png", "latency.png", "efficiency.png")

SECTION_OF_RULE = {
    "untrained_model": "accuracy",
    "accuracy_drop": "accuracy",
    "budget_met": "pruning",
    "gpu_channel_alignment": "pruning",
    "shrink_check": "correctness",
    "onnx_parity": "correctness",
    "engine_parity": "correctness",
    "speedup": "latency",
    "timing_noise": "latency",
    "tail_samples": "latency",
}
_SEVERITY_ORDER = {"fail": 0, "warn": 1, "info": 2, "ok": 3}


@dataclass(frozen=True)
class SummaryRow:
    label: str
    dense: str
    pruned: str
    change: str


@dataclass(frozen=True)
class Plot:
    file_name: str
    title: str
    relative_path: str
    data_uri: str


@dataclass(frozen=True)
class ReportResult:
    """What a render wrote, and the verdict it printed, so the CLI need not evaluate twice."""

    paths: tuple[Path, ...]
    verdict: Verdict
    findings: tuple[Finding, ...]


def render_report(export_dir: Path, *, accuracy_tolerance_points: float = 1.0) -> list[Path]:
    """Write report.md, report.html and plots/*.png into `export_dir`; return the paths written."""
    return list(write_report(export_dir, accuracy_tolerance_points=accuracy_tolerance_points).paths)


def write_report(export_dir: Path, *, accuracy_tolerance_points: float = 1.0) -> ReportResult:
    """`render_report`, also returning the findings and verdict."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise InputError(f"no export folder at {export_dir}; pass the folder `edgeprune export` wrote")
    manifest = with_measured_sizes(read_manifest(export_dir), export_dir)
    bench = _read_bench(export_dir)
    thresholds = replace(DEFAULT_THRESHOLDS, accuracy_tolerance_points=accuracy_tolerance_points,
                         accuracy_fail_points=max(DEFAULT_THRESHOLDS.accuracy_fail_points, accuracy_tolerance_points))
    findings = evaluate(manifest, thresholds=thresholds)

    written: list[Path] = []
    plot_list = []
    for file_name, title, png in _draw_plots(manifest, bench):
        path = export_dir / PLOTS_DIR / file_name
        write_bytes_atomic(path, png)
        written.append(path)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        plot_list.append(Plot(file_name, title, f"{PLOTS_DIR}/{file_name}", uri))
    drawn = {p.file_name for p in plot_list}
    for stale in PLOT_FILES:
        if stale not in drawn:
            (export_dir / PLOTS_DIR / stale).unlink(missing_ok=True)

    context = report_context(manifest, findings, thresholds, plot_list)
    environment = _template_environment()
    md_path, html_path = export_dir / "report.md", export_dir / "report.html"
    write_text_atomic(md_path, environment.get_template("report.md.j2").render(**context))
    write_text_atomic(html_path, environment.get_template("report.html.j2").render(**context))
    return ReportResult((md_path, html_path, *written), context["verdict"], tuple(findings))


def _read_bench(export_dir: Path) -> Optional[dict]:
    path = export_dir / "bench.json"
    return read_json_object(path, InputError, "re-run the export") if path.is_file() else None


def latency_samples_ms(bench: Optional[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Raw samples by "model (batch N)", flattened over rounds, from a `BenchResult` document."""
    series: dict[str, list[float]] = {}
    for entry in (bench or {}).get("entries") or []:
        samples = [float(x) for run in entry.get("samples_ms") or [] for x in run]
        if samples:
            series[f"{entry.get('model', '?')} (batch {entry.get('batch', '?')})"] = samples
    return series


def with_measured_sizes(manifest: Manifest, export_dir: Path) -> Manifest:
    """Fill size_bytes from the ONNX files on disk where the manifest lacks it (measured, not guessed)."""
    sizes = dict(manifest.size_bytes)
    for key, name in (("dense_onnx", "dense.onnx"), ("pruned_onnx", "model.onnx")):
        if key not in sizes and (export_dir / name).is_file():
            sizes[key] = (export_dir / name).stat().st_size
    return dataclasses.replace(manifest, size_bytes=sizes)


def _draw_plots(manifest: Manifest, bench: Optional[Mapping[str, Any]]):
    channels = plots.channels_chart(pruned_channel_counts(manifest))
    if channels:
        yield "channels.png", "Channels per layer", channels
    samples = latency_samples_ms(bench)
    latency = plots.latency_chart(samples) if samples else plots.percentile_chart(_percentiles(manifest))
    if latency:
        yield "latency.png", "Latency", latency
    efficiency = plots.ratio_chart(efficiency_ratios(manifest))
    if efficiency:
        yield "efficiency.png", "Efficiency ratios", efficiency


def _percentiles(manifest: Manifest) -> dict[str, dict[str, float]]:
    """{model: {p50, p90, p99}} at the headline batch, for the chart drawn without raw samples."""
    out = {}
    for model in manifest.benchmarked_models:
        record = manifest.latency_of(model)
        if record is not None:
            out[model] = {k: v for k, v in (("p50", record.p50_ms), ("p90", record.p90_ms),
                                            ("p99", record.p99_ms)) if v is not None}
    return out


def _dense_pruned(manifest: Manifest) -> dict[str, tuple[Optional[float], Optional[float]]]:
    """Every figure measured on both sides, dense first, as the summary and ratio chart show them."""
    dense, pruned = manifest.latency_of("dense"), manifest.latency_of("pruned")

    def latency(record, key):
        return None if record is None else getattr(record, key)

    return {
        "parameters": (manifest.params_before, manifest.params_after),
        "FLOPs": (manifest.flops_before, manifest.flops_after),
        "size on disk": (manifest.size_bytes.get("dense_onnx"), manifest.size_bytes.get("pruned_onnx")),
        "latency p50": (latency(dense, "p50_ms"), latency(pruned, "p50_ms")),
        "latency p99": (latency(dense, "p99_ms"), latency(pruned, "p99_ms")),
        "peak memory": (latency(dense, "memory_mb"), latency(pruned, "memory_mb")),
        "weights": (latency(dense, "weight_bytes"), latency(pruned, "weight_bytes")),
        "activations": (latency(dense, "activation_bytes"), latency(pruned, "activation_bytes")),
        "fresh RSS": (latency(dense, "fresh_peak_rss_mb"), latency(pruned, "fresh_peak_rss_mb")),
    }


def efficiency_ratios(manifest: Manifest) -> dict[str, float]:
    """Pruned / dense for every figure measured on both sides."""
    unresolved = any(_fmt_attributed(manifest, m).startswith("<") for m in ("dense", "pruned"))
    return {label: pruned / dense for label, (dense, pruned) in _dense_pruned(manifest).items()
            if label != "latency p99" and dense and pruned is not None
            and not (label == "peak memory" and unresolved)}


# --- formatting ------------------------------------------------------------------------------


def _fmt(value: Optional[float], unit: str = "", digits: int = 3) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:.{digits}f}{unit}"


def _fmt_count(value: Optional[float], unit: str = "") -> str:
    if value is None:
        return NOT_MEASURED
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _fmt_attributed(manifest: Manifest, model: str) -> str:
    """In-process attributed memory, as '< 8 MB' below what the method resolves."""
    record = manifest.latency_of(model)
    if record is None or record.memory_mb is None:
        return NOT_MEASURED
    if record.memory_resolution_mb is not None and record.memory_mb < record.memory_resolution_mb:
        return f"< {record.memory_resolution_mb:g} MB"
    return _fmt(record.memory_mb, " MB", 1)


def _fmt_bytes(value: Optional[float]) -> str:
    return NOT_MEASURED if value is None else f"{value / 1e6:.3f} MB"


def _fmt_exact_bytes(value: Optional[float]) -> str:
    """An exact byte count: small ones in bytes, so a real size never reads as 0.000 MB."""
    if value is None:
        return NOT_MEASURED
    return f"{value:.0f} B" if value < 10_000 else f"{value / 1e6:.3f} MB"


def _fmt_activations(manifest: Manifest, model: str) -> str:
    """Peak activations with '>= ' / '<= ' / '~ ' where the figure is a bound (measure.onnx_memory)."""
    from edgeprune.measure.onnx_memory import bound_prefix

    record = manifest.latency_of(model)
    if record is None or record.activation_bytes is None:
        return NOT_MEASURED
    return bound_prefix(record.activation_bound) + _fmt_exact_bytes(record.activation_bytes)


def _fmt_pct(value: Optional[float]) -> str:
    return NOT_MEASURED if value is None else f"{value * 100:.1f}%"


def _ratio(dense: Optional[float], pruned: Optional[float]) -> str:
    return f"{pruned / dense:.2f}×" if dense and pruned is not None else "n/a"


def summary_rows(manifest: Manifest) -> list[SummaryRow]:
    figures = _dense_pruned(manifest)
    rows = []
    for label, key, fmt in (
        ("Parameters", "parameters", _fmt_count),
        ("Size on disk (ONNX)", "size on disk", _fmt_bytes),
        ("FLOPs (per image)", "FLOPs", lambda v: _fmt_count(v, "FLOPs")),
        ("Latency p50", "latency p50", lambda v: _fmt(v, " ms")),
        ("Latency p99", "latency p99", lambda v: _fmt(v, " ms")),
        ("Memory attributed in-process (RSS at load + growth)", "peak memory", None),
        ("Weights (ONNX initializers)", "weights", _fmt_exact_bytes),
        ("Peak activations (computed, headline batch)", "activations", None),
        ("Peak RSS, fresh process (runtime included)", "fresh RSS", lambda v: _fmt(v, " MB", 1)),
    ):
        dense, pruned = figures[key]
        if key == "peak memory" and all(v is not None for v in figures["fresh RSS"]):
            continue  # the fresh-process figure is the one to read; in-process attribution floors at 8 MB
        if key == "activations" and (dense is not None or pruned is not None):
            rows.append(SummaryRow(label, _fmt_activations(manifest, "dense"), _fmt_activations(manifest, "pruned"),
                                   _ratio(dense, pruned)))
            continue
        if key == "peak memory":
            d_txt, p_txt = _fmt_attributed(manifest, "dense"), _fmt_attributed(manifest, "pruned")
            resolved = all(t == NOT_MEASURED or not t.startswith("<") for t in (d_txt, p_txt))
            rows.append(SummaryRow(label, d_txt, p_txt, _ratio(dense, pruned) if resolved else "n/a"))
            continue
        if key != "peak memory" and dense is None and pruned is None and key in (
                "weights", "activations", "fresh RSS"):
            continue  # older manifests: not recorded, and not worth a row of "not measured"
        rows.append(SummaryRow(label, fmt(dense), fmt(pruned), _ratio(dense, pruned)))
    before, after = manifest.accuracy_before, manifest.accuracy_after
    change = f"{(after - before) * 100:+.1f} points" if before is not None and after is not None else "n/a"
    rows.append(SummaryRow("Accuracy (top-1, test set)", _fmt_pct(before), _fmt_pct(after), change))
    return rows


def _latency_rows(manifest: Manifest) -> list[dict]:
    """Every benchmarked model (dense, pruned and each lower-precision engine) at every batch."""
    rows = []
    for record in sorted(manifest.latency, key=lambda r: (r.batch, r.model != "dense", r.model)):
        speedup = manifest.speedup_of(record.model, record.batch)
        rows.append({
            "model": record.model, "batch": record.batch,
            "p50": _fmt(record.p50_ms, " ms"), "p90": _fmt(record.p90_ms, " ms"),
            "p99": _fmt(record.p99_ms, " ms"), "mean": _fmt(record.mean_ms, " ms"),
            "cv": _fmt_pct(record.cv), "n": NOT_MEASURED if record.n is None else str(record.n),
            "speedup": "baseline" if record.model == "dense" else _speedup_text(speedup),
        })
    return rows


def _speedup_text(speedup) -> str:
    if speedup is None:
        return NOT_MEASURED
    interval = f" [{speedup.ci95[0]:.2f}–{speedup.ci95[1]:.2f}]" if speedup.ci95 else ""
    return f"{speedup.speedup:.2f}×{interval}"


def _engine_rows(manifest: Manifest) -> list[dict]:
    rows = []
    for engine in manifest.engines:
        parity = engine.parity
        parity_text = (f"max abs err {parity.max_abs_err}, top-1 agreement {_fmt_pct(parity.top1_agreement)}"
                       if parity is not None else NOT_MEASURED)
        rows.append({"name": engine.name, "path": engine.path, "precision": engine.precision,
                     "parity": parity_text, "accuracy": _fmt_pct(engine.accuracy)})
    return rows


def _pruning_rows(manifest: Manifest) -> list[tuple[str, str]]:
    plan = manifest.plan
    return [
        ("Budget", manifest.budget),
        ("Keep requested", _fmt(manifest.keep_requested)),
        ("Keep achieved", _fmt(manifest.keep_achieved)),
        ("Criterion", str(plan.get("criterion") or NOT_MEASURED)),
        ("Round channels to", str(plan.get("round_to") or NOT_MEASURED)),
        ("Minimum channels", str(plan.get("min_channels") or NOT_MEASURED)),
        ("Plan note", manifest.keep_note or "none"),
        *_latency_budget_rows(manifest),
    ]


def _latency_budget_rows(manifest: Manifest) -> list[tuple[str, str]]:
    """The closed loop's record, when the budget was latency: what was asked, predicted, measured."""
    record = manifest.latency_budget
    if not record:
        return []
    low, high = record.get("measured_ratio_ci95") or (None, None)
    rows = [
        ("Latency requested (pruned / dense)", _fmt(record.get("requested_ratio"))),
        ("Latency predicted by the table", _fmt(record.get("predicted_ratio"))),
        ("Latency measured on the target (95% CI)",
         f"{_fmt(record.get('measured_ratio'))} ({_fmt(low)}-{_fmt(high)})"
         + (f", by {record['measured_by']}" if record.get("measured_by") else "")),
    ]
    if record.get("loop_measured_ratio") is not None:
        loop_low, loop_high = record.get("loop_measured_ratio_ci95") or (None, None)
        rows.append(("Latency measured in the closed loop's chosen round (95% CI)",
                     f"{_fmt(record.get('loop_measured_ratio'))} ({_fmt(loop_low)}-{_fmt(loop_high)})"))
    rows.append(("Closed-loop rounds", f"{record.get('rounds')} (tolerance ±{100 * float(record.get('tolerance', 0)):.0f} points)"))
    return rows


def _model_rows(manifest: Manifest) -> list[tuple[str, str]]:
    model, spec = manifest.model, manifest.input
    names = list(spec.class_names or ()) if spec is not None else []
    shown_names = ", ".join(map(str, names[:20])) + (f" … ({len(names)} in all)" if len(names) > 20 else "")
    return [
        ("Model", str(model.get("spec") or NOT_MEASURED)),
        ("Data", str(model.get("data") or NOT_MEASURED)),
        ("Input shape", str(list(spec.shape)) if spec is not None else NOT_MEASURED),
        ("Input dtype / layout", f"{spec.dtype} / {spec.layout}" if spec is not None else NOT_MEASURED),
        ("Normalisation mean / std", f"{list(spec.mean)} / {list(spec.std)}"
         if spec is not None and spec.mean is not None and spec.std is not None else NOT_MEASURED),
        ("Classes", str(manifest.num_classes or len(names) or NOT_MEASURED)),
        ("Chance accuracy", _fmt_pct(manifest.chance_accuracy)),
        ("Class names", shown_names or NOT_MEASURED),
    ]


def _key_values(mapping: Any) -> list[tuple[str, str]]:
    if not isinstance(mapping, Mapping):
        return []
    return [(str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in mapping.items()]


def report_context(manifest: Manifest, findings: list[Finding], thresholds: Thresholds,
                   plot_list: list[Plot]) -> dict:
    """Everything the templates print, already formatted, so templates hold no logic of their own."""
    by_section: dict[str, list[Finding]] = {}
    for finding in findings:
        by_section.setdefault(SECTION_OF_RULE.get(finding.rule_id, "other"), []).append(finding)
    headline = manifest.speedup_of("pruned")
    layers = [{"name": n, "before": b, "after": a, "kept": f"{a / b * 100:.0f}%" if b else "n/a"}
              for n, b, a in pruned_channel_counts(manifest)]
    return {
        "name": manifest.name,
        "created": manifest.created or NOT_MEASURED,
        "version": str(manifest.versions.get("edgeprune") or "?"),
        "verdict": verdict(findings),
        "summary_rows": summary_rows(manifest),
        "model_rows": _model_rows(manifest),
        "pruning_rows": _pruning_rows(manifest),
        "layers": layers,
        "engine_rows": _engine_rows(manifest),
        "latency_rows": _latency_rows(manifest),
        "speedup": _fmt(None if headline is None else headline.speedup, "×", 2),
        "speedup_ci95": (f"{headline.ci95[0]:.2f}–{headline.ci95[1]:.2f}×"
                         if headline is not None and headline.ci95 else NOT_MEASURED),
        "target_rows": _key_values(manifest.target),
        "environment_rows": _key_values(manifest.environment),
        "version_rows": _key_values(manifest.versions),
        "findings_by_section": by_section,
        "risks": sorted((f for f in findings if f.severity != "ok"),
                        key=lambda f: _SEVERITY_ORDER[f.severity]),
        "passed": [f for f in findings if f.severity == "ok"],
        "plots": {p.file_name: p for p in plot_list},
        "thresholds": thresholds,
        "not_measured": NOT_MEASURED,
    }


def _escape_markdown(value: Any) -> str:
    text = " ".join(str(value).split())
    for char in "\\`*_[]<>|":
        text = text.replace(char, "\\" + char)
    return text


def _template_environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["md"] = _escape_markdown
    return environment
