"""The built-in op handlers: one small function per kind of op, registered in ops.py's table.

Each handler receives an `OpCall` and returns the labels of the op's result. Functional layers
(``F.conv2d``, ``F.linear``, ``F.batch_norm``...) whose weights are read straight from a module's
parameters are sliced exactly like the module forms.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.analysis.channels import FROZEN, Consumer, ConvInfo
from edgeprune.analysis.labels import (
    _align,
    _align_shape,
    _axis_vector,
    _channels_first,
    _compress,
    _match_rank,
    _ParamRef,
)
from edgeprune.analysis.ops import OpCall, register_op


def _tensor_methods(*names: str) -> list:
    return [getattr(torch.Tensor, n) for n in names if hasattr(torch.Tensor, n)]


def _functions(module: Any, *names: str) -> list:
    return [getattr(module, n) for n in names if hasattr(module, n)]


# -- element-wise: each channel on its own ----------------------------------------------------------
def elementwise(call: OpCall) -> Any:
    """Each output channel depends only on the same input channel: labels pass through."""
    if not isinstance(call.x, np.ndarray):
        call.freeze(call.labels, "element-wise op on an input without channel labels")
        return call.frozen_result()
    return _match_rank(call.x, call.result)


_ELEMENTWISE_NAMES = (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "silu", "gelu", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "hardsigmoid", "hardswish", "leaky_relu", "leaky_relu_", "elu", "elu_", "mish", "selu", "celu", "softplus",
    "dropout", "dropout2d", "dropout1d", "alpha_dropout", "feature_alpha_dropout", "gelu", "logsigmoid",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "avg_pool1d",
    "avg_pool2d", "max_pool1d", "max_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
)
register_op(
    *_functions(F, *_ELEMENTWISE_NAMES),
    *_functions(torch, "relu", "relu_", "sigmoid", "tanh", "exp", "abs", "neg", "clamp", "clip", "sqrt", "rsqrt",
                "square", "erf", "detach", "max_pool2d", "avg_pool2d", "adaptive_avg_pool1d", "dropout"),
    *_tensor_methods("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "clamp",
                     "clamp_", "clip", "contiguous", "clone", "detach", "float", "half", "to", "type_as",
                     "sqrt", "rsqrt", "square", "erf", "exp_", "abs_", "neg_"),
    handler=elementwise,
)
register_op(
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.CELU, nn.Mish, nn.SELU, nn.Softplus, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
    nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.Hardtanh,
    handler=elementwise,
)


@register_op(nn.PReLU)
def prelu(call: OpCall) -> Any:
    if isinstance(call.x, np.ndarray) and call.module.num_parameters > 1:
        vector = _axis_vector(call.x, tuple(call.x_real.shape), 1)
        if vector is None:
            call.freeze(call.x, "PReLU input is not channels-first")
        else:
            call.analyzer.add_slice(f"{call.node.target}.weight", 0, vector)
    return elementwise(call)


@register_op(F.pad)
def pad(call: OpCall) -> Any:
    lab = call.x
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    widths = call.arg(1, "pad")
    lab = _align(lab, call.x_real.ndim)
    touched = range(lab.ndim - len(widths) // 2, lab.ndim)
    if any(lab.shape[a] > 1 for a in touched):
        call.freeze(lab, "padding along channels")
        return call.frozen_result()
    return lab


# -- binary arithmetic: operands tied element-wise -------------------------------------------------
@register_op(
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub, operator.truediv,
    operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.multiply, torch.subtract,
    *_tensor_methods("add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "__add__", "__mul__",
                     "__radd__", "__rmul__", "__sub__", "__truediv__"),
)
def binary(call: OpCall) -> Any:
    an = call.analyzer
    result = call.result
    if not isinstance(result, torch.Tensor):
        return None
    args = list(call.node.args) + list(call.node.kwargs.values())
    reals = list(call.real_args) + list(call.real_kwargs.values())
    operands = [(an.label_of(a), r) for a, r in zip(args, reals) if isinstance(r, torch.Tensor)]
    tensors = [(lab, r) for lab, r in operands if isinstance(lab, np.ndarray)]
    params = [(lab, r) for lab, r in operands if isinstance(lab, _ParamRef)]
    out_shape = tuple(result.shape)
    combined: np.ndarray | None = None
    combined_real: tuple[int, ...] = ()
    for lab, real in tensors:
        lab = _align(lab, len(out_shape))
        real_shape = _align_shape(tuple(real.shape), len(out_shape))
        if combined is None:
            combined, combined_real = lab, real_shape
            continue
        into_other = any(rs == 1 and os > 1 and combined.shape[k] > 1
                         for k, (rs, os) in enumerate(zip(real_shape, combined_real)))
        other_into_this = any(cs == 1 and rs > 1 and lab.shape[k] > 1
                              for k, (rs, cs) in enumerate(zip(real_shape, combined_real)))
        if into_other:
            if (lab > FROZEN).any():
                call.freeze(lab, "broadcast across channels")
            continue
        if other_into_this:
            if (combined > FROZEN).any():
                call.freeze(combined, "broadcast across channels")
            combined, combined_real = lab, real_shape
            continue
        a, b = np.broadcast_arrays(combined, lab)
        call.tie(a, b)
        combined = np.ascontiguousarray(a)
        combined_real = tuple(max(x, y) for x, y in zip(combined_real, real_shape))
    if combined is None:
        return call.frozen_result()
    for lab, real in params:
        _slice_broadcast_param(call, lab.name, tuple(real.shape), combined, len(out_shape))
    return _compress(combined)


def _slice_broadcast_param(call: OpCall, name: str, param_shape: tuple[int, ...], labels: np.ndarray, rank: int) -> None:
    """A parameter broadcast against channels (layer scale, a bias) is sliced with them."""
    offset = rank - len(param_shape)
    axes = [k for k, size in enumerate(param_shape) if size > 1 and labels.shape[k + offset] > 1]
    if len(axes) > 1:
        call.freeze(labels, f"parameter {name} spans several channel axes")
        return
    if axes:
        axis = axes[0]
        vector = _axis_vector(labels, tuple(labels.shape), axis + offset)
        if vector is None or vector.size != param_shape[axis]:
            call.freeze(labels, f"parameter {name} does not line up with the channels")
            return
        call.analyzer.add_slice(name, axis, vector)


# -- convolutions and linear layers ----------------------------------------------------------------
def _conv_labels(call: OpCall, owner: str, weight_name: str, bias_name: str | None, groups: int,
                 in_channels: int, out_channels: int) -> np.ndarray:
    an = call.analyzer
    x_lab, x_real, result = call.x, call.x_real, call.result
    in_vec = _axis_vector(x_lab, tuple(x_real.shape), 1) if isinstance(x_lab, np.ndarray) else None
    if in_vec is None:
        call.freeze(x_lab, "conv input is not channels-first")
        in_vec = np.zeros(in_channels, dtype=np.int64)
    out_vec = call.new_labels(out_channels)
    if groups > 1:
        in_per, out_per = in_channels // groups, out_channels // groups
        for g in range(groups):
            block = np.concatenate([in_vec[g * in_per:(g + 1) * in_per], out_vec[g * out_per:(g + 1) * out_per]])
            call.tie(block[:1].repeat(block.size), block)
    an.producers.append((owner, out_vec))
    an.consumers.append(Consumer(owner, "conv", in_vec))
    an.convs[owner] = ConvInfo(owner, groups, in_vec, out_vec)
    an.add_slice(weight_name, 0, out_vec)
    if groups == 1:
        an.add_slice(weight_name, 1, in_vec)
    if bias_name is not None:
        an.add_slice(bias_name, 0, out_vec)
    an.flop_weights[weight_name] = an.flop_weights.get(weight_name, 0) + int(math.prod(result.shape[2:])) * int(result.shape[0])
    return _channels_first(out_vec, result.ndim)


@register_op(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_module(call: OpCall) -> Any:
    m, name = call.module, str(call.node.target)
    return _conv_labels(call, name, f"{name}.weight", f"{name}.bias" if m.bias is not None else None,
                        m.groups, m.in_channels, m.out_channels)


def _functional_weights(call: OpCall, kind: str) -> tuple[str, str, str | None] | None:
    """(owner module, weight name, bias name) of ``F.conv2d`` / ``F.linear`` called with a module's
    own parameters; None (and the call frozen) when the weight is computed in the forward."""
    weight_name = call.param_name(1, "weight")
    bias = call.arg(2, "bias")
    bias_name = call.param_name(2, "bias")
    owner = weight_name.rsplit(".", 1)[0] if weight_name and "." in weight_name else None
    if owner is None or (bias is not None and bias_name is None) or not isinstance(call.x, np.ndarray):
        call.freeze(call.labels, f"{kind} whose weight is computed in the forward (not a parameter read as is)")
        return None
    return owner, weight_name, bias_name


@register_op(F.conv1d, F.conv2d, F.conv3d)
def conv_function(call: OpCall) -> Any:
    """``F.conv2d(x, self.weight, self.bias, ...)``: sliced like the module when the weight is a parameter."""
    found = _functional_weights(call, "conv")
    if found is None:
        return call.frozen_result()
    owner, weight_name, bias_name = found
    weight = call.arg(1, "weight")
    groups = int(call.arg(6, "groups", 1))
    return _conv_labels(call, owner, weight_name, bias_name, groups, int(weight.shape[1]) * groups, int(weight.shape[0]))


def _linear_labels(call: OpCall, owner: str, weight_name: str, bias_name: str | None,
                   in_features: int, out_features: int) -> np.ndarray:
    an = call.analyzer
    x_lab, x_real, result = call.x, call.x_real, call.result
    in_vec = _axis_vector(x_lab, tuple(x_real.shape), x_real.ndim - 1) if isinstance(x_lab, np.ndarray) else None
    if in_vec is None:
        call.freeze(x_lab, "linear input varies along more than its feature axis")
        in_vec = np.zeros(in_features, dtype=np.int64)
    out_vec = call.new_labels(out_features)
    an.producers.append((owner, out_vec))
    an.consumers.append(Consumer(owner, "linear", in_vec))
    an.add_slice(weight_name, 0, out_vec)
    an.add_slice(weight_name, 1, in_vec)
    if bias_name is not None:
        an.add_slice(bias_name, 0, out_vec)
    an.flop_weights[weight_name] = an.flop_weights.get(weight_name, 0) + int(math.prod(result.shape[:-1]))
    shape = [1] * result.ndim
    shape[-1] = out_features
    return out_vec.reshape(shape)


@register_op(nn.Linear)
def linear_module(call: OpCall) -> Any:
    m, name = call.module, str(call.node.target)
    return _linear_labels(call, name, f"{name}.weight", f"{name}.bias" if m.bias is not None else None,
                          m.in_features, m.out_features)


@register_op(F.linear)
def linear_function(call: OpCall) -> Any:
    found = _functional_weights(call, "linear")
    if found is None:
        return call.frozen_result()
    owner, weight_name, bias_name = found
    weight = call.arg(1, "weight")
    return _linear_labels(call, owner, weight_name, bias_name, int(weight.shape[1]), int(weight.shape[0]))


# -- normalisation -----------------------------------------------------------------------------
def _channel_vector(call: OpCall, what: str) -> np.ndarray | None:
    vector = _axis_vector(call.x, tuple(call.x_real.shape), 1) if isinstance(call.x, np.ndarray) else None
    if vector is None:
        call.freeze(call.labels, f"{what} input is not channels-first")
    return vector


def _slice_per_channel(call: OpCall, vector: np.ndarray, params: list[str | None], buffers: list[str | None]) -> None:
    for name in params:
        if name is not None:
            call.analyzer.add_slice(name, 0, vector)
    for name in buffers:
        if name is not None:
            call.analyzer.add_slice(name, 0, vector, is_buffer=True)


@register_op(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def batch_norm_module(call: OpCall) -> Any:
    vector = _channel_vector(call, "normalisation")
    if vector is None:
        return call.frozen_result()
    m, name = call.module, str(call.node.target)
    params = [f"{name}.{p}" for p in ("weight", "bias") if getattr(m, p, None) is not None]
    buffers = [f"{name}.{b}" for b in ("running_mean", "running_var") if getattr(m, b, None) is not None]
    _slice_per_channel(call, vector, params, buffers)
    return _match_rank(call.x, call.result)


@register_op(F.batch_norm, F.instance_norm)
def batch_norm_function(call: OpCall) -> Any:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (timm's BatchNormAct2d)."""
    vector = _channel_vector(call, "batch_norm")
    if vector is None:
        return call.frozen_result()
    # instance_norm's first five arguments are the same as batch_norm's
    positions = ((1, "running_mean", True), (2, "running_var", True), (3, "weight", False), (4, "bias", False))
    params, buffers = [], []
    for index, key, is_buffer in positions:
        value = call.arg(index, key)
        if value is None:
            continue
        name = call.param_name(index, key)
        if name is None:
            call.freeze(call.x, f"batch_norm {key} is computed in the forward")
            return call.frozen_result()
        (buffers if is_buffer else params).append(name)
    _slice_per_channel(call, vector, params, buffers)
    return _match_rank(call.x, call.result)


