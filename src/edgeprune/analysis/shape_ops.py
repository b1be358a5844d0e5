"""Handlers for ops that move channels between axes: reductions, softmax, views, split,
slicing, concatenation and pixel shuffle. Labels are reshaped by running the op itself on them."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.analysis.handlers import _channel_vector, _functions, _tensor_methods
from edgeprune.analysis.labels import _align, _channels_first, _compress, _varies, const_labels
from edgeprune.analysis.ops import OpCall, register_op


def _tie_along(call: OpCall, lab: np.ndarray, dim: int) -> np.ndarray:
    """Tie the label slices along `dim` (pieces combined position by position); return slice 0."""
    first = np.take(lab, [0], axis=dim)
    for j in range(1, lab.shape[dim]):
        call.tie(first, np.take(lab, [j], axis=dim))
    return first


@register_op(nn.Softmax, F.softmax, torch.softmax, *_tensor_methods("softmax"))
def softmax(call: OpCall) -> Any:
    """Softmax over channels mixes them (frozen); over an axis of pieces (SKNet's paths, beside
    the channel axis) it ties each channel across the pieces."""
    lab = call.x
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    dim = call.module.dim if call.module is not None else call.arg(1, "dim")
    lab = _align(lab, call.x_real.ndim)
    dim = -1 if dim is None else dim % lab.ndim
    if lab.shape[dim] > 1:
        if all(lab.shape[k] <= 1 for k in range(lab.ndim) if k != dim):
            call.freeze(lab, "softmax over channels")
            return lab
        _tie_along(call, lab, dim)
    return lab


# -- reductions ----------------------------------------------------------------------------------
@register_op(torch.mean, torch.sum, torch.amax, torch.amin, *_tensor_methods("mean", "sum", "amax", "amin"))
def reduction(call: OpCall) -> Any:
    lab, x = call.x, call.x_real
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    dims = call.arg(1, "dim")
    keepdim = bool(call.arg(2, "keepdim", False))
    if dims is None:
        call.freeze(lab, "reduction over all axes mixes channels")
        return call.frozen_result()
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d % x.ndim for d in dims]
    lab = _align(lab, x.ndim)
    reduced = [d for d in dims if lab.shape[d] > 1]
    if reduced and all(lab.shape[k] <= 1 for k in range(lab.ndim) if k not in dims):
        call.freeze(lab, "reduction over channels mixes them")
        return call.frozen_result()
    for d in reduced:  # summing pieces of equal width (ResNeSt's radix) ties them, like an add
        lab = _tie_along(call, lab, d)
    return lab if keepdim else lab.reshape([s for k, s in enumerate(lab.shape) if k not in dims])


# -- shape ops: the labels are reshaped by the op itself --------------------------------------------
def _full(lab: np.ndarray, real: torch.Tensor) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(np.broadcast_to(_align(lab, real.ndim), tuple(real.shape))))


def _shape_op(call: OpCall, apply) -> Any:
    lab = call.x
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    try:
        out = apply(_full(lab, call.x_real))
    except (RuntimeError, TypeError, ValueError, IndexError):
        call.freeze(lab, "shape op could not be followed")
        return call.frozen_result()
    return _compress(np.ascontiguousarray(out.numpy()))


def _method_or_function(call: OpCall, method: str):
    rest, kwargs = call.real_args[1:], call.real_kwargs
    return lambda t: getattr(t, method)(*rest, **kwargs)


@register_op(torch.flatten, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.movedim,
             *_tensor_methods("flatten", "permute", "transpose", "squeeze", "unsqueeze", "expand", "expand_as",
                              "movedim"))
def shape_op(call: OpCall) -> Any:
    method = call.node.target if call.node.op == "call_method" else call.node.target.__name__
    if method == "expand_as":
        return _shape_op(call, lambda t: t.expand(call.real_args[1].shape))
    return _shape_op(call, _method_or_function(call, method))


@register_op(nn.Flatten)
def flatten_module(call: OpCall) -> Any:
    m = call.module
    return _shape_op(call, lambda t: t.flatten(m.start_dim, m.end_dim))


@register_op(torch.reshape, *_tensor_methods("view", "reshape"))
def reshape(call: OpCall) -> Any:
    """A view that splits channels into (fixed, derived) axes keeps every fixed block equal."""
    lab = call.x
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    shape_args = list(call.real_args[1:]) or [call.real_kwargs.get("shape")]
    if len(shape_args) == 1 and isinstance(shape_args[0], (list, tuple, torch.Size)):
        shape_args = list(shape_args[0])
    out = _shape_op(call, lambda t: t.reshape(shape_args))
    full_out = _full(lab, call.x_real).reshape(shape_args).numpy()
    varying_in = [k for k in range(lab.ndim) if lab.shape[k] > 1]
    varying = [k for k in range(full_out.ndim) if _varies(full_out, k)]
    if varying and all(_is_literal(call, k) for k in varying):
        call.freeze(lab, "view with the channel count written into the forward: it cannot follow pruning")
        return call.frozen_result()
    if len(varying) > len(varying_in):
        fixed = [k for k in varying if _is_literal(call, k)]
        derived = [k for k in varying if k not in fixed]
        if len(derived) != 1:
            call.freeze(lab, "view splits channels into fixed sizes")
            return call.frozen_result()
        for axis in fixed:
            first = np.take(full_out, [0], axis=axis)
            for j in range(1, full_out.shape[axis]):
                call.tie(first, np.take(full_out, [j], axis=axis))
    return out


def _is_literal(call: OpCall, k: int) -> bool:
    """Whether size `k` of a view is a constant of the graph (fixed) rather than computed from a shape."""
    args = list(call.node.args[1:])
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return k < len(args) and isinstance(args[k], int) and args[k] != -1


@register_op(*_tensor_methods("unflatten"), torch.unflatten)
def unflatten(call: OpCall) -> Any:
    lab = call.x
    if isinstance(lab, np.ndarray):
        dim = call.arg(1, "dim") % call.x_real.ndim
        if _align(lab, call.x_real.ndim).shape[dim] > 1:
            call.freeze(lab, "unflatten of channels")
            return call.frozen_result()
    return _shape_op(call, _method_or_function(call, "unflatten"))


@register_op(nn.PixelShuffle, F.pixel_shuffle)
def pixel_shuffle(call: OpCall) -> Any:
    """Each output channel gathers r*r input channels: those are kept or dropped together."""
    factor = call.module.upscale_factor if call.module is not None else int(call.arg(1, "upscale_factor"))
    vector = _channel_vector(call, "pixel_shuffle")
    if vector is None:
        return call.frozen_result()
    blocks = vector.reshape(-1, factor * factor)
    call.tie(blocks[:, :1].repeat(factor * factor, axis=1), blocks)
    return _channels_first(np.ascontiguousarray(blocks[:, 0]), call.result.ndim)


# -- split, slice, concatenate -------------------------------------------------------------------
@register_op(torch.chunk, torch.split, *_tensor_methods("chunk", "split"))
def split(call: OpCall) -> Any:
    """``chunk`` and a ``split`` whose size is computed from the shape tie offset i of every piece
    (they shrink alike). A ``split`` by sizes written into the forward (``torch.split(x, self.width)``,
    Res2Net, MixNet) cannot follow pruning: those channels are frozen."""
    lab, x = call.x, call.x_real
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    is_chunk = call.node.target in ("chunk",) or call.node.target is torch.chunk
    dim = call.arg(2, "dim", 0) % x.ndim
    sizes = call.arg(1, "chunks" if is_chunk else "split_size_or_sections")
    if sizes is None:
        sizes = call.arg(1, "split_size")
    full = _full(lab, x)
    parts = full.chunk(sizes, dim) if is_chunk else full.split(sizes, dim)
    out = tuple(_compress(np.ascontiguousarray(p.numpy())) for p in parts)
    if _align(lab, x.ndim).shape[dim] <= 1:
        return out
    if not is_chunk and not _computed(call.fx_arg(1, "split_size_or_sections")):
        call.freeze(lab, "split of channels by sizes written into the forward: they cannot follow pruning")
        return tuple(const_labels(p) for p in call.result)
    if len({p.shape[dim] for p in parts}) != 1:
        call.freeze(lab, "split into unequal pieces along channels")
        return tuple(const_labels(p) for p in call.result)
    for part in out[1:]:
        call.tie(out[0], part)
    return out


def _computed(arg: Any) -> bool:
    """Whether a size argument comes from the graph (a shape) rather than a constant of the forward."""
    if isinstance(arg, (list, tuple)):
        return all(_computed(a) for a in arg)
    return isinstance(arg, torch.fx.Node)


@register_op(operator.getitem)
def getitem(call: OpCall) -> Any:
    container, index = call.real_args[0], call.real_args[1]
    label = call.analyzer.label_of(call.node.args[0])
    if isinstance(label, (list, tuple, dict)):
        return label[index]
    if not isinstance(label, np.ndarray) or not isinstance(container, torch.Tensor):
        return call.frozen_result()
    return _slice_labels(call, label, container, index)


def _slice_labels(call: OpCall, label: np.ndarray, x: torch.Tensor, index: Any) -> Any:
    """``x[:, a:b]`` with constant bounds: channels before ``b`` keep their positions (frozen),
    the ones after it may go; any other index along channels is frozen."""
    items = index if isinstance(index, tuple) else (index,)
    lab = _align(label, x.ndim)
    if any(i is Ellipsis or i is None for i in items):
        if any(s > 1 for s in lab.shape):
            call.freeze(lab, "indexing with ... or None over channel labels")
            return call.frozen_result()
        return _compress(lab)
    for axis, item in enumerate(items):
        if axis >= lab.ndim or lab.shape[axis] <= 1:
            continue
        if isinstance(item, slice) and item == slice(None):
            continue
        if not isinstance(item, slice):
            call.freeze(lab, "indexing along channels with fixed positions")
            return call.frozen_result()
        start, stop, step = item.start, item.stop, item.step
        if step not in (None, 1) or any(v is not None and v < 0 for v in (start, stop)):
            call.freeze(lab, "indexing along channels with fixed positions")
            return call.frozen_result()
        size = x.shape[axis]
        start = start or 0
        stop = size if stop is None else min(stop, size)
        head = np.take(lab, range(0, start), axis=axis)
        call.freeze(head, "slice of channels at a fixed offset: the channels before it keep their positions")
        if stop < size:
            call.freeze(np.take(lab, range(start, stop), axis=axis),
                        "slice of channels with a fixed end: its channels keep their positions")
    full = np.broadcast_to(lab, tuple(x.shape))
    numpy_index = tuple(i.numpy() if isinstance(i, torch.Tensor) else i for i in items)
    return _compress(np.ascontiguousarray(full[numpy_index]))


@register_op(torch.cat, torch.concat, torch.stack, *_functions(torch, "concatenate"))
def cat(call: OpCall) -> Any:
    tensors, labs = call.real_args[0], call.labels[0]
    dim = call.arg(1, "dim", 0)
    if not isinstance(labs, (list, tuple)) or any(not isinstance(lab, np.ndarray) for lab in labs):
        call.freeze(labs, "concatenation of inputs without channel labels")
        return call.frozen_result()
    full = [np.broadcast_to(_align(lab, t.ndim), tuple(t.shape)) for lab, t in zip(labs, tensors)]
    joined = np.stack(full, axis=dim) if call.node.target is torch.stack else np.concatenate(full, axis=dim)
    return _compress(joined)
