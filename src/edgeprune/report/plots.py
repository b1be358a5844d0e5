"""The report's charts as PNG bytes, drawn off-screen.

Uses matplotlib's object API with the Agg canvas directly (no pyplot), so rendering never
touches the user's global backend and needs no display. Each function returns None when it has
nothing measured to draw, never a chart of made-up numbers.
"""
from __future__ import annotations

import io
from typing import Mapping, Optional, Sequence

DENSE_COLOR = "#8c8c8c"
PRUNED_COLOR = "#1f77b4"


def _figure(width_in: float, height_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def channels_chart(rows: Sequence[tuple[str, int, int]]) -> Optional[bytes]:
    """Horizontal bars: output channels before and after pruning, one row per layer."""
    if not rows:
        return None
    names = [name for name, _, _ in rows]
    before = [b for _, b, _ in rows]
    after = [a for _, _, a in rows]
    figure = _figure(7.5, 1.2 + 0.28 * len(rows))
    axes = figure.add_subplot()
    positions = range(len(rows))
    axes.barh([p + 0.2 for p in positions], before, height=0.4, color=DENSE_COLOR, label="before")
    axes.barh([p - 0.2 for p in positions], after, height=0.4, color=PRUNED_COLOR, label="after")
    axes.set_yticks(list(positions), names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("output channels")
    axes.set_title("Channels per layer, before and after pruning")
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def latency_chart(samples_ms: Mapping[str, Sequence[float]]) -> Optional[bytes]:
    """Overlaid histograms of raw latency samples, with the median and p99 of each marked."""
    import numpy as np

    series = {label: np.asarray(values, dtype=float) for label, values in samples_ms.items()
              if len(values) > 0}
    if not series:
        return None
    figure = _figure(7.5, 3.6)
    axes = figure.add_subplot()
    low = min(float(v.min()) for v in series.values())
    high = max(float(v.max()) for v in series.values())
    bins = np.linspace(low, high if high > low else low + 1e-3, 60)
    colors = [PRUNED_COLOR if "prun" in label.lower() else DENSE_COLOR for label in series]
    for (label, values), color in zip(series.items(), colors):
        p50, p99 = np.percentile(values, [50, 99])
        axes.hist(values, bins=bins, histtype="step", linewidth=1.5, color=color,
                  label=f"{label}: median {p50:.3f} ms, p99 {p99:.3f} ms (n={values.size})")
        axes.axvline(p50, color=color, linestyle="-", linewidth=1)
        axes.axvline(p99, color=color, linestyle=":", linewidth=1)
    axes.set_xlabel("latency per run (ms)")
    axes.set_ylabel("runs")
    axes.set_title("Latency distribution (solid: median, dotted: p99)")
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _png(figure)


def percentile_chart(latency_ms: Mapping[str, Mapping[str, float]]) -> Optional[bytes]:
    """Grouped bars of recorded p50 / p90 / p99, for exports without raw samples."""
    stats = ("p50", "p90", "p99")
    models = [m for m in latency_ms if isinstance(latency_ms.get(m), Mapping)]
    if not any(isinstance(latency_ms[m].get(s), (int, float)) for m in models for s in stats):
        return None
    figure = _figure(6.0, 3.2)
    axes = figure.add_subplot()
    for offset, model in zip((-0.2, 0.2), models):
        values = [latency_ms[model].get(s) for s in stats]
        xs = [i + offset for i, v in enumerate(values) if isinstance(v, (int, float))]
        ys = [v for v in values if isinstance(v, (int, float))]
        axes.bar(xs, ys, width=0.4, label=model,
                 color=PRUNED_COLOR if model == "pruned" else DENSE_COLOR)
    axes.set_xticks(range(len(stats)), stats)
    axes.set_ylabel("latency (ms)")
    axes.set_title("Recorded latency percentiles")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def ratio_chart(ratios: Mapping[str, float]) -> Optional[bytes]:
    """Pruned / dense for each measured figure; the line at 1.0 is 'no change'."""
    if not ratios:
        return None
    labels = list(ratios)
    values = [ratios[k] for k in labels]
    figure = _figure(6.5, 1.0 + 0.4 * len(labels))
    axes = figure.add_subplot()
    colors = [PRUNED_COLOR if v <= 1.0 else "#d62728" for v in values]
    axes.barh(range(len(labels)), values, color=colors)
    for i, v in enumerate(values):
        axes.text(v, i, f" {v:.2f}×", va="center", fontsize=8)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_yticks(range(len(labels)), labels)
    axes.invert_yaxis()
    axes.set_xlim(0, max(1.2, max(values) * 1.2))
    axes.set_xlabel("pruned / dense (lower is smaller or faster)")
    axes.set_title("Efficiency ratios")
    return _png(figure)