def _layer_norm(call: OpCall, normalized_ndim: int, params: list[str | None]) -> Any:
    lab = call.x
    if not isinstance(lab, np.ndarray):
        return call.frozen_result()
    lab = _align(lab, call.x_real.ndim)
    if any(s > 1 for s in lab.shape[lab.ndim - normalized_ndim:]):
        call.freeze(lab, "layer_norm normalises over these channels; removing any would change every output")
        vector = _axis_vector(lab, tuple(call.x_real.shape), -1) if normalized_ndim == 1 else None
        if vector is not None:  # its affine parameters go with (and stay with) those channels
            _slice_per_channel(call, vector, params, [])
    return lab


@register_op(nn.LayerNorm)
def layer_norm_module(call: OpCall) -> Any:
    m, name = call.module, str(call.node.target)
    params = [f"{name}.{p}" for p in ("weight", "bias") if getattr(m, p, None) is not None]
    return _layer_norm(call, len(m.normalized_shape), params)


@register_op(F.layer_norm)
def layer_norm_function(call: OpCall) -> Any:
    shape = call.arg(1, "normalized_shape")
    params = [call.param_name(2, "weight"), call.param_name(3, "bias")]
    if any(call.arg(i, k) is not None and p is None for i, k, p in ((2, "weight", params[0]), (3, "bias", params[1]))):
        params = []
    return _layer_norm(call, len(shape) if isinstance(shape, (list, tuple, torch.Size)) else 1, params)


