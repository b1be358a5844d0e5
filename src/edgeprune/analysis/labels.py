"""Channel-label propagation: the torch.fx interpreter behind `graph.analyze`.

Beside every real tensor it carries an integer label per channel naming the atomic channel it
came from, applies shape ops to the labels exactly as to the data, ties labels that must be
removed together, and freezes (with the reason) whatever it does not know. How each op moves
labels is the op registry's job (ops.py, handlers in handlers.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from torch import nn


from edgeprune.analysis.channels import FROZEN, Consumer, ConvInfo, ParamSlice  # noqa: F401
from edgeprune.analysis.ops import OpCall, handler_for


class _UnionFind:
    """Labels joined by ties, resolved at once: each class is named by its smallest label.

    Ties are collected as edge arrays and resolved with one connected-components pass, which
    is what keeps the analysis of a 2048-channel residual stage fast. FROZEN (0) is the smallest
    label, so anything tied to it is frozen.
    """

    def __init__(self) -> None:
        self.size = 1
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []

    def add(self, count: int) -> int:
        start = self.size
        self.size += count
        return start

    def union(self, a: int, b: int) -> None:
        self.union_many(np.array([a], dtype=np.int64), np.array([b], dtype=np.int64))

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        self._a.append(np.asarray(a, dtype=np.int64).reshape(-1))
        self._b.append(np.asarray(b, dtype=np.int64).reshape(-1))

    def roots(self, through_frozen: bool = True) -> np.ndarray:
        """Class id (smallest label of its class) of every label; without `through_frozen`, ties
        to FROZEN are ignored (which says which freeze reached which channels)."""
        if not self._a:
            return np.arange(self.size, dtype=np.int64)
        a, b = np.concatenate(self._a), np.concatenate(self._b)
        if not through_frozen:
            keep = (a != FROZEN) & (b != FROZEN)
            a, b = a[keep], b[keep]
        adjacency = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(self.size, self.size))
        _, component = connected_components(adjacency, directed=False)
        _, first = np.unique(component, return_index=True)  # labels are 0..n-1: first = smallest
        return first[component].astype(np.int64)


@dataclass(frozen=True)
class _ParamRef:
    """Label value of a get_attr node: a parameter that may be sliced along a channel axis."""

    name: str


def op_name(node: fx.Node, module: nn.Module | None = None) -> str:
    """A readable name of the node's op, for messages only (dispatch uses the real object)."""
    if node.op == "call_module":
        return type(module).__name__ if module is not None else str(node.target)
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))



class ModelForwardError(Exception):
    """The model's own computation failed at `node` (wrong input shape, an op that needs real values)."""

    def __init__(self, node: fx.Node, error: BaseException) -> None:
        super().__init__(f"{node.name}: {error}")
        self.node, self.error = node, error


