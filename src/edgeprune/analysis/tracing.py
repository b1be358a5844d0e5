"""torch.fx tracing that keeps going: a submodule that cannot be traced becomes an opaque leaf.

Tracing follows timm's own rules when timm is installed (its registered no-trace modules and
autowrapped functions, as ``timm.layers.create_feature_extractor`` does), so "same" padding and
other data-dependent layers trace. Any other submodule whose forward fx cannot follow is retried
as a leaf: the nodes its failed attempt created are removed and one ``call_module`` node takes
their place, with the reason recorded so the analysis freezes it and reports why.
"""
from __future__ import annotations

from typing import Any

import torch.fx as fx
from torch import nn

from edgeprune.analysis.ops import is_registered_module, module_handler


def timm_rules() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    """timm's (leaf module types, autowrapped functions), or empty ones without timm."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return (), ()
    from edgeprune.analysis import timm_ops  # noqa: F401  (registers the handlers of timm's layers)

    return tuple(timm_fx.get_notrace_modules()), tuple(timm_fx.get_notrace_functions())


class Tracer(fx.Tracer):
    """Keeps `--ignore` modules opaque, follows timm's rules, and makes untraceable parts leaves."""

    def __init__(self, ignore: frozenset[str]) -> None:
        leaf_types, functions = timm_rules()
        super().__init__(autowrap_functions=functions)
        self.ignore = ignore
        # timm's no-trace layers are kept whole only where the registry knows them (Conv2dSame,
        # BatchNormAct2d, the "same" pools); the others are traced through like any module.
        self.leaf_types = leaf_types
        self.auto_leaves: dict[str, str] = {}
        self._parameter_cache: dict[str, Any] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.ignore or qualname in self.auto_leaves:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types) and module_handler(m) is not None:
            return True
        if is_registered_module(type(m)):  # a handler for this very type (timm's std convs, a user's): keep it whole
            return True
        return super().is_leaf_module(m, qualname)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict) -> Any:
        self._parameter_cache = parameter_proxy_cache
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        qualname = self.path_of_module(m)
        if self.is_leaf_module(m, qualname):
            return super().call_module(m, forward, args, kwargs)
        last = list(self.graph.nodes)[-1] if len(self.graph.nodes) else None
        stack = dict(self.module_stack)
        calls = dict(self.num_calls)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as error:  # fx raises many types; all mean "this forward cannot be traced"
            self._roll_back(last, stack, calls)
            self.auto_leaves[qualname] = (
                f"{type(m).__name__} cannot be traced ({first_line(error)}); left whole and unpruned"
            )
            return super().call_module(m, forward, args, kwargs)

    def _roll_back(self, last: fx.Node | None, stack: dict, calls: dict) -> None:
        """Remove what a failed attempt added to the graph, newest first."""
        nodes = list(self.graph.nodes)
        start = nodes.index(last) + 1 if last is not None else 0
        erased = set()
        for node in reversed(nodes[start:]):  # users come after their inputs: erase newest first
            self.graph.erase_node(node)
            erased.add(node)
        if self._parameter_cache is not None:
            for key in [k for k, proxy in self._parameter_cache.items() if proxy.node in erased]:
                del self._parameter_cache[key]
        self.module_stack.clear()
        self.module_stack.update(stack)
        self.num_calls.clear()
        self.num_calls.update(calls)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
