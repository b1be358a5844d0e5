"""`edgeprune sweep`: accuracy and latency against sparsity, over seeds and criteria."""
from __future__ import annotations

from pathlib import Path

import click

from edgeprune.cli.export import FINETUNE_EPOCHS
from edgeprune.cli.options import KEEP, NumberList
from edgeprune.targets import DEFAULT_TARGET

DEFAULT_KEEPS = "0.9,0.8,0.7,0.6,0.5,0.4,0.3,0.2,0.1"


class SeedsType(click.ParamType):
    """`3` means three seeds (0, 1, 2); `0,5,7` (or `7,`) names the seeds themselves."""

    name = "count|list"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, tuple)):
            return value
        text = str(value).strip()
        try:
            if "," in text:
                return tuple(int(item) for item in text.split(",") if item.strip())
            count = int(text)
        except ValueError:
            self.fail(f"{value!r} is neither a seed count (3) nor a list of seeds (0,1,2)", param, ctx)
        if count < 1:
            self.fail(f"the seed count must be >= 1, got {count}", param, ctx)
        return count


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Run folder from `edgeprune train`; runs/demo is trained on first use.")
@click.option("--keep", "keeps", type=NumberList(float), default=DEFAULT_KEEPS, show_default=True,
              help="Keep ratios to sweep (fractions of parameters, or FLOPs with --budget flops).")
@click.option("--seeds", type=SeedsType(), default="3", show_default=True,
              help="How many seeds (3 = 0,1,2), or the seeds themselves (0,5,7).")
@click.option("--criterion", "criteria", type=NumberList(str), default="gate", show_default=True,
              help="Comma-separated criteria: gate, magnitude, bn, slimming, taylor, random.")
@click.option("--retrain-dense", is_flag=True, help="Train a dense model per seed (default: one dense model, seeded fine-tunes).")
@click.option("--finetune-epochs", type=click.IntRange(min=0), default=FINETUNE_EPOCHS, show_default=True,
              help="Fine-tune epochs after a gate or sparsity phase; with equal compute, criteria without one "
                   "fine-tune for the phase's epochs more.")
@click.option("--finetune-lr", type=click.FloatRange(min=0, min_open=True), default=0.02, show_default=True)
@click.option("--distill-weight", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of distillation from the dense model while fine-tuning; 0 trains on labels only.")
@click.option("--steps", type=click.IntRange(min=1), default=1, show_default=True,
              help="Prune gradually in this many steps (cubic schedule, one recovery epoch between); 1 is one-shot.")
@click.option("--equal-compute/--no-equal-compute", default=True, show_default=True,
              help="Give every criterion the same epochs in all (phase + recovery + fine-tune).")
@click.option("--gate-epochs", type=click.IntRange(min=1), default=None,
              help="Most epochs of the gate phase [default: the library's].")
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="Target profile (rounding and ONNX Runtime settings).")
@click.option("--budget", type=click.Choice(["params", "flops"]), default="params", show_default=True)
@click.option("--round-to", type=click.IntRange(min=1), default=None, help="Round channel counts to multiples of this [default: the target's].")
@click.option("--min-channels", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--bench-seconds", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Least timed seconds per model and run; 0 skips ONNX export and latency.")
@click.option("--bench-threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op threads [default: the target's].")
@click.option("--tolerance", "tolerance_points", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Operating point: accuracy points below dense that still count as no loss.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: sweeps/RUN_NAME].")
@click.option("--force", is_flag=True, help="Discard runs recorded under other settings instead of refusing.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where the points run: one after another in this process, or one Ray task each (docs/scale.md).")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (auto, ray://HOST:PORT) [default: start a local Ray].")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
              help="Times a failing point is tried again before it is recorded as failed.")
