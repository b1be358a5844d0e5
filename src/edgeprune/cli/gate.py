"""`edgeprune gate`: compare two bench results; exit 0 pass, 1 regression, 2 incomparable/usage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click


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
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="bench JSON of the accepted build.")
@click.option("--current", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="bench JSON of the build under test.")
@click.option("--max-regression", type=Percent(), default="5%", show_default=True,
              help="Slow-down of the median that fails, if also significant.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), default=0.5,
              show_default=True, help="Accuracy drop in percentage points that fails.")
@click.option("--max-memory-growth", type=Percent(), default="10%", show_default=True,
              help="Memory growth that fails.")
@click.option("--alpha", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True),
              default=0.01, show_default=True, help="Significance level of the Mann-Whitney test.")
@click.option("--allow-env-change", is_flag=True,
              help="Compare results from different machines, runtimes or targets anyway.")
@click.option("--strict", is_flag=True, help="Fail (exit 2) on an inconclusive result too.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the verdict here.")
@click.pass_context
def gate(ctx: click.Context, baseline: Path, current: Path, max_regression: float,
         max_accuracy_drop: float, max_memory_growth: float, alpha: float,
         allow_env_change: bool, strict: bool, json_path: Optional[Path]) -> None:
    """Fail on a latency regression that is both large and significant, or on memory or
    accuracy beyond its threshold. Exit 0 pass (and inconclusive unless --strict),
    1 regression, 2 incomparable environments, bad input or usage."""
    from edgeprune.cli.console import console
    from edgeprune.fileio import write_json_atomic
    from edgeprune.measure.regression import RegressionConfig, compare

    config = RegressionConfig(max_regression=max_regression, max_accuracy_drop=max_accuracy_drop,
                        max_memory_growth=max_memory_growth, alpha=alpha,
                        allow_env_change=allow_env_change, strict=strict)
    verdict = compare(_load(baseline, "--baseline"), _load(current, "--current"), config)
    print_verdict(console, verdict)
    if json_path is not None:
        write_json_atomic(json_path, verdict.to_dict())
    ctx.exit(verdict.exit_code)


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
        for column in ("metric", "model", "batch", "base", "cur", "ratio", "95% CI",
                       "p slow", "status"):
            table.add_column(column, justify="left" if column in ("metric", "model") else "right")
        for c in verdict.checks:
            ci = f"{c.ci95[0]:.3f}–{c.ci95[1]:.3f}" if c.ci95 else "–"
            p = "–" if c.p_value is None else f"{c.p_value:.2g}"
            table.add_row(c.metric, c.model, "–" if c.batch is None else str(c.batch),
                          _num(c.baseline), _num(c.current), _num(c.ratio), ci, p,
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
