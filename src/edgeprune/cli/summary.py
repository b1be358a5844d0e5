"""The table printed at the end of `edgeprune export`: before, after, ratio, and the verdict."""
from __future__ import annotations

from rich.table import Table

from edgeprune.cli.console import console


def _ratio(before, after, invert: bool = False) -> str:
    if not before or after is None:
        return "-"
    value = after / before if not invert else before / after
    return f"{value:.2f}x"


def _count(value) -> str:
    if value is None:
        return "not measured"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _ms(latency: dict | None, key: str) -> str:
    value = (latency or {}).get(key)
    return "not measured" if value is None else f"{value:.3f} ms"


def print_export_summary(result) -> None:
    from edgeprune.report import evaluate, verdict

    m = result.manifest
    lat = m.get("latency_ms") or {}
    dense, pruned = lat.get("dense"), lat.get("pruned")
    table = Table(title=f"{m['name']}  ({m['model']['spec']} on {m['model']['data']}, target {m['target']['name']})")
    for column in ("", "dense", "pruned", "pruned / dense"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("parameters", _count(m["params_before"]), _count(m["params_after"]), _ratio(m["params_before"], m["params_after"]))
    table.add_row("FLOPs (per image)", _count(m["flops_before"]), _count(m["flops_after"]), _ratio(m["flops_before"], m["flops_after"]))
    sizes = m.get("size_bytes", {})
    table.add_row("ONNX size", _count(sizes.get("dense_onnx")) + "B", _count(sizes.get("pruned_onnx")) + "B",
                  _ratio(sizes.get("dense_onnx"), sizes.get("pruned_onnx")))
    table.add_row("top-1 accuracy (test)", f"{m['accuracy_before']:.2%}", f"{m['accuracy_after']:.2%}",
                  f"{(m['accuracy_after'] - m['accuracy_before']) * 100:+.2f} pts")
    for key, label in (("p50", "latency p50"), ("p99", "latency p99")):
        table.add_row(f"{label} (batch {(dense or {}).get('batch', 1)})", _ms(dense, key), _ms(pruned, key),
                      _ratio((dense or {}).get(key), (pruned or {}).get(key)) if dense and pruned else "-")
    for engine in m.get("engines", []):
        if engine.get("accuracy") is not None and engine.get("precision") != "fp32":
            table.add_row(f"accuracy {engine['precision']} ({engine['name']})", "", f"{engine['accuracy']:.2%}", "")
    console.print(table)
    speedup = m.get("speedup")
    ci = m.get("speedup_ci95")
    console.print(
        f"keep requested {m['keep_requested']:.3f}, achieved {m['keep_achieved']:.4f} ({m['budget']}); "
        f"shrink check max |diff| {m['shrink_check']['max_abs_diff']:.2g}; ONNX parity max |err| "
        f"{m['onnx_parity']['max_abs_err']:.2g}, top-1 agreement {m['onnx_parity']['top1_agreement']:.3f}"
    )
    if speedup is not None:
        console.print(f"speedup (p50 dense / p50 pruned, interleaved): {speedup:.2f}x, 95% interval "
                      f"[{ci[0]:.2f}, {ci[1]:.2f}]")
    for line in m.get("skipped", []):
        console.print(f"[yellow]skipped:[/] {line}")
    if m.get("keep_note"):
        console.print(f"[yellow]note:[/] {m['keep_note']}")
    final = verdict(evaluate(m))
    colour = {"fail": "red", "warn": "yellow"}.get(final.status, "green")
    console.print(f"[bold {colour}]verdict ({final.status}):[/] {final.summary}")
    console.print(f"wrote {result.out_dir}/ (model.onnx, manifest.json, report.md, report.html)")
