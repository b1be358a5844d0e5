"""`edgeprune bench PATH`: latency percentiles, throughput and memory, with a table at the end."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import click


class BatchList(click.ParamType):
    """'1,8,32' -> (1, 8, 32): positive, distinct integers."""

    name = "BATCHES"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]):
        if isinstance(value, tuple):
            return value
        try:
            sizes = tuple(int(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of integers, e.g. 1,8,32", param, ctx)
        if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
            self.fail(f"{value!r}: batch sizes must be distinct positive integers", param, ctx)
        return sizes


@click.command("bench")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--target", default="cpu-x86", show_default=True, help="Target profile name or YAML.")
@click.option("--batch", "batch_sizes", type=BatchList(), default=None,
              help="Batch sizes, e.g. 1,8,32 [default: the target's].")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Timed seconds each model needs per batch (with --min-iterations, both).")
@click.option("--min-iterations", type=click.IntRange(min=1), default=200, show_default=True,
              help="Timed iterations each model needs per batch.")
@click.option("--rounds", type=click.IntRange(min=1), default=20, show_default=True,
              help="At least this many interleaved rounds.")
@click.option("--warmup", "warmup_s", type=click.FloatRange(min=0), default=0.2,
              show_default=True, help="Warm-up seconds per model and batch (discarded).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads [default: the target's].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the full result (raw samples included) here.")
def bench(path: Path, target: str, batch_sizes: Optional[tuple[int, ...]], min_seconds: float,
          min_iterations: int, rounds: int, warmup_s: float, threads: Optional[int],
          json_path: Optional[Path]) -> None:
    """Benchmark an ONNX file, an export folder (dense vs pruned, interleaved) or a bundle.

    Each model runs on the engine the target names (a TensorRT plan, a torch FP16 program, an
    ONNX Runtime session), found in the folder or built for this machine; a target that cannot run
    here is refused, never measured on another device.
    """
    from edgeprune.measure.bench import BenchConfig
    from edgeprune.workflows.bench import benchmark_path
    from edgeprune.cli.console import console, progress_bars
    from edgeprune.targets import load_target

    target_obj = load_target(target)
    config = BenchConfig(warmup_s=warmup_s, min_iterations=min_iterations,
                         min_seconds=min_seconds, rounds=rounds,
                         batch_sizes=batch_sizes or tuple(target_obj.batch_sizes), threads=threads)
    with progress_bars() as progress:
        result = benchmark_path(path, target_obj, config, progress)
    if json_path is not None:
        result.write(json_path)
    from edgeprune.report.bench_rules import evaluate_bench

    print_result(console, result, evaluate_bench(result.to_dict(), target_obj))
    if json_path is not None:
        console.print(f"wrote {json_path}", highlight=False)


def _activations_text(entry) -> str:
    """The graph's peak activations, or the device memory a compiled engine reports (TensorRT)."""
    if entry.activation_bytes is not None:
        bound = entry.activation_bound or ("exact" if entry.activation_exact is not False else "lower bound")
        return _bytes_mb(entry.activation_bytes, bound)
    if entry.engine_memory_bytes is not None:
        return "engine " + _bytes_mb(entry.engine_memory_bytes)
    return "–"


def _bytes_mb(value: Optional[int], bound: Optional[str] = "exact") -> str:
    """A byte count in the unit that keeps its digits (never a rounded-away 0.000 MB), with
    '>= ' / '<= ' / '~ ' in front where it is a bound (see measure.onnx_memory)."""
    from edgeprune.measure.onnx_memory import bound_prefix

    if value is None:
        return "–"
    prefix = bound_prefix(bound)
    for scale, unit in ((1024 ** 3, "GiB"), (1024 ** 2, "MiB"), (1024, "KiB")):
        if value >= scale:
            return f"{prefix}{value / scale:.2f} {unit}"
    return f"{prefix}{value} B"


def _ms(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.3f}"


