"""edgeprune: structured channel pruning from a dense CNN to engines an edge team can ship.

`import edgeprune` stays light (no torch import); stages live in their own modules.
"""
from __future__ import annotations

import logging

__version__ = "0.1.0"

# The library records its fallbacks on this logger and never configures logging itself.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def load(model_spec: str, out_dir, num_classes: int | None = None):
    """Rebuild a pruned model from its architecture plus `OUT/plan.json` and `OUT/model.safetensors`."""
    from edgeprune.workflows.checkpoint import load as _load

    return _load(model_spec, out_dir, num_classes)
