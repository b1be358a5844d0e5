"""`edgeprune inspect`: a model's channel groups and what stays unpruned (and why)."""
from __future__ import annotations

from typing import Any

import click

_MAX_MODULES_SHOWN = 3


@click.command("inspect")
@click.argument("model_spec", metavar="MODEL")
@click.option("--input-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Square input size the model is analysed at.")
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Classes of the model's head.")
@click.option("--ignore", multiple=True, metavar="MODULE",
              help="Leave this module unpruned and treat it as opaque (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
def inspect_model(model_spec: str, input_size: int, num_classes: int, ignore: tuple[str, ...], as_json: bool) -> None:
    """Show MODEL's channel groups (what `prune` can remove together) and the frozen parts."""
    from edgeprune.analysis.graph import analyze
    from edgeprune.training.models import build_model
    from edgeprune.workflows.prune import example_input

    input_shape = (3, input_size, input_size)
    model = build_model(model_spec, num_classes, input_shape=input_shape)
    graph = analyze(model, example_input(input_shape), ignore=ignore)
    if as_json:
        import json

        click.echo(json.dumps({"model": model_spec, **graph.to_dict()}, indent=2))
        return
    _print_graph(model_spec, graph)


def abbreviate_modules(modules: list[str], limit: int = _MAX_MODULES_SHOWN) -> str:
    """'a, b, c (+4 more)': the first `limit` module paths of a group."""
    shown = ", ".join(modules[:limit])
    return f"{shown} (+{len(modules) - limit} more)" if len(modules) > limit else shown


def _print_graph(model_spec: str, graph: Any) -> None:
    from rich.table import Table

    from edgeprune.cli.console import console

    groups = Table(title=f"{model_spec}: {len(graph.groups)} channel groups at input {tuple(graph.input_shape)}")
    for column, justify in (("id", "right"), ("name", "left"), ("channels", "right"), ("units", "right"),
                            ("unit width", "right"), ("modules", "left")):
        groups.add_column(column, justify=justify)
    for group in graph.groups:
        groups.add_row(str(group.id), group.name, str(group.channels), str(group.size), str(group.unit_width),
                       f"{len(group.modules)}: {abbreviate_modules(group.modules)}")
    console.print(groups)
    if graph.frozen:
        frozen = Table(title="left unpruned")
        for column in ("where", "op", "reason", "channels"):
            frozen.add_column(column, justify="right" if column == "channels" else "left")
        for item in graph.frozen:
            frozen.add_row(item.where, item.op, item.reason, str(item.channels))
        console.print(frozen)
    if graph.frozen_params:
        share = Table(title=f"parameters no plan can remove: {graph.frozen_fraction:.1%} of {graph.params_total:,}")
        for column in ("where", "op", "reason", "params"):
            share.add_column(column, justify="right" if column == "params" else "left")
        for item in graph.frozen_params:
            share.add_row(item.where, item.op, item.reason, f"{item.params:,}")
        console.print(share)
    for path, reason in graph.opaque_modules.items():
        console.print(f"[yellow]kept whole:[/] {path}: {reason}", highlight=False)
    for note in graph.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
