"""`edgeprune report DIR`: re-render report.md and report.html of an export folder."""
from __future__ import annotations

from pathlib import Path

import click

_STATUS_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command("report")
@click.argument("export_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--accuracy-tolerance", "accuracy_tolerance_points", type=click.FloatRange(min=0),
              default=1.0, show_default=True,
              help="Accuracy drop, in percentage points, above which the report warns.")
def report(export_dir: Path, accuracy_tolerance_points: float) -> None:
    """Re-render the report of EXPORT_DIR from its manifest.json and bench.json."""
    from rich.markup import escape

    from edgeprune.cli.console import console
    from edgeprune.report.render import write_report

    result = write_report(export_dir, accuracy_tolerance_points=accuracy_tolerance_points)
    md_path, html_path, *plot_paths = result.paths
    console.print(f"wrote {escape(str(md_path))}", highlight=False)
    console.print(f"wrote {escape(str(html_path))}", highlight=False)
    console.print(f"wrote {len(plot_paths)} plots under {escape(str(export_dir / 'plots'))}",
                  highlight=False)
    style = _STATUS_STYLE[result.verdict.status]
    console.print(f"[{style}]{escape(result.verdict.summary)}[/]", highlight=False, soft_wrap=True)
