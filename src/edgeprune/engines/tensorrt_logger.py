"""The process's one TensorRT logger.

TensorRT keeps the first logger a process hands it: builders and runtimes created later with
another logger still report to the first one. So edgeprune makes one, and each build or load
reads what was logged since it began (`mark`, then `errors(mark)`), instead of a fresh logger
that would hear nothing and report "no error was logged".
"""

from __future__ import annotations

from collections import deque
from typing import Any, Optional


class _CollectingLogger:
    """Keeps TensorRT's warnings and errors (the last few hundred) for our messages instead of printing them."""

    def __init__(self, trt: Any) -> None:
        self._warning = int(trt.ILogger.Severity.WARNING)
        self._messages: deque[tuple[int, str]] = deque(maxlen=500)
        self._count = 0

    def record(self, severity: Any, msg: str) -> None:
        if int(severity) <= self._warning:
            self._count += 1
            self._messages.append((self._count, f"{getattr(severity, 'name', severity)}: {msg}"))

    def mark(self) -> int:
        """A position; `since(mark)` is what was logged after it."""
        return self._count

    def since(self, mark: int) -> list[str]:
        return [m for n, m in self._messages if n > mark]

    def errors(self, mark: int = 0, last: int = 3) -> str:
        found = [m for m in self.since(mark) if "ERROR" in m.split(":", 1)[0]]
        return " | ".join(found[-last:]) or "no error was logged"


_LOGGER: Optional[tuple[Any, Any]] = None  # (the tensorrt module, its one logger)


def shared_logger(trt: Any) -> Any:
    """The process's one TensorRT logger. TensorRT keeps the first logger it is given for the whole
    process, so a logger per build or per runner would never hear its own errors."""
    global _LOGGER
    if _LOGGER is None or _LOGGER[0] is not trt:
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.collected = _CollectingLogger(trt)

            def log(self, severity: Any, msg: str) -> None:
                self.collected.record(severity, msg)

        _LOGGER = (trt, Logger())
    return _LOGGER[1]