def sweep(run_dir, keeps, seeds, criteria, retrain_dense, finetune_epochs, finetune_lr, distill_weight, steps,
          equal_compute, gate_epochs, target, budget,
          round_to, min_channels, bench_seconds, bench_threads, tolerance_points, out_dir, force, executor,
          ray_address, retries):
    """Prune at every --keep for every seed and criterion; fine-tune, evaluate, time; resumable."""
    from dataclasses import replace

    from edgeprune.cli.console import console, progress_bars
    from edgeprune.importance.gates import GateConfig
    from edgeprune.workflows.sweep import DEFAULT_SWEEP_BENCH, SweepConfig, run_sweep, sweep_command
    from edgeprune.workflows.sweep_executors import make_executor

    for keep in keeps:
        KEEP.convert(keep, None, click.get_current_context())
    gate = GateConfig() if gate_epochs is None else replace(GateConfig(), max_epochs=gate_epochs)
    bench = None if bench_seconds == 0 else replace(DEFAULT_SWEEP_BENCH, min_seconds=bench_seconds, threads=bench_threads)
    config = SweepConfig(
        keeps=keeps, seeds=seeds, criteria=criteria, retrain_dense=retrain_dense, finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr, distill_weight=distill_weight, steps=steps, equal_compute=equal_compute, gate=gate,
        bench=bench, target=target,
        budget=budget, round_to=round_to,
        min_channels=min_channels, tolerance_points=tolerance_points,
    )
    runner = make_executor(executor, address=ray_address, retries=retries)  # says what to install first
    out_dir = out_dir if out_dir is not None else Path("sweeps") / run_dir.name
    _ensure_demo_run(run_dir, console)
    with progress_bars() as progress:
        result = run_sweep(run_dir, out_dir, config, progress, force=force, executor=runner,
                           command=sweep_command(run_dir, out_dir, config, force=force) + _executor_args(
                               executor, ray_address))
    print_sweep_table(result, console)
    if result.failed:
        from rich.markup import escape

        from edgeprune.errors import RunError

        for failure in result.failed:
            console.print(f"[bold red]failed:[/] {failure['key']}: {escape(str(failure['error']))}")
        raise RunError(f"{len(result.failed)} of {len(result.records) + len(result.failed)} sweep points failed "
                       f"(errors in {out_dir}/failed/); run the same command again to retry only those")


def _executor_args(executor: str, ray_address) -> str:
    """The executor options for the recorded command (they change where points run, not results)."""
    import shlex

    args = [] if executor == "local" else ["--executor", executor]
    if ray_address is not None:
        args += ["--ray-address", ray_address]
    return "".join(" " + shlex.quote(a) for a in args)


def _ensure_demo_run(run_dir: Path, console) -> None:
    """Like `edgeprune export`: the built-in demo run is trained on first use, any other must exist."""
    from edgeprune.workflows.recipe import DEMO_DATA, DEMO_MODEL, ensure_run, is_demo_run

    if run_dir.exists() or not is_demo_run(run_dir):
        return
    from edgeprune.cli.console import progress_bars

    console.print(f"[bold]{run_dir} does not exist yet:[/] training the built-in demo first "
                  f"({DEMO_MODEL} on the built-in '{DEMO_DATA}' data set).")
    with progress_bars() as progress:
        ensure_run(run_dir, progress=progress)


def _pm(summary, digits: int = 1) -> str:
    if summary is None:
        return "-"
    if summary.std is None:
        return f"{summary.mean:.{digits}f}"
    return f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"


def print_sweep_table(result, console) -> None:
    """The final table (one row per keep and criterion) and the operating point line."""
    from rich.table import Table

    table = Table(title=f"sweep: {len(result.records)} runs ({result.runs_done} run now, "
                        f"{result.runs_reused} reused) — dense accuracy {result.dense_accuracy_pct:.2f}%")
    for column in ("keep", "criterion", "n", "accuracy % (mean ± std)", "95% CI", "p50 ms", "speedup"):
        table.add_column(column, justify="left" if column == "criterion" else "right")
    for row in result.aggregates:
        acc = row.accuracy_pct
        ci = f"[{acc.ci95_low:.1f}, {acc.ci95_high:.1f}]" if acc.ci95_low is not None else "-"
        table.add_row(f"{row.keep:g}", row.criterion, str(acc.n), _pm(acc), ci, _pm(row.pruned_p50_ms, 3),
                      f"{_pm(row.speedup, 2)}x" if row.speedup is not None else "-")
    console.print(table)
    print_sweep_findings(result.judgement, console)
    console.print(f"wrote {result.out_dir}/sweep.json, sweep.csv and plots")


_COLOUR = {"fail": "red", "warn": "yellow", "info": "cyan", "ok": "green"}


def print_sweep_findings(judgement, console) -> None:
    """Every finding a reader must see (not the passes), the operating point line, the verdict."""
    from rich.markup import escape

    point = None
    for finding in judgement.findings:
        if finding.rule_id == "operating_point":
            point = finding
        elif finding.severity != "ok":
            console.print(f"[bold {_COLOUR[finding.severity]}]{finding.severity}:[/] {escape(finding.title)}: "
                          f"{escape(finding.message)}")
    if point is not None:
        console.print(f"[bold {_COLOUR[point.severity]}]operating point:[/] {escape(point.message)}")
    final = judgement.verdict
    console.print(f"[bold {_COLOUR[final.status]}]verdict ({final.status}):[/] {escape(final.summary)}")
