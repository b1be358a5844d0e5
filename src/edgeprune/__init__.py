"""edgeprune: structured channel pruning from a dense CNN to engines an edge team can ship.

The public Python API is `prune`, `export` and `load` (see docs/your-model.md), with the
typed configs and results they take and return. `import edgeprune` stays light: torch is
imported on first use, not here.
"""
from __future__ import annotations

import logging
from typing import Any

__version__ = "0.1.0"
__all__ = ["EdgepruneError", "ExportConfig", "ExportResult", "PruneResult", "export", "load", "prune"]

# The library records its fallbacks on this logger and never configures logging itself.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "prune": "edgeprune.workflows.api",
    "export": "edgeprune.workflows.api",
    "load": "edgeprune.workflows.api",
    "ExportConfig": "edgeprune.workflows.export",
    "ExportResult": "edgeprune.workflows.export",
    "PruneResult": "edgeprune.workflows.prune",
    "EdgepruneError": "edgeprune.errors",
}


def __getattr__(name: str) -> Any:
    """Import the API on first use (PEP 562), so the CLI's `--help` does not pay for torch."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeprune' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
