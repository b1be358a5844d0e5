"""The table printed at the end of `edgeprune export`: before, after, ratio, and the verdict."""
from __future__ import annotations

from rich.table import Table

from edgeprune.cli.console import console


def _ratio(before, after) -> str:
    if not before or after is None:
        return "-"
    return f"{after / before:.2f}x"


def _count(value) -> str:
    if value is None:
        return "not measured"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _pct(value) -> str:
    return "not measured" if value is None else f"{value:.2%}"


def _ms(value) -> str:
    return "not measured" if value is None else f"{value:.3f} ms"


def print_export_summary(result) -> None:
    """Print the figures of `result.manifest` (a `Manifest`) and the verdict the rules derive."""
    from edgeprune.report import evaluate, verdict

    m = result.manifest
    table = Table(title=f"{m.name}  ({m.model.get('spec')} on {m.model.get('data')}, target {m.target.get('name')})")
    for column in ("", "dense", "pruned", "pruned / dense"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("parameters", _count(m.params_before), _count(m.params_after), _ratio(m.params_before, m.params_after))
    table.add_row("FLOPs (per image)", _count(m.flops_before), _count(m.flops_after), _ratio(m.flops_before, m.flops_after))
    dense_size, pruned_size = m.size_bytes.get("dense_onnx"), m.size_bytes.get("pruned_onnx")
    table.add_row("ONNX size", _count(dense_size) + "B", _count(pruned_size) + "B", _ratio(dense_size, pruned_size))
    change = (f"{(m.accuracy_after - m.accuracy_before) * 100:+.2f} pts"
              if m.accuracy_before is not None and m.accuracy_after is not None else "-")
    table.add_row("top-1 accuracy (test)", _pct(m.accuracy_before), _pct(m.accuracy_after), change)
    for engine in m.engines:
        if engine.precision != "fp32":
            table.add_row(f"accuracy {engine.precision} ({engine.name})", "", _pct(engine.accuracy), "")
    dense = m.latency_of("dense")
    for model in m.benchmarked_models:
        if model == "dense":
            continue
        record = m.latency_of(model)
        for key, label in (("p50_ms", "latency p50"), ("p99_ms", "latency p99")):
            base = getattr(dense, key) if dense is not None else None
            value = getattr(record, key)
            table.add_row(f"{label} {model} (batch {record.batch})", _ms(base), _ms(value), _ratio(base, value))
    console.print(table)
    shrink, parity = m.shrink_check, m.onnx_parity
    console.print(
        f"keep requested {m.keep_requested:.3f}, achieved {m.keep_achieved:.4f} ({m.budget}); "
        f"shrink check max |diff| {shrink.max_abs_diff:.2g}; ONNX parity max |err| "
        f"{parity.max_abs_err:.2g}, top-1 agreement {parity.top1_agreement:.3f}"
    )
    for model in m.benchmarked_models:
        speedup = m.speedup_of(model)
        if speedup is not None:
            interval = f", 95% interval [{speedup.ci95[0]:.2f}, {speedup.ci95[1]:.2f}]" if speedup.ci95 else ""
            console.print(f"speedup of {model} (p50 dense / p50 {model}, interleaved, batch {speedup.batch}): "
                          f"{speedup.speedup:.2f}x{interval}")
    for line in m.skipped:
        console.print(f"[yellow]skipped:[/] {line}")
    if m.keep_note:
        console.print(f"[yellow]note:[/] {m.keep_note}")
    final = verdict(evaluate(m))
    colour = {"fail": "red", "warn": "yellow"}.get(final.status, "green")
    console.print(f"[bold {colour}]verdict ({final.status}):[/] {final.summary}")
    console.print(f"wrote {result.out_dir}/ (model.onnx, manifest.json, report.md, report.html)")