def _group_norm(call: OpCall, owner: str | None, num_groups: int, params: list[str | None]) -> Any:
    """Statistics are per group: whole groups can go (one unit each), single channels cannot."""
    vector = _channel_vector(call, "group_norm")
    if vector is None:
        return call.frozen_result()
    channels = vector.size
    if num_groups <= 1 or owner is None:
        call.freeze(call.x, "group_norm with one group normalises over every channel" if num_groups <= 1
                    else "group_norm called outside a GroupNorm module: its group count cannot follow pruning")
        return _match_rank(call.x, call.result)
    per = channels // num_groups
    blocks = vector.reshape(num_groups, per)
    call.tie(blocks[:, :1].repeat(per, axis=1), blocks)
    call.analyzer.norm_groups[owner] = (vector, per)
    _slice_per_channel(call, vector, params, [])
    return _match_rank(call.x, call.result)


@register_op(nn.GroupNorm)
def group_norm_module(call: OpCall) -> Any:
    m, name = call.module, str(call.node.target)
    params = [f"{name}.{p}" for p in ("weight", "bias") if getattr(m, p, None) is not None]
    return _group_norm(call, name, m.num_groups, params)


@register_op(F.group_norm)
def group_norm_function(call: OpCall) -> Any:
    """``F.group_norm(x, self.num_groups, self.weight, self.bias)``: the owner's ``num_groups`` is updated on shrink."""
    weight_name = call.param_name(2, "weight")
    bias_name = call.param_name(3, "bias")
    owner = weight_name.rsplit(".", 1)[0] if weight_name and "." in weight_name else None
    module = call.analyzer.module.get_submodule(owner) if owner is not None else None
    if not isinstance(module, nn.GroupNorm) or (call.arg(2, "weight") is not None and weight_name is None):
        owner = None
    return _group_norm(call, owner, int(call.arg(1, "num_groups")), [weight_name, bias_name])


def _register_torchvision() -> None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is a dependency, but the analysis does not need it
        return
    register_op(stochastic_depth, handler=elementwise)


_register_torchvision()
