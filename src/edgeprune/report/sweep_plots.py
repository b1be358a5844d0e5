"""The sweep's three plots: accuracy vs sparsity, latency vs sparsity, accuracy vs latency.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch), so the
library can plot from any thread or a headless CI job. Bands are the 95% t interval over seeds.
Each figure carries the sweep's verdict and its warnings as a caption, so a figure seen alone
says what the terminal said.
"""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from edgeprune.fileio import write_bytes_atomic

if TYPE_CHECKING:
    from edgeprune.workflows.sweep import SweepResult

PLOT_FILES = ("accuracy_vs_sparsity.png", "latency_vs_sparsity.png", "accuracy_vs_latency.png")


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def caption_lines(result: "SweepResult", width: int) -> list[str]:
    """The verdict, then one line per warning or failure, wrapped to `width` characters."""
    judgement = result.judgement
    lines = textwrap.wrap(f"verdict ({judgement.verdict.status}): {judgement.verdict.summary}", width)
    for finding in judgement.findings:
        if finding.severity in ("warn", "fail") or finding.rule_id == "operating_point":
            lines += textwrap.wrap(f"{finding.severity}: {finding.title}: {finding.message}", width,
                                   initial_indent="- ", subsequent_indent="  ")
    return lines


def _save(figure, path: Path, caption: list[str]) -> Path:
    buffer = io.BytesIO()
    if caption:
        line_in = 7.0 / 72 * 1.25  # 7 pt text, 1.25 line spacing, in inches
        share = min(0.6, (len(caption) * line_in + 0.1) / figure.get_figheight())
        figure.text(0.01, 0.005, "\n".join(caption), fontsize=7, va="bottom", ha="left", family="monospace")
        figure.tight_layout(rect=(0, share, 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())
    return path


def _band(summary, scale: float = 1.0) -> tuple[float, float]:
    if summary.ci95_low is None:
        return summary.mean * scale, summary.mean * scale
    return summary.ci95_low * scale, summary.ci95_high * scale


def plot_sweep(result: "SweepResult", out_dir: Path) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths (latency plots need timings)."""
    out_dir = Path(out_dir)
    by_criterion: dict[str, list] = {}
    for row in result.aggregates:
        by_criterion.setdefault(row.criterion, []).append(row)
    for rows in by_criterion.values():
        rows.sort(key=lambda r: r.sparsity)
    paths = [_accuracy_vs_sparsity(result, by_criterion, out_dir / PLOT_FILES[0])]
    if any(r.pruned_p50_ms is not None for r in result.aggregates):
        paths.append(_latency_vs_sparsity(result, by_criterion, out_dir / PLOT_FILES[1]))
        paths.append(_accuracy_vs_latency(result, out_dir / PLOT_FILES[2]))
    return paths


def _accuracy_vs_sparsity(result: "SweepResult", by_criterion: dict, path: Path) -> Path:
    caption = caption_lines(result, 88)
    figure = _figure(height=4.2 + len(caption) * 0.12)
    ax = figure.add_subplot()
    for criterion, rows in by_criterion.items():
        x = [100 * r.sparsity for r in rows]
        mean = [r.accuracy_pct.mean for r in rows]
        low, high = zip(*(_band(r.accuracy_pct) for r in rows))
        low, high = [max(0.0, v) for v in low], [min(100.0, v) for v in high]  # accuracy lives in [0, 100]
        line, = ax.plot(x, mean, marker="o", markersize=3, label=f"{criterion} (n={rows[0].accuracy_pct.n})")
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    dense = result.dense_accuracy_pct
    tolerance = result.config.tolerance_points
    ax.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense {dense:.1f}%")
    ax.axhline(dense - tolerance, color="gray", linestyle=":", linewidth=1, label=f"dense - {tolerance:g} pt")
    if result.chance_accuracy_pct is not None:
        ax.axhline(result.chance_accuracy_pct, color="red", linestyle="-.", linewidth=1,
                   label=f"chance {result.chance_accuracy_pct:.1f}%")
    point = result.operating_point
    if point is not None:
        ax.plot([100 * point.sparsity], [point.accuracy_pct], marker="*", markersize=14, color="gold",
                markeredgecolor="black", linestyle="none", label=f"operating point ({point.criterion}, keep {point.keep:g})")
    ax.set_xlabel("sparsity (% of parameters removed, achieved)")
    ax.set_ylabel("test accuracy (%) after fine-tune")
    ax.set_title("Accuracy vs sparsity (mean over seeds, band: 95% t interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return _save(figure, path, caption)


def _latency_vs_sparsity(result: "SweepResult", by_criterion: dict, path: Path) -> Path:
    caption = caption_lines(result, 135)
    figure = _figure(9.6, 4.0 + len(caption) * 0.12)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    dense_values = []
    for criterion, rows in by_criterion.items():
        rows = [r for r in rows if r.pruned_p50_ms is not None]
        if not rows:
            continue
        x = [100 * r.sparsity for r in rows]
        line, = left.plot(x, [r.pruned_p50_ms.mean for r in rows], marker="o", markersize=3, label=criterion)
        low, high = zip(*(_band(r.pruned_p50_ms) for r in rows))
        left.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        right.plot(x, [r.speedup.mean for r in rows], marker="o", markersize=3, color=line.get_color(), label=criterion)
        low, high = zip(*(_band(r.speedup) for r in rows))
        right.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        dense_values += [r.dense_p50_ms.mean for r in rows]
    if dense_values:
        dense = sorted(dense_values)[len(dense_values) // 2]
        left.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense (median {dense:.3g} ms)")
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    left.set_ylabel("pruned p50 latency (ms)")
    right.set_ylabel("speedup p50(dense)/p50(pruned), interleaved")
    for ax in (left, right):
        ax.set_xlabel("sparsity (% of parameters removed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    left.set_title("ONNX Runtime CPU latency (mean over seeds)", fontsize=9)
    right.set_title("Speedup vs the dense model (mean over seeds)", fontsize=9)
    return _save(figure, path, caption)


def _accuracy_vs_latency(result: "SweepResult", path: Path) -> Path:
    caption = caption_lines(result, 88)
    figure = _figure(height=4.2 + len(caption) * 0.12)
    ax = figure.add_subplot()
    for criterion in dict.fromkeys(r.criterion for r in result.aggregates):
        rows = [r for r in result.aggregates if r.criterion == criterion and r.pruned_p50_ms is not None]
        ax.scatter([r.pruned_p50_ms.mean for r in rows], [r.accuracy_pct.mean for r in rows], s=18, label=criterion)
        for r in rows:
            ax.annotate(f"{r.keep:g}", (r.pruned_p50_ms.mean, r.accuracy_pct.mean), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
    if result.pareto:
        ax.plot([p["pruned_p50_ms"] for p in result.pareto], [p["accuracy_pct"] for p in result.pareto],
                color="black", linewidth=1, drawstyle="steps-post", label="Pareto front")
    ax.axhline(result.dense_accuracy_pct, color="gray", linestyle="--", linewidth=1, label="dense accuracy")
    ax.set_xlabel("pruned p50 latency (ms, ONNX Runtime CPU)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency (labels: keep ratio)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(figure, path, caption)
