"""Handlers for the timm layers that timm's tracing rules keep whole (imported only with timm)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from timm.layers import norm_act, std_conv
from timm.models import vgg

from edgeprune.analysis.channels import ConvInfo
from edgeprune.analysis.handlers import _conv_labels, _slice_per_channel, batch_norm_module, elementwise
from edgeprune.analysis.labels import _channels_first
from edgeprune.analysis.ops import OpCall, module_handler, register_op


@register_op(norm_act.BatchNormAct2d, norm_act.SyncBatchNormAct)
def batch_norm_act(call: OpCall) -> Any:
    """BatchNorm, then its drop and activation modules, each of which must act per channel."""
    for part in (getattr(call.module, "drop", None), getattr(call.module, "act", None)):
        if part is not None and module_handler(part) is not elementwise:
            call.freeze(call.x, f"BatchNormAct2d applies {type(part).__name__}, not known to act per channel")
            return call.frozen_result()
    return batch_norm_module(call)


@register_op(std_conv.StdConv2d, std_conv.StdConv2dSame, std_conv.ScaledStdConv2d, std_conv.ScaledStdConv2dSame)
def standardized_conv(call: OpCall) -> Any:
    """Weight standardisation is over each filter's inputs, so only output channels can go."""
    m, name = call.module, str(call.node.target)
    an = call.analyzer
    if isinstance(call.x, np.ndarray):
        call.freeze(call.x, f"{type(m).__name__} standardises each filter over its input channels")
    out_vec = call.new_labels(m.out_channels)
    an.producers.append((name, out_vec))
    if m.groups > 1:  # a grouped conv's groups cannot change while its inputs stay
        call.freeze(out_vec, f"grouped {type(m).__name__} with frozen inputs")
    an.convs[name] = ConvInfo(name, m.groups, np.zeros(m.in_channels, dtype=np.int64), out_vec)
    params = [f"{name}.weight"] + [f"{name}.{p}" for p in ("bias", "gain") if getattr(m, p, None) is not None]
    _slice_per_channel(call, out_vec, params, [])
    an.flop_weights[f"{name}.weight"] = an.flop_weights.get(f"{name}.weight", 0) + int(np.prod(call.result.shape[2:])) * int(call.result.shape[0])
    return _channels_first(out_vec, call.result.ndim)


@register_op(vgg.ConvMlp)
def vgg_conv_mlp(call: OpCall) -> Any:
    """timm's VGG head, kept whole by timm's tracing rules: fc1 -> act -> drop -> fc2 -> act, two convs."""
    m, name = call.module, str(call.node.target)
    for part in (m.act1, m.drop, m.act2):
        if module_handler(part) is not elementwise:
            call.freeze(call.labels, f"ConvMlp applies {type(part).__name__}, not known to act per channel")
            return call.frozen_result()
    hidden = _conv_labels(call, f"{name}.fc1", f"{name}.fc1.weight", f"{name}.fc1.bias", m.fc1.groups,
                          m.fc1.in_channels, m.fc1.out_channels)
    hidden_real = torch.empty((*call.result.shape[:1], m.fc1.out_channels, *call.result.shape[2:]), device="meta")
    inner = OpCall(call.analyzer, call.node, m.fc2, [hidden_real], {}, [hidden], call.result)
    return _conv_labels(inner, f"{name}.fc2", f"{name}.fc2.weight", f"{name}.fc2.bias", m.fc2.groups,
                        m.fc2.in_channels, m.fc2.out_channels)
