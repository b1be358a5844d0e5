"""Channel-label propagation: the torch.fx interpreter behind `graph.analyze`.

Beside every real tensor it carries an integer label per channel naming the atomic channel it
came from, applies shape ops to the labels exactly as to the data, ties labels that must be
removed together, and freezes (with the reason) whatever it does not know.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from torch import nn


from edgeprune.analysis.channels import FROZEN, Consumer, ConvInfo, ParamSlice


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

    def roots(self) -> np.ndarray:
        """Class id (smallest label of its class) of every label."""
        if not self._a:
            return np.arange(self.size, dtype=np.int64)
        a, b = np.concatenate(self._a), np.concatenate(self._b)
        adjacency = sparse.coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(self.size, self.size))
        _, component = connected_components(adjacency, directed=False)
        _, first = np.unique(component, return_index=True)  # labels are 0..n-1: first = smallest
        return first[component].astype(np.int64)


@dataclass(frozen=True)
class _ParamRef:
    """Label value of a get_attr node: a parameter that may be sliced along a channel axis."""

    name: str


# Ops that act on each channel independently and keep the tensor's rank.
_PER_CHANNEL_OPS = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "silu_", "gelu", "sigmoid",
    "sigmoid_", "tanh", "tanh_", "hardsigmoid", "hardswish", "leaky_relu", "elu", "mish", "selu",
    "dropout", "dropout2d", "alpha_dropout", "contiguous", "clone", "clamp", "clamp_", "clip",
    "abs", "neg", "exp", "detach", "float", "half", "to", "type_as",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d",
    "max_pool2d", "interpolate", "upsample", "stochastic_depth",
}
_BINARY_OPS = {
    "add", "add_", "iadd", "mul", "mul_", "imul", "sub", "sub_", "isub", "truediv", "div",
    "div_", "itruediv",
}
_SHAPE_OPS = {
    "view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "unflatten",
    "expand", "contiguous",
}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}
_NO_TENSOR_OPS = {"size", "dim", "getattr", "numel"}

_PER_CHANNEL_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.SELU, nn.PReLU, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
    nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.Upsample, nn.Hardtanh,
)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    name = getattr(node.target, "__name__", str(node.target))
    return name


class _Tracer(fx.Tracer):
    """A tracer that keeps the user's `--ignore` modules as opaque calls."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class _Analyzer(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, ignore: frozenset[str]) -> None:
        super().__init__(gm)
        self.ignore = ignore
        self.uf = _UnionFind()
        self.labels: dict[fx.Node, Any] = {}
        self.slices: list[ParamSlice] = []
        self.consumers: list[Consumer] = []
        self.convs: dict[str, ConvInfo] = {}
        self.producers: list[tuple[str, np.ndarray]] = []
        self.frozen_events: list[tuple[str, str, str, np.ndarray]] = []
        self.flop_weights: dict[str, int] = {}
        self.used_params: set[str] = set()
        self.current: fx.Node | None = None

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

    def freeze(self, labels: Any, reason: str) -> None:
        arrays = [a for a in _flatten_labels(labels) if a is not None]
        if not arrays:
            return
        ids = np.unique(np.concatenate([a.reshape(-1) for a in arrays]))
        ids = ids[ids > FROZEN]
        if ids.size == 0:
            return
        self.uf.union_many(np.zeros_like(ids), ids)
        node = self.current
        where = self.where(node) if node is not None else "?"
        op = "?"
        if node is not None:
            op = type(self.module.get_submodule(str(node.target))).__name__ if node.op == "call_module" else _op_name(node)
        self.frozen_events.append((where, op, reason, ids))

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        try:
            a, b = np.broadcast_arrays(a, b)
        except ValueError:  # unequal label arrays: tie position by position, as far as both go
            size = min(a.size, b.size)
            a, b = a.reshape(-1)[:size], b.reshape(-1)[:size]
        self.uf.union_many(a.reshape(-1), b.reshape(-1))

    # -- interpreter hook -----------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        result = super().run_node(n)
        self.labels[n] = self.label_node(n, result)
        return result

    def label_of(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.labels.get(arg)
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.label_of(a) for a in arg)
        return None

    def real_of(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.real_of(a) for a in arg)
        return arg

    def label_node(self, n: fx.Node, result: Any) -> Any:
        if n.op == "placeholder":
            return _const_labels(result)
        if n.op == "get_attr":
            self.used_params.add(str(n.target))
            return _ParamRef(str(n.target)) if isinstance(result, torch.Tensor) else None
        if n.op == "output":
            self.freeze(self.tensor_labels(n.args[0], result), "model output")
            return None
        if n.op == "call_module":
            return self.label_module(n, result)
        return self.label_function(n, result)

    def tensor_labels(self, arg: Any, real: Any) -> Any:
        """Labels of `arg`, with parameter references turned into frozen constants."""
        label = self.label_of(arg)
        if isinstance(label, _ParamRef):
            return _const_labels(real)
        if isinstance(label, (list, tuple)):
            return type(label)(
                self.tensor_labels(a, r) for a, r in zip(arg, real)  # type: ignore[arg-type]
            )
        return label

    # -- modules --------------------------------------------------------------------------------
    def label_module(self, n: fx.Node, result: Any) -> Any:
        name = str(n.target)
        module = self.module.get_submodule(name)
        for pname, _ in module.named_parameters(recurse=True):
            self.used_params.add(f"{name}.{pname}")
        x_node = n.args[0] if n.args else None
        x_real = self.env[x_node] if isinstance(x_node, fx.Node) else None
        x_lab = self.tensor_labels(x_node, x_real) if x_node is not None else None

        if name in self.ignore:
            self.freeze(x_lab, "left unpruned by --ignore")
            return _const_labels(result)
        if isinstance(module, _CONVS) and isinstance(x_real, torch.Tensor):
            return self.label_conv(name, module, x_lab, x_real, result)
        if isinstance(module, nn.Linear) and isinstance(x_real, torch.Tensor):
            return self.label_linear(name, module, x_lab, x_real, result)
        if isinstance(module, (*_BATCHNORMS, nn.InstanceNorm2d)) and isinstance(x_lab, np.ndarray):
            vector = _axis_vector(x_lab, tuple(x_real.shape), 1)
            if vector is None:
                self.freeze(x_lab, "normalisation input is not channels-first")
                return x_lab
            for pname in ("weight", "bias"):
                if getattr(module, pname, None) is not None:
                    self.slices.append(ParamSlice(f"{name}.{pname}", 0, vector))
            for bname in ("running_mean", "running_var"):
                if getattr(module, bname, None) is not None:
                    self.slices.append(ParamSlice(f"{name}.{bname}", 0, vector, is_buffer=True))
            return x_lab
        if isinstance(module, nn.LayerNorm) and isinstance(x_lab, np.ndarray):
            normalised = len(module.normalized_shape)
            axes = list(range(x_lab.ndim - normalised, x_lab.ndim))
            if any(x_lab.shape[a] > 1 for a in axes):
                self.freeze(x_lab, "LayerNorm normalises over these channels; removing any would change every output")
            return x_lab
        if isinstance(module, nn.GroupNorm):
            self.freeze(x_lab, "GroupNorm statistics mix the channels of each group")
            return x_lab
        if isinstance(module, _PER_CHANNEL_MODULES) and isinstance(x_lab, np.ndarray):
            if isinstance(module, nn.PReLU) and module.num_parameters > 1:
                vector = _axis_vector(x_lab, tuple(x_real.shape), 1)
                if vector is None:
                    self.freeze(x_lab, "PReLU input is not channels-first")
                else:
                    self.slices.append(ParamSlice(f"{name}.weight", 0, vector))
            return _match_rank(x_lab, result)
        if isinstance(module, nn.Flatten):
            return self.apply_shape_op(n, "flatten", [x_lab], [x_real, module.start_dim, module.end_dim], {}, result)
        if isinstance(module, nn.Softmax) and isinstance(x_lab, np.ndarray):
            dim = module.dim if module.dim is not None else -1
            if x_lab.shape[dim] > 1:
                self.freeze(x_lab, "softmax over channels")
            return x_lab
        self.freeze(x_lab, f"unknown module type {type(module).__name__}")
        return _const_labels(result)

    def label_conv(self, name: str, module: nn.Module, x_lab: Any, x_real: torch.Tensor, result: torch.Tensor) -> np.ndarray:
        in_vec = _axis_vector(x_lab, tuple(x_real.shape), 1) if isinstance(x_lab, np.ndarray) else None
        if in_vec is None:
            self.freeze(x_lab, "conv input is not channels-first")
            in_vec = np.zeros(module.in_channels, dtype=np.int64)
        out_vec = self.new_labels(module.out_channels)
        groups = module.groups
        if groups > 1:
            in_per, out_per = module.in_channels // groups, module.out_channels // groups
            for g in range(groups):
                block = np.concatenate([in_vec[g * in_per:(g + 1) * in_per], out_vec[g * out_per:(g + 1) * out_per]])
                self.tie(block[:1].repeat(block.size), block)
        self.producers.append((name, out_vec))
        self.consumers.append(Consumer(name, "conv", in_vec))
        self.convs[name] = ConvInfo(name, groups, in_vec, out_vec)
        self.slices.append(ParamSlice(f"{name}.weight", 0, out_vec))
        if groups == 1:
            self.slices.append(ParamSlice(f"{name}.weight", 1, in_vec))
        if module.bias is not None:
            self.slices.append(ParamSlice(f"{name}.bias", 0, out_vec))
        self.flop_weights[f"{name}.weight"] = int(math.prod(result.shape[2:])) * int(result.shape[0])
        return _channels_first(out_vec, result.ndim)

    def label_linear(self, name: str, module: nn.Linear, x_lab: Any, x_real: torch.Tensor, result: torch.Tensor) -> np.ndarray:
        in_vec = _axis_vector(x_lab, tuple(x_real.shape), x_real.ndim - 1) if isinstance(x_lab, np.ndarray) else None
        if in_vec is None:
            self.freeze(x_lab, "linear input varies along more than its feature axis")
            in_vec = np.zeros(module.in_features, dtype=np.int64)
        out_vec = self.new_labels(module.out_features)
        self.producers.append((name, out_vec))
        self.consumers.append(Consumer(name, "linear", in_vec))
        self.slices.append(ParamSlice(f"{name}.weight", 0, out_vec))
        self.slices.append(ParamSlice(f"{name}.weight", 1, in_vec))
        if module.bias is not None:
            self.slices.append(ParamSlice(f"{name}.bias", 0, out_vec))
        self.flop_weights[f"{name}.weight"] = int(math.prod(result.shape[:-1]))
        shape = [1] * result.ndim
        shape[-1] = module.out_features
        return out_vec.reshape(shape)

    # -- functions and methods ------------------------------------------------------------------
    def label_function(self, n: fx.Node, result: Any) -> Any:
        name = _op_name(n)
        args = list(n.args)
        real_args = [self.real_of(a) for a in args]
        if name in _NO_TENSOR_OPS or not _has_tensor(real_args) and not isinstance(result, torch.Tensor):
            return None
        if name == "getitem":
            return self.label_getitem(n, args, real_args, result)
        if name in _BINARY_OPS:
            return self.label_binary(args, real_args, result)
        labels = [self.tensor_labels(a, r) for a, r in zip(args, real_args)]
        if name in _PER_CHANNEL_OPS and isinstance(labels[0] if labels else None, np.ndarray):
            if name == "stochastic_depth" or isinstance(result, torch.Tensor):
                return _match_rank(labels[0], result)
        if name == "pad" and isinstance(labels[0], np.ndarray):
            pad = real_args[1] if len(real_args) > 1 else n.kwargs.get("pad")
            touched = list(range(labels[0].ndim - len(pad) // 2, labels[0].ndim))
            if any(labels[0].shape[a] > 1 for a in touched):
                self.freeze(labels[0], "padding along channels")
                return _const_labels(result)
            return labels[0]
        if name in _SHAPE_OPS and isinstance(labels[0], np.ndarray):
            return self.apply_shape_op(n, name, labels, real_args, dict(n.kwargs), result)
        if name in _REDUCTIONS and isinstance(labels[0], np.ndarray):
            return self.label_reduction(n, labels[0], real_args, result)
        if name in ("chunk", "split") and isinstance(labels[0], np.ndarray):
            return self.label_split(n, name, labels[0], real_args, result)
        if name in ("layer_norm", "group_norm") and isinstance(labels[0], np.ndarray):
            if name == "group_norm" or any(s > 1 for s in labels[0].shape[-len(real_args[1]):]):
                self.freeze(labels[0], f"{name} normalises over these channels; removing any would change every output")
            return labels[0]
        if name in ("cat", "concat", "stack"):
            return self.label_cat(n, name, labels, real_args, result)
        self.freeze(labels, f"op '{name}' is not known to the channel analysis")
        return _const_labels(result)

    def label_binary(self, args: list, real_args: list, result: Any) -> Any:
        if not isinstance(result, torch.Tensor):
            return None
        operands = [(self.label_of(a), r) for a, r in zip(args, real_args) if isinstance(r, torch.Tensor)]
        tensors = [(lab, r) for lab, r in operands if isinstance(lab, np.ndarray)]
        params = [(lab, r) for lab, r in operands if isinstance(lab, _ParamRef)]
        out_shape = tuple(result.shape)
        combined: np.ndarray | None = None
        for lab, real in tensors:
            lab = _align(lab, len(out_shape))
            real_shape = _align_shape(tuple(real.shape), len(out_shape))
            if combined is None:
                combined = lab
                combined_real = real_shape
                continue
            broadcast_into_other = any(rs == 1 and os > 1 and combined.shape[k] > 1 for k, (rs, os) in enumerate(zip(real_shape, combined_real)))
            other_into_this = any(cs == 1 and rs > 1 and lab.shape[k] > 1 for k, (rs, cs) in enumerate(zip(real_shape, combined_real)))
            if broadcast_into_other:
                self.freeze(lab, "broadcast across channels") if (lab > FROZEN).any() else None
                continue
            if other_into_this:
                self.freeze(combined, "broadcast across channels") if (combined > FROZEN).any() else None
                combined, combined_real = lab, real_shape
                continue
            a, b = np.broadcast_arrays(combined, lab)
            self.tie(a, b)
            combined = np.ascontiguousarray(a)
            combined_real = tuple(max(x, y) for x, y in zip(combined_real, real_shape))
        if combined is None:
            for lab, real in params:
                self.freeze_param(lab.name)
            return _const_labels(result)
        for lab, real in params:
            self.slice_param(lab.name, tuple(real.shape), combined, len(out_shape))
        return _compress(combined)

    def slice_param(self, name: str, param_shape: tuple[int, ...], labels: np.ndarray, rank: int) -> None:
        """A parameter broadcast against channels (layer scale, a bias) is sliced with them."""
        offset = rank - len(param_shape)
        axes = [k for k, size in enumerate(param_shape) if size > 1 and labels.shape[k + offset] > 1]
        if len(axes) > 1:
            self.freeze(labels, f"parameter {name} spans several channel axes")
            return
        if axes:
            axis = axes[0]
            vector = _axis_vector(labels, tuple(labels.shape), axis + offset)
            if vector is None or vector.size != param_shape[axis]:
                self.freeze(labels, f"parameter {name} does not line up with the channels")
                return
            self.slices.append(ParamSlice(name, axis, vector))

    def freeze_param(self, name: str) -> None:
        self.used_params.add(name)

    def label_getitem(self, n: fx.Node, args: list, real_args: list, result: Any) -> Any:
        container, index = args[0], real_args[1]
        label = self.label_of(container)
        if isinstance(label, (list, tuple)):
            return label[index]
        if not isinstance(label, np.ndarray) or not isinstance(real_args[0], torch.Tensor):
            return _const_labels(result) if isinstance(result, torch.Tensor) else None
        full = np.broadcast_to(label, tuple(real_args[0].shape))
        sliced = full[_numpy_index(index)]
        if sliced.size and not _slice_keeps_channels(label, index):
            self.freeze(label, "indexing along channels with fixed positions")
            return _const_labels(result)
        return _compress(np.ascontiguousarray(sliced))

    def label_reduction(self, n: fx.Node, lab: np.ndarray, real_args: list, result: Any) -> Any:
        x = real_args[0]
        dims = real_args[1] if len(real_args) > 1 else n.kwargs.get("dim")
        keepdim = bool(real_args[2]) if len(real_args) > 2 else bool(n.kwargs.get("keepdim", False))
        if dims is None:
            self.freeze(lab, f"'{_op_name(n)}' over all axes mixes channels")
            return _const_labels(result)
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [d % x.ndim for d in dims]
        lab = _align(lab, x.ndim)
        if any(lab.shape[d] > 1 for d in dims):
            self.freeze(lab, f"'{_op_name(n)}' over channels mixes them")
            return _const_labels(result)
        return lab if keepdim else lab.reshape([s for k, s in enumerate(lab.shape) if k not in dims])

    def label_split(self, n: fx.Node, name: str, lab: np.ndarray, real_args: list, result: Any) -> Any:
        x = real_args[0]
        dim = real_args[2] if len(real_args) > 2 else n.kwargs.get("dim", 0)
        dim = dim % x.ndim
        full = np.broadcast_to(_align(lab, x.ndim), tuple(x.shape))
        pieces = torch.tensor(np.ascontiguousarray(full))
        parts = pieces.chunk(real_args[1], dim) if name == "chunk" else pieces.split(real_args[1], dim)
        out = tuple(_compress(p.numpy()) for p in parts)
        if lab.shape[dim] > 1 if dim < lab.ndim else False:
            sizes = {p.shape[dim] for p in parts}
            if len(sizes) != 1:
                self.freeze(lab, f"'{name}' into unequal pieces along channels")
                return tuple(_const_labels(r) for r in result)
            for part in out[1:]:  # equal pieces keep equal widths: tie offset i of every piece
                self.tie(out[0], part)
        return out

    def label_cat(self, n: fx.Node, name: str, labels: list, real_args: list, result: Any) -> Any:
        tensors = real_args[0]
        labs = labels[0]
        dim = real_args[1] if len(real_args) > 1 else n.kwargs.get("dim", 0)
        if not isinstance(labs, (list, tuple)) or any(not isinstance(l, np.ndarray) for l in labs):
            self.freeze(labs, f"'{name}' of inputs without channel labels")
            return _const_labels(result)
        full = [np.broadcast_to(_align(l, t.ndim), tuple(t.shape)) for l, t in zip(labs, tensors)]
        joined = np.stack(full, axis=dim) if name == "stack" else np.concatenate(full, axis=dim)
        return _compress(joined)

    def apply_shape_op(self, n: fx.Node, name: str, labels: list, real_args: list, kwargs: dict, result: Any) -> Any:
        x = real_args[0]
        lab = labels[0]
        full = torch.tensor(np.ascontiguousarray(np.broadcast_to(_align(lab, x.ndim), tuple(x.shape))))
        method = "reshape" if name == "view" else name
        try:
            out = getattr(full, method)(*real_args[1:], **kwargs)
        except Exception:
            self.freeze(lab, f"'{name}' could not be followed")
            return _const_labels(result)
        out_np = out.numpy()
        varying_in = [k for k in range(lab.ndim) if lab.shape[k] > 1]
        varying_out = [k for k in range(out_np.ndim) if _varies(out_np, k)]
        if name in ("view", "reshape", "unflatten") and len(varying_out) > len(varying_in):
            self.tie_split(n, name, lab, out_np, varying_out)
        return _compress(np.ascontiguousarray(out_np))

    def tie_split(self, n: fx.Node, name: str, lab: np.ndarray, out: np.ndarray, varying: list[int]) -> None:
        """A view that splits channels into (fixed, derived) axes keeps every fixed block equal."""
        if name == "unflatten":
            self.freeze(lab, "unflatten of channels")
            return
        shape_args = list(n.args[1:])
        if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple)):
            shape_args = list(shape_args[0])
        if len(shape_args) != out.ndim:
            self.freeze(lab, f"'{name}' splits channels in a way the analysis cannot follow")
            return
        fixed = [k for k in varying if isinstance(shape_args[k], int) and shape_args[k] != -1]
        derived = [k for k in varying if k not in fixed]
        if len(derived) != 1:
            self.freeze(lab, f"'{name}' splits channels into fixed sizes")
            return
        for axis in fixed:
            first = np.take(out, [0], axis=axis)
            for j in range(1, out.shape[axis]):
                self.tie(first, np.take(out, [j], axis=axis))