class _Analyzer(fx.Interpreter):
    """Runs the traced model and labels every value; the ops themselves live in the registry."""

    def __init__(self, gm: fx.GraphModule, leaves: dict[str, str]) -> None:
        super().__init__(gm)
        self.leaves = leaves  # module path -> why it is opaque (--ignore, or untraceable)
        self.uf = _UnionFind()
        self.labels: dict[fx.Node, Any] = {}
        self.slices: list[ParamSlice] = []
        self._first_slice: dict[tuple[str, int], np.ndarray] = {}  # (parameter, axis) -> its first labels
        self.consumers: list[Consumer] = []
        self.convs: dict[str, ConvInfo] = {}
        self.norm_groups: dict[str, tuple[np.ndarray, int]] = {}
        self.producers: list[tuple[str, np.ndarray]] = []
        self.frozen_events: list[tuple[str, str, str, np.ndarray]] = []
        self.flop_weights: dict[str, int] = {}
        self.used_params: set[str] = set()
        self.current: fx.Node | None = None
        self.state_names = {n for n, _ in gm.named_parameters()} | {n for n, _ in gm.named_buffers()}

    # -- label helpers ---------------------------------------------------------------------
    def new_labels(self, count: int) -> np.ndarray:
        start = self.uf.add(count)
        return np.arange(start, start + count, dtype=np.int64)

    def where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return str(node.target)
        stack = node.meta.get("nn_module_stack")
        if stack:
            path = list(stack.values())[-1]
            path = path[0] if isinstance(path, tuple) else path
            return f"{path}:{node.name}" if path else node.name
        return node.name

    def freeze(self, labels: Any, reason: str, where: str | None = None, op: str | None = None) -> None:
        arrays = [a for a in _flatten_labels(labels) if a is not None]
        if not arrays:
            return
        ids = np.unique(np.concatenate([a.reshape(-1) for a in arrays]))
        ids = ids[ids > FROZEN]
        if ids.size == 0:
            return
        self.uf.union_many(np.zeros_like(ids), ids)
        node = self.current
        if where is None:
            where = self.where(node) if node is not None else "?"
        if op is None:
            op = "?"
            if node is not None:
                module = self.module.get_submodule(str(node.target)) if node.op == "call_module" else None
                op = op_name(node, module)
        self.frozen_events.append((where, op, reason, ids))

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:  # unequal label arrays: tie position by position, as far as both go
            size = min(a.size, b.size)
            a, b = a.reshape(-1)[:size], b.reshape(-1)[:size]
        self.uf.union_many(a.reshape(-1), b.reshape(-1))

    def add_slice(self, name: str, axis: int, labels: np.ndarray, is_buffer: bool = False) -> None:
        """A parameter axis sliced again (a module called twice) is the same channels again: each
        position is tied to the one the first call labelled, so both calls are pruned alike, and
        the axis is recorded once."""
        earlier = self._first_slice.get((name, axis))
        if earlier is not None:  # recorded once, so shrink, costs and scores see each axis once
            self.tie(earlier, labels)
            return
        self._first_slice[(name, axis)] = labels
        self.slices.append(ParamSlice(name, axis, labels, is_buffer))

    # -- interpreter hook -----------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        try:
            result = super().run_node(n)
        except Exception as error:  # the user's model failed, not the labelling
            raise ModelForwardError(n, error) from error
        self.labels[n] = self.label_node(n, result)  # edgeprune's own code: a failure here is a bug
        return result

    def label_of(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.labels.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.label_of(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.label_of(v) for k, v in arg.items()}
        return None

    def real_of(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.real_of(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.real_of(v) for k, v in arg.items()}
        if isinstance(arg, slice):
            return slice(self.real_of(arg.start), self.real_of(arg.stop), self.real_of(arg.step))
        return arg

    def param_name_of(self, arg: Any) -> str | None:
        label = self.labels.get(arg) if isinstance(arg, fx.Node) else None
        return label.name if isinstance(label, _ParamRef) else None

    def label_node(self, n: fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            return const_labels(result)
        if n.op == "get_attr":
            self.used_params.add(str(n.target))
            if not isinstance(result, torch.Tensor):
                return None
            # a tensor constant of the trace (not a parameter or buffer) has fixed channels
            return _ParamRef(str(n.target)) if str(n.target) in self.state_names else const_labels(result)
        if n.op == "output":
            self.freeze(self.tensor_labels(n.args[0], self.real_of(n.args[0])), "model output")
            return None
        return self.label_call(n, result)

    def tensor_labels(self, arg: Any, real: Any) -> Any:
        """Labels of `arg`, with parameter references turned into frozen constants."""
        label = self.label_of(arg)
        if isinstance(label, _ParamRef):
            return const_labels(real)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.tensor_labels(a, r) for a, r in zip(arg, real))
        if isinstance(arg, dict):
            return {k: self.tensor_labels(arg[k], real[k]) for k in arg}
        return label

    def label_call(self, n: fx.Node, result: Any) -> Any:
        module = self.module.get_submodule(str(n.target)) if n.op == "call_module" else None
        if module is not None:
            for pname, _ in module.named_parameters(recurse=True):
                self.used_params.add(f"{n.target}.{pname}")
        real_args = [self.real_of(a) for a in n.args]
        real_kwargs = {k: self.real_of(v) for k, v in n.kwargs.items()}
        labels = [self.tensor_labels(a, r) for a, r in zip(n.args, real_args)]
        if module is not None and str(n.target) in self.leaves:
            self.freeze(labels + list(self.tensor_labels(dict(n.kwargs), real_kwargs).values()), self.leaves[str(n.target)])
            return const_labels(result)
        if not _has_tensor(result):
            return None  # sizes, dims, Python numbers: no channels to follow
        handler = handler_for(n, module)
        if handler is None:
            self.freeze(labels, f"op '{op_name(n, module)}' is not known to the channel analysis "
                                "(edgeprune.analysis.register_op adds it)")
            return const_labels(result)
        return handler(OpCall(self, n, module, real_args, real_kwargs, labels, result))


def _flatten_labels(labels: Any) -> list:
    if isinstance(labels, np.ndarray):
        return [labels]
    if isinstance(labels, (list, tuple)):
        return [x for item in labels for x in _flatten_labels(item)]
    if isinstance(labels, dict):
        return [x for item in labels.values() for x in _flatten_labels(item)]
    return []


def _has_tensor(values: Any) -> bool:
    if isinstance(values, torch.Tensor):
        return True
    if isinstance(values, (list, tuple)):
        return any(_has_tensor(v) for v in values)
    if isinstance(values, dict):
        return any(_has_tensor(v) for v in values.values())
    return False


def const_labels(value: Any) -> Any:
    """Frozen labels for a tensor (or list, tuple or dict of tensors) whose channels cannot be pruned."""
    if isinstance(value, torch.Tensor):
        return np.zeros([1] * value.ndim, dtype=np.int64)
    if isinstance(value, (list, tuple)):
        return type(value)(const_labels(v) for v in value) if not hasattr(value, "_fields") else tuple(const_labels(v) for v in value)
    if isinstance(value, dict):
        return {k: const_labels(v) for k, v in value.items()}
    return None



def _align(lab: np.ndarray, ndim: int) -> np.ndarray:
    if lab.ndim == ndim:
        return lab
    if lab.ndim < ndim:
        return lab.reshape((1,) * (ndim - lab.ndim) + lab.shape)
    squeezable = [k for k in range(lab.ndim - ndim) if lab.shape[k] == 1]
    return lab.reshape(lab.shape[len(squeezable):]) if len(squeezable) == lab.ndim - ndim else lab


def _align_shape(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return (1,) * (ndim - len(shape)) + shape


def _match_rank(lab: np.ndarray, result: Any) -> np.ndarray:
    if isinstance(result, torch.Tensor) and lab.ndim != result.ndim:
        return _align(lab, result.ndim)
    return lab


def _channels_first(vector: np.ndarray, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[1] = vector.size
    return vector.reshape(shape)


def _varies(arr: np.ndarray, axis: int) -> bool:
    if arr.shape[axis] <= 1:
        return False
    first = np.take(arr, [0], axis=axis)
    return not np.array_equal(np.broadcast_to(first, arr.shape), arr)


def _compress(arr: np.ndarray) -> np.ndarray:
    """Collapse every axis the labels do not vary along to size 1 (broadcast form)."""
    for axis in range(arr.ndim):
        if arr.shape[axis] > 1 and not _varies(arr, axis):
            arr = np.take(arr, [0], axis=axis)
    return arr


def _axis_vector(lab: np.ndarray, real_shape: tuple[int, ...], axis: int) -> np.ndarray | None:
    """The labels along `axis` as a vector, or None if they also vary along another axis."""
    lab = _align(lab, len(real_shape))
    axis = axis % len(real_shape)
    if any(lab.shape[k] > 1 for k in range(lab.ndim) if k != axis):
        return None
    return np.ascontiguousarray(np.broadcast_to(lab.reshape(-1), (real_shape[axis],)))
