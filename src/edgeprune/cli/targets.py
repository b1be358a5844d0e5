"""`edgeprune targets`: the target profiles, and whether each can run on this machine."""

from __future__ import annotations

import json
from typing import Optional

import click


@click.command("targets")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON instead of a table.")
@click.option(
    "--target",
    "target_path",
    default=None,
    metavar="NAME|PATH",
    help="Show (and validate) one profile: a built-in name or a YAML file.",
)
def targets(as_json: bool, target_path: Optional[str]) -> None:
    """List the target profiles: runtime, precision, batch sizes, channel rounding, availability here."""
    from edgeprune.engines import backends_for, unavailable_reason
    from edgeprune.targets import DEFAULT_TARGET, list_targets, load_target

    profiles = [load_target(target_path)] if target_path else list_targets()
    reasons = {t.name: unavailable_reason(t) for t in profiles}
    if as_json:
        rows = [
            {
                **t.to_dict(),
                "engines": backends_for(t),
                "available": reasons[t.name] is None,
                "unavailable_reason": reasons[t.name],
            }
            for t in profiles
        ]
        click.echo(json.dumps(rows, indent=2))
        return

    from rich.table import Table

    from edgeprune.cli.console import console

    table = Table(title="edgeprune targets", title_justify="left")
    for column in ("name", "runtime", "precision", "device", "batch sizes", "round to", "budget ms", "here"):
        table.add_column(column, no_wrap=column in ("name", "batch sizes"))
    for t in profiles:
        name = f"{t.name} (default)" if t.name == DEFAULT_TARGET else t.name
        budget = f"{t.latency_budget_ms:g}" if t.latency_budget_ms is not None else "-"
        reason = reasons[t.name]
        here = "[green]yes[/]" if reason is None else f"[yellow]no[/] ({_short(reason)})"
        table.add_row(
            name,
            t.runtime,
            t.precision,
            t.device,
            ",".join(map(str, t.batch_sizes)),
            str(t.round_to),
            budget,
            here,
        )
    console.print(table)
    for reason in dict.fromkeys(r for r in reasons.values() if r is not None):
        console.print(f"[yellow]note:[/] {reason}", highlight=False)


def _short(reason: str) -> str:
    """The table shows what is missing; the notes under it say how to install it."""
    return reason.split(":")[0].split(" (")[0]
