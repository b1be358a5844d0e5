"""Progress reporting without printing: the library calls a callback, the CLI draws the bars."""
from __future__ import annotations

from typing import Callable, Optional

#: Called as ``progress(task_description, completed, total)``; ``total`` is constant per task.
ProgressCallback = Callable[[str, float, float], None]


def report(progress: Optional[ProgressCallback], task: str, completed: float, total: float) -> None:
    """Call `progress` if one was given; keeps call sites to one line."""
    if progress is not None:
        progress(task, completed, total)
