"""The op registry: how each op moves channel labels, keyed by the real callable or module type.

The label interpreter (labels.py) looks every fx node up here: a `call_function` node by its
target (``torch.add``, ``operator.add``, ``F.batch_norm``), a `call_method` node by the
``torch.Tensor`` method of that name, a `call_module` node by its module's type, walking the MRO so
that subclasses (timm's ``BatchNormAct2d``, ``Conv2dSame``) find their base's handler. Nothing is
matched by name, so a user function called ``add`` is not addition. An op without a handler is
frozen with its path and name. Extend it with `register_op`::

    from edgeprune.analysis import register_op, elementwise
    register_op(my_activation, handler=elementwise)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
from torch import nn

Handler = Callable[["OpCall"], Any]

_FUNCTIONS: dict[Any, Handler] = {}
_MODULES: dict[type, Handler] = {}


def register_op(*targets: Any, handler: Handler | None = None):
    """Register `handler` for functions, ``torch.Tensor`` methods or ``nn.Module`` types.

    Usable as ``register_op(fn, handler=h)`` or as a decorator ``@register_op(fn)``. A function the
    tracer should not trace into must also be wrapped for fx (``torch.fx.wrap``) or be a leaf.
    """
    def decorate(fn: Handler) -> Handler:
        for target in targets:
            if isinstance(target, type) and issubclass(target, nn.Module):
                _MODULES[target] = fn
            elif callable(target):
                _FUNCTIONS[target] = fn
            else:
                raise TypeError(f"register_op needs a callable or an nn.Module type, got {target!r}")
        return fn

    if not targets:
        raise TypeError("register_op needs at least one function, Tensor method or module type")
    return decorate(handler) if handler is not None else decorate


def function_handler(target: Any) -> Handler | None:
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # an unhashable callable is never registered
        return None


def method_handler(name: str) -> Handler | None:
    return function_handler(getattr(torch.Tensor, name, None))


def module_handler(module: nn.Module) -> Handler | None:
    for cls in type(module).__mro__:
        if cls in _MODULES:
            return _MODULES[cls]
    return None


def is_registered_module(cls: type) -> bool:
    """Whether this exact module type has a handler: the tracer then keeps it whole."""
    return cls in _MODULES


def handler_for(node: fx.Node, module: nn.Module | None) -> Handler | None:
    if node.op == "call_module":
        return module_handler(module)
    if node.op == "call_method":
        return method_handler(str(node.target))
    return function_handler(node.target)


@dataclass
class OpCall:
    """One op as a handler sees it: its fx node, real inputs and output, and the analyzer's tools.

    `labels` mirrors `real_args`: an int64 array per tensor argument (one label per channel,
    broadcast form), None for non-tensors. A handler returns the labels of the op's result.
    """

    analyzer: Any
    node: fx.Node
    module: nn.Module | None
    real_args: list
    real_kwargs: dict
    labels: list
    result: Any

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The real value of positional `index` or keyword `name`."""
        if index < len(self.real_args):
            return self.real_args[index]
        return self.real_kwargs.get(name, default)

    def fx_arg(self, index: int, name: str) -> Any:
        if index < len(self.node.args):
            return self.node.args[index]
        return self.node.kwargs.get(name)

    def param_name(self, index: int, name: str) -> str | None:
        """The parameter (or buffer) name when argument `index`/`name` is one read directly."""
        return self.analyzer.param_name_of(self.fx_arg(index, name))

    @property
    def x(self) -> Any:
        return self.labels[0] if self.labels else None

    @property
    def x_real(self) -> Any:
        return self.real_args[0] if self.real_args else None

    @property
    def where(self) -> str:
        return self.analyzer.where(self.node)

    def freeze(self, labels: Any, reason: str) -> None:
        self.analyzer.freeze(labels, reason)

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        self.analyzer.tie(a, b)

    def new_labels(self, count: int) -> np.ndarray:
        return self.analyzer.new_labels(count)

    def frozen_result(self) -> Any:
        from edgeprune.analysis.labels import const_labels

        return const_labels(self.result)
