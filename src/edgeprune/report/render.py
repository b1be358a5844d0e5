"""Render report.md and a self-contained report.html for an export folder.

Every figure comes from manifest.json / bench.json (or, for sizes, the files on disk), and every
verdict sentence is a `Finding` from `rules.py`; an absent figure is printed as "not measured".
The HTML embeds its plots as base64 PNG data URIs so it can be mailed or attached to CI as one
file with no external resources.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import jinja2

from edgeprune.errors import InputError
from edgeprune.fileio import read_json_object, write_bytes_atomic, write_text_atomic
from edgeprune.report import plots
from edgeprune.report.evidence import (
    accuracy,
    accuracy_scale,
    chance_accuracy,
    latency_samples_ms,
    measured_speedup,
    number,
    pruned_channel_counts,
)
from edgeprune.report.rules import Finding, Thresholds, Verdict, evaluate, verdict

TEMPLATE_DIR = Path(__file__).parent / "templates"
MANIFEST_SCHEMA_VERSION = 1
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
    manifest = with_measured_sizes(load_json(export_dir, "manifest.json", required=True), export_dir)
    bench = load_json(export_dir, "bench.json", required=False)
    thresholds = Thresholds(accuracy_tolerance_points=accuracy_tolerance_points,
                            accuracy_fail_points=max(5.0, accuracy_tolerance_points))
    findings = evaluate(manifest, bench, accuracy_tolerance_points=accuracy_tolerance_points,
                        accuracy_fail_points=thresholds.accuracy_fail_points)

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


def load_json(export_dir: Path, file_name: str, *, required: bool) -> Optional[dict]:
    """Read one JSON file of the export; a missing required file or bad JSON is a user error."""
    if not export_dir.is_dir():
        raise InputError(f"no export folder at {export_dir}; pass the folder `edgeprune export` wrote")
    path = export_dir / file_name
    if not path.is_file():
        if required:
            raise InputError(f"{path} not found; is {export_dir} an export folder?")
        return None
    document = read_json_object(path, InputError, "re-run the export")
    version = document.get("schema_version")
    if file_name == "manifest.json" and isinstance(version, int) and version > MANIFEST_SCHEMA_VERSION:
        raise InputError(f"{path} has schema_version {version}; this edgeprune reads "
                         f"{MANIFEST_SCHEMA_VERSION}. Upgrade edgeprune.")
    return document


def with_measured_sizes(manifest: dict, export_dir: Path) -> dict:
    """Fill size_bytes from the ONNX files on disk where the manifest lacks it (measured, not guessed)."""
    sizes = dict(manifest.get("size_bytes") or {})
    for key, file_name in (("dense_onnx", "dense.onnx"), ("pruned_onnx", "model.onnx")):
        if number(sizes, key) is None and (export_dir / file_name).is_file():
            sizes[key] = (export_dir / file_name).stat().st_size
    return {**manifest, "size_bytes": sizes} if sizes else manifest


def _draw_plots(manifest: Mapping[str, Any], bench: Optional[Mapping[str, Any]]):
    channels = plots.channels_chart(pruned_channel_counts(manifest))
    if channels:
        yield "channels.png", "Channels per layer", channels
    samples = latency_samples_ms(bench)
    latency = plots.latency_chart(samples) if samples else plots.percentile_chart(
        manifest.get("latency_ms") or {})
    if latency:
        yield "latency.png", "Latency", latency
    efficiency = plots.ratio_chart(efficiency_ratios(manifest))
    if efficiency:
        yield "efficiency.png", "Efficiency ratios", efficiency


def efficiency_ratios(manifest: Mapping[str, Any]) -> dict[str, float]:
    """Pruned / dense for every figure measured on both sides."""
    pairs = {
        "parameters": (("params_before",), ("params_after",)),
        "FLOPs": (("flops_before",), ("flops_after",)),
        "size on disk": (("size_bytes", "dense_onnx"), ("size_bytes", "pruned_onnx")),
        "latency p50": (("latency_ms", "dense", "p50"), ("latency_ms", "pruned", "p50")),
        "peak memory": (("memory_mb", "dense"), ("memory_mb", "pruned")),
    }
    ratios = {}
    for label, (dense_path, pruned_path) in pairs.items():
        dense, pruned = number(manifest, *dense_path), number(manifest, *pruned_path)
        if dense and pruned is not None:
            ratios[label] = pruned / dense
    return ratios


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


def _fmt_bytes(value: Optional[float]) -> str:
    return NOT_MEASURED if value is None else f"{value / 1e6:.3f} MB"


def _fmt_pct(value: Optional[float]) -> str:
    return NOT_MEASURED if value is None else f"{value * 100:.1f}%"


def _ratio(dense: Optional[float], pruned: Optional[float]) -> str:
    return f"{pruned / dense:.2f}×" if dense and pruned is not None else "n/a"


def summary_rows(manifest: Mapping[str, Any]) -> list[SummaryRow]:
    m = manifest
    rows = []
    for label, path_dense, path_pruned, fmt in (
        ("Parameters", ("params_before",), ("params_after",), _fmt_count),
        ("Size on disk (ONNX)", ("size_bytes", "dense_onnx"), ("size_bytes", "pruned_onnx"), _fmt_bytes),
        ("FLOPs (per image)", ("flops_before",), ("flops_after",), lambda v: _fmt_count(v, "FLOPs")),
        ("Latency p50", ("latency_ms", "dense", "p50"), ("latency_ms", "pruned", "p50"),
         lambda v: _fmt(v, " ms")),
        ("Latency p99", ("latency_ms", "dense", "p99"), ("latency_ms", "pruned", "p99"),
         lambda v: _fmt(v, " ms")),
        ("Peak memory", ("memory_mb", "dense"), ("memory_mb", "pruned"), lambda v: _fmt(v, " MB", 1)),
    ):
        dense, pruned = number(m, *path_dense), number(m, *path_pruned)
        rows.append(SummaryRow(label, fmt(dense), fmt(pruned), _ratio(dense, pruned)))
    before, after = accuracy(m, "accuracy_before"), accuracy(m, "accuracy_after")
    change = f"{(after - before) * 100:+.1f} points" if before is not None and after is not None else "n/a"
    rows.append(SummaryRow("Accuracy (top-1, test set)", _fmt_pct(before), _fmt_pct(after), change))
    return rows


def _latency_rows(manifest: Mapping[str, Any]) -> list[dict]:
    rows = []
    for model in ("dense", "pruned"):
        stats = (manifest.get("latency_ms") or {}).get(model)
        if not isinstance(stats, Mapping):
            continue
        row = {"model": model}
        for key in ("p50", "p90", "p99", "mean"):
            row[key] = _fmt(number(stats, key), " ms")
        row["cv"] = _fmt_pct(number(stats, "cv"))
        n = number(stats, "n")
        row["n"] = NOT_MEASURED if n is None else str(int(n))
        rows.append(row)
    return rows


def _engine_rows(manifest: Mapping[str, Any]) -> list[dict]:
    rows = []
    for engine in manifest.get("engines") or []:
        if not isinstance(engine, Mapping):
            continue
        parity = engine.get("parity")
        if isinstance(parity, Mapping):
            parity_text = (f"max abs err {parity.get('max_abs_err')}, top-1 agreement "
                           f"{_fmt_pct(number(parity, 'top1_agreement'))}")
        else:
            parity_text = NOT_MEASURED
        rows.append({"name": str(engine.get("name", "?")), "path": str(engine.get("path", "")),
                     "precision": str(engine.get("precision", "?")), "parity": parity_text,
                     "accuracy": _fmt_pct(_engine_accuracy(manifest, engine))})
    return rows


def _engine_accuracy(manifest: Mapping[str, Any], engine: Mapping[str, Any]) -> Optional[float]:
    value = number(engine, "accuracy")
    return None if value is None else value / accuracy_scale(manifest)


def _pruning_rows(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    plan = manifest.get("plan") or {}
    requested, achieved = number(manifest, "keep_requested"), number(manifest, "keep_achieved")
    return [
        ("Budget", str(manifest.get("budget") or NOT_MEASURED)),
        ("Keep requested", _fmt(requested)),
        ("Keep achieved", _fmt(achieved)),
        ("Criterion", str(plan.get("criterion") or NOT_MEASURED)),
        ("Round channels to", str(plan.get("round_to") or NOT_MEASURED)),
        ("Minimum channels", str(plan.get("min_channels") or NOT_MEASURED)),
        ("Plan note", str(manifest.get("keep_note") or "none")),
    ]


def _model_rows(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    model = manifest.get("model") or {}
    spec = manifest.get("input") or {}
    names = spec.get("class_names") or []
    shown_names = ", ".join(map(str, names[:20])) + (f" … ({len(names)} in all)" if len(names) > 20 else "")
    chance = chance_accuracy(manifest)
    return [
        ("Model", str(model.get("spec") or NOT_MEASURED)),
        ("Data", str(model.get("data") or NOT_MEASURED)),
        ("Input shape", str(spec.get("shape") or NOT_MEASURED)),
        ("Input dtype / layout", f"{spec.get('dtype') or '?'} / {spec.get('layout') or '?'}"),
        ("Normalisation mean / std", f"{spec.get('mean')} / {spec.get('std')}"
         if spec.get("mean") is not None else NOT_MEASURED),
        ("Classes", str(manifest.get("num_classes") or len(names) or NOT_MEASURED)),
        ("Chance accuracy", _fmt_pct(chance)),
        ("Class names", shown_names or NOT_MEASURED),
    ]


def _key_values(mapping: Any) -> list[tuple[str, str]]:
    if not isinstance(mapping, Mapping):
        return []
    return [(str(k), json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in mapping.items()]


def report_context(manifest: Mapping[str, Any], findings: list[Finding], thresholds: Thresholds,
                   plot_list: list[Plot]) -> dict:
    """Everything the templates print, already formatted, so templates hold no logic of their own."""
    by_section: dict[str, list[Finding]] = {}
    for finding in findings:
        by_section.setdefault(SECTION_OF_RULE.get(finding.rule_id, "other"), []).append(finding)
    speedup = measured_speedup(manifest)
    ci = manifest.get("speedup_ci95")
    layers = [{"name": n, "before": b, "after": a, "kept": f"{a / b * 100:.0f}%" if b else "n/a"}
              for n, b, a in pruned_channel_counts(manifest)]
    return {
        "name": str(manifest.get("name") or "export"),
        "created": str(manifest.get("created") or NOT_MEASURED),
        "version": str((manifest.get("versions") or {}).get("edgeprune") or "?"),
        "verdict": verdict(findings),
        "summary_rows": summary_rows(manifest),
        "model_rows": _model_rows(manifest),
        "pruning_rows": _pruning_rows(manifest),
        "layers": layers,
        "engine_rows": _engine_rows(manifest),
        "latency_rows": _latency_rows(manifest),
        "speedup": _fmt(speedup, "×", 2),
        "speedup_ci95": (f"{ci[0]:.2f}–{ci[1]:.2f}×" if isinstance(ci, list) and len(ci) == 2
                         and all(isinstance(x, (int, float)) for x in ci) else NOT_MEASURED),
        "target_rows": _key_values(manifest.get("target")),
        "environment_rows": _key_values(manifest.get("environment")),
        "version_rows": _key_values(manifest.get("versions")),
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