def _flatten_labels(labels: Any) -> list:
    if isinstance(labels, np.ndarray):
        return [labels]
    if isinstance(labels, (list, tuple)):
        return [x for item in labels for x in _flatten_labels(item)]
    return []


def _has_tensor(values: Any) -> bool:
    if isinstance(values, torch.Tensor):
        return True
    if isinstance(values, (list, tuple)):
        return any(_has_tensor(v) for v in values)
    return False


def _const_labels(value: Any) -> Any:
    """Frozen labels for a tensor (or tuple of tensors) whose channels cannot be pruned."""
    if isinstance(value, torch.Tensor):
        return np.zeros([1] * value.ndim, dtype=np.int64)
    if isinstance(value, (list, tuple)):
        return type(value)(_const_labels(v) for v in value)
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


def _numpy_index(index: Any) -> Any:
    if isinstance(index, tuple):
        return tuple(_numpy_index(i) for i in index)
    if index is None or isinstance(index, (int, slice)) or index is Ellipsis:
        return index
    if isinstance(index, torch.Tensor):
        return index.numpy()
    return index


def _slice_keeps_channels(lab: np.ndarray, index: Any) -> bool:
    """True when indexing takes every position along each axis the labels vary on."""
    items = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis or i is None for i in items):
        return not any(lab.shape[k] > 1 for k in range(lab.ndim))
    for axis, item in enumerate(items):
        if axis < lab.ndim and lab.shape[axis] > 1:
            if not (isinstance(item, slice) and item == slice(None)):
                return False
    return True


