"""`edgeprune gate`: paired (two models measured here) or stored (bench files); exit 0 pass,
1 regression, 2 incomparable/usage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from edgeprune.cli.bench import BatchList


class Percent(click.ParamType):
    """'5%' or '0.05' -> 0.05 (see `edgeprune.measure.regression.parse_fraction`)."""

    name = "PERCENT"

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]):
        if isinstance(value, float):
            return value
        from edgeprune.errors import InputError
        from edgeprune.measure.regression import parse_fraction

        try:
            return parse_fraction(value)
        except InputError as error:
            self.fail(str(error), param, ctx)


def _load(path: Path, option: str) -> dict:
    from edgeprune.measure.results import load_result_dict
    from edgeprune.errors import InputError

    try:
        return load_result_dict(path)
    except InputError as error:
        raise click.BadParameter(str(error), param_hint=option) from None


@click.command("gate")
@click.option("--baseline-model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Paired mode: the accepted build's model (.onnx, export folder or bundle).")
@click.option("--current-model", type=click.Path(exists=True, path_type=Path), default=None,
              help="Paired mode: the build under test; both are measured here, interleaved.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Stored mode: bench JSON of the accepted build; repeat with files of separate earlier jobs (5 or more).")
@click.option("--current", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Stored mode: bench JSON of the build under test; repeatable (one job's runs count as one).")
@click.option("--target", default="cpu-x86", show_default=True,
              help="Paired mode: target profile name or YAML.")
@click.option("--batch", "batch_sizes", type=BatchList(), default="1", show_default=True,
              help="Paired mode: batch sizes, e.g. 1,8.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Paired mode: intra-op threads, pinned (not the runtime's default).")
@click.option("--rounds", type=click.IntRange(min=2), default=60, show_default=True,
              help="Paired mode: at least this many interleaved rounds.")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=1.5, show_default=True,
              help="Paired mode: timed seconds each model needs per batch.")
@click.option("--min-iterations", type=click.IntRange(min=1), default=100, show_default=True,
              help="Paired mode: timed iterations each model needs per batch.")
@click.option("--bench-json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Paired mode: write the paired measurement (raw samples) here.")
@click.option("--max-regression", type=Percent(), default="5%", show_default=True,
              help="Slow-down of the median that fails, when the whole interval is over it.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=0.5,
              show_default=True, help="Accuracy drop in percentage points that fails.")
@click.option("--max-memory-growth", type=Percent(), default="10%", show_default=True,
              help="Memory growth that fails.")
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=0.01, show_default=True,
              help="Error rate of each side of the interval (interval at 1 - 2 alpha).")
@click.option("--allow-env-change", is_flag=True,
              help="Compare results from different machines, runtimes or targets anyway.")
@click.option("--strict", is_flag=True, help="Fail (exit 2) on an inconclusive result too.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the verdict here.")
@click.pass_context
def gate(ctx: click.Context, baseline_model: Optional[Path], current_model: Optional[Path],
         baseline: tuple[Path, ...], current: tuple[Path, ...], target: str,
         batch_sizes: tuple[int, ...], threads: int, rounds: int, min_seconds: float,
         min_iterations: int, bench_json: Optional[Path], max_regression: float,
         max_accuracy_drop: float, max_memory_growth: float, alpha: float,
         allow_env_change: bool, strict: bool, json_path: Optional[Path]) -> None:
    """Fail on a latency regression whose whole interval is over --max-regression, or on memory
    or accuracy beyond its threshold.

    Paired mode (--baseline-model/--current-model, the default in docs/ci.md) measures both
    models here, interleaved, with intra-op threads pinned, and judges per-round ratios. Stored
    mode (--baseline/--current bench JSON, each repeatable) judges run-level p50s against the
    spread of the baseline's history of separate jobs. Exit 0 pass (and inconclusive unless --strict), 1 regression,
    2 incomparable environments, bad input or usage."""
    from edgeprune.cli.console import console
    from edgeprune.fileio import write_json_atomic
    from edgeprune.measure.regression import RegressionConfig, compare_paired, compare_runs

    paired = baseline_model is not None or current_model is not None
    if paired and (baseline or current):
        raise click.UsageError("use either --baseline-model/--current-model (paired) or "
                               "--baseline/--current (stored bench files), not both")
    if paired and (baseline_model is None or current_model is None):
        raise click.UsageError("paired mode needs both --baseline-model and --current-model")
    if not paired and (not baseline or not current):
        raise click.UsageError("pass --baseline-model and --current-model (paired), or "
                               "--baseline and --current bench files")
    config = RegressionConfig(max_regression=max_regression, max_accuracy_drop=max_accuracy_drop,
                              max_memory_growth=max_memory_growth, alpha=alpha,
                              allow_env_change=allow_env_change, strict=strict)
    if paired:
        from edgeprune.cli.console import progress_bars
        from edgeprune.measure.results import BenchConfig
        from edgeprune.targets import load_target
        from edgeprune.workflows.bench import benchmark_pair

        bench_config = BenchConfig(min_iterations=min_iterations, min_seconds=min_seconds,
                                   rounds=rounds, batch_sizes=batch_sizes, threads=threads,
                                   memory_iterations=0, bootstrap_resamples=200)
        # (the bench file's own speedup interval; the verdict's interval uses --alpha's config)
        with progress_bars() as progress:
            result = benchmark_pair(baseline_model, current_model, load_target(target),
                                    bench_config, progress)
        if bench_json is not None:
            result.write(bench_json)
        doc = result.to_dict()
        verdict = compare_paired(doc, config)
        print_environment(console, doc.get("environment") or {}, pinned=True)
    else:
        docs_base = [_load(p, "--baseline") for p in baseline]
        docs_cur = [_load(p, "--current") for p in current]
        verdict = compare_runs(docs_base, docs_cur, config)
        print_environment(console, docs_cur[-1].get("environment") or {}, pinned=False)
    print_verdict(console, verdict)
    if json_path is not None:
        write_json_atomic(json_path, verdict.to_dict())
    ctx.exit(verdict.exit_code)


def print_environment(console: Any, env: dict, *, pinned: bool) -> None:
    """Threads, load and affinity of the measurement, and a warning when the load passed the cores."""
    from edgeprune.measure.environment import load_warning

    threads = env.get("threads")
    how = "pinned by the gate" if pinned else "as the bench files recorded"
    console.print(f"intra-op threads: {threads or 'runtime default'} ({how}); load average "
                  f"{env.get('load_average')} at the end, {env.get('load_average_at_start')} "
                  f"at the start; CPU affinity {env.get('cpu_affinity')}", highlight=False)
    warning = load_warning(env)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


_STYLE = {"pass": "green", "improvement": "green", "regression": "bold red",
          "inconclusive": "yellow", "incomparable": "bold yellow"}


def _num(value: Optional[float], digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_verdict(console: Any, verdict: Any) -> None:
    from rich import box
    from rich.table import Table

    if verdict.checks:
        table = Table(title="gate: ratio = current / baseline", box=box.SIMPLE_HEAD,
                      pad_edge=False, padding=(0, 1, 0, 0))
        for column in ("metric", "model", "batch", "base", "cur", "ratio", "interval",
                       "p", "status"):
            table.add_column(column, justify="left" if column in ("metric", "model") else "right")
        for c in verdict.checks:
            ci = f"{c.interval[0]:.3f}–{c.interval[1]:.3f}" if c.interval else "–"
            p = "–" if c.p_value is None else f"{c.p_value:.2g}"
            table.add_row(c.metric, c.model, "–" if c.batch is None else str(c.batch),
                          _fig(c.metric, c.baseline), _fig(c.metric, c.current), _num(c.ratio), ci, p,
                          f"[{_STYLE.get(c.status, 'white')}]{c.status}[/]")
        console.print(table)
        for c in verdict.checks:
            batch = "" if c.batch is None else f" batch {c.batch}"
            console.print(f"{c.status:>12}  {c.metric}, {c.model}{batch}: {c.note}", highlight=False)
        for rule in sorted({f"{c.metric}: {c.rule}" for c in verdict.checks}):
            console.print(f"rule  {rule}", highlight=False)
    for key, (before, after) in verdict.env_differences.items():
        console.print(f"[yellow]environment:[/] {key} {before!r} -> {after!r}", highlight=False)
    for note in verdict.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    style = _STYLE.get(verdict.outcome, "white")
    console.print(f"verdict: [{style}]{verdict.outcome}[/] (exit {verdict.exit_code})",
                  highlight=False)


def _fig(metric: str, value: Optional[float]) -> str:
    if value is not None and metric.endswith("bytes"):
        return f"{int(value):,d}"
    return _num(value)
