"""Channel groups: which channels of a model must be removed together, found from its fx graph.

`register_op` extends the op registry (see ops.py); `elementwise` is the handler for any op
that acts on each channel on its own.
"""
from edgeprune.analysis.ops import OpCall, register_op  # noqa: F401


def __getattr__(name: str):
    if name == "elementwise":  # the handlers import torch.nn.functional: load them on first use
        from edgeprune.analysis.handlers import elementwise

        return elementwise
    raise AttributeError(name)
