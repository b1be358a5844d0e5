"""Shared rich console helpers for the CLI (the library itself never prints)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console()
error_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One line, red, on stderr: what went wrong and what to do (the message is not markup, so an
    install hint such as `pip install 'edgeprune[ray]'` prints as written)."""
    from rich.markup import escape

    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bars() -> Iterator:
    """Yield a `ProgressCallback` that draws one rich bar per task description."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, int] = {}

        def callback(task: str, completed: float, total: float) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=completed, total=total)

        yield callback