def _rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def print_result(console: Any, result: Any, findings: Sequence[Any] = ()) -> None:
    """The table: every figure names its statistic; rows the rules call noisy are flagged, not
    hidden, and every other finding (report.bench_rules) is printed under it with the verdict."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from edgeprune.measure.memory import ATTRIBUTION_RESOLUTION_MB, mb_text
    from edgeprune.report.findings import verdict

    cfg = result.config
    env = result.environment
    table = Table(title=f"latency on {result.target}: ms over timed iterations, p50 = median",
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    for column in ("model", "batch", "n/rounds", "p50 ms", "p90 ms", "p99 ms", "CV", "items/s",
                   "weights", "activations", "RSS MB", "attrib. MB"):
        table.add_column(column, justify="left" if column == "model" else "right")
    noisy = {(f.figures.get("model"), f.figures.get("batch")) for f in findings
             if f.rule_id == "bench_timing_noise" and f.severity == "warn"}
    for e in result.entries:
        memory = e.model_memory_mb if e.model_memory_mb is not None else e.run_rss_growth_mb
        cv = f"[yellow]{e.cv:.0%}![/]" if (e.model, e.batch) in noisy else f"{e.cv:.0%}"
        table.add_row(e.model, str(e.batch), f"{e.n}/{e.rounds}", _ms(e.p50_ms), _ms(e.p90_ms),
                      _ms(e.p99_ms), cv, _rate(e.throughput_items_per_s),
                      _bytes_mb(e.weight_bytes), _activations_text(e),
                      mb_text(e.fresh_peak_rss_mb), mb_text(memory, ATTRIBUTION_RESOLUTION_MB))
    console.print(table)
    engines = {}
    for e in result.entries:
        engines.setdefault(e.model, f"{e.model} = {e.runner} on {e.device}" + (f" ({e.precision})" if e.precision else ""))
    console.print("engines: " + ", ".join(engines.values()), highlight=False)
    warm = ", ".join(sorted({f"{e.model}@{e.batch}: {e.warmup_iterations}" for e in result.entries}))
    console.print(f"warm-up {cfg.warmup_s:g} s per model and batch, discarded ({warm} iterations); "
                  f"stop rule: >= {cfg.min_seconds:g} s AND >= {cfg.min_iterations} iterations "
                  f"AND >= {cfg.rounds} rounds, models interleaved ({cfg.order} order)",
                  highlight=False)
    console.print("items/s = batch / mean latency; weights = ONNX initializers, activations = "
                  "peak live activations over the graph's node order (shape inference; exact, "
                  "'>=' where a shape was unknown, '<=' for an INT8 Q/DQ graph as written; 'engine' = the "
                  "device memory a TensorRT engine reports); RSS MB = peak RSS of a fresh process that "
                  "loaded only this model (runtime included); attrib. MB = RSS added at load + "
                  f"high-water growth while running alone ({result.memory_method or 'not measured'}"
                  f"; resolves {ATTRIBUTION_RESOLUTION_MB:g} MB)", highlight=False)
    for c in result.comparisons:
        lo, hi = c.speedup_ci95
        console.print(f"[bold]{c.candidate} vs {c.baseline}[/] at batch {c.batch}: speedup "
                      f"{c.speedup:.2f}x (ratio of medians, 95% CI {lo:.2f}–{hi:.2f}, "
                      f"{c.rounds} paired rounds)", highlight=False)
    for f in findings:
        if f.severity != "ok":
            colour = {"fail": "red", "warn": "yellow"}.get(f.severity, "cyan")
            console.print(f"[{colour}]{f.severity}:[/] {escape(f.title)}: {escape(f.message)}", highlight=False)
    from edgeprune.measure.environment import load_warning

    if load_warning(env):
        console.print(f"[yellow]warning:[/] {load_warning(env)}", highlight=False)
    console.print(f"machine: {env.get('cpu_model')}, {env.get('physical_cores')} cores, "
                  f"threads {env.get('threads') or 'runtime default'}, load average "
                  f"{env.get('load_average')}, CPU affinity {env.get('cpu_affinity')}"
                  + (f", GPU {env['gpu_name']}" if env.get("gpu_name") else ""), highlight=False)
    if findings:
        final = verdict(findings)
        colour = {"fail": "red", "warn": "yellow"}.get(final.status, "green")
        console.print(f"[bold {colour}]verdict ({final.status}):[/] {escape(final.summary)}", highlight=False)
