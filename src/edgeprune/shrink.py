"""Physically smaller layers, and the check that they compute what the gated model computes.

The shrunk model is a deep copy of the original with every prunable parameter sliced along its
channel axes, so its own `forward` runs unchanged (shapes are derived from tensors at run time).
Gates of kept channels are folded into the weights of the layers that consume them, which makes
the shrunk model equal to the gated model with dropped gates at zero, for any gate values.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from edgeprune.errors import CheckFailedError
from edgeprune.analysis.graph import ChannelGraph, unit_labels
from edgeprune.outputs import output_tensors
from edgeprune.plan import PrunePlan

SHRINK_TOLERANCE = 1e-5


def unit_gate_index(graph: ChannelGraph, labels: np.ndarray) -> torch.Tensor:
    """Index of each label's gate in `cat([1], gates)`: 0 for frozen channels, 1 + unit otherwise."""
    return torch.from_numpy(unit_labels(graph, labels) + 1)


def num_units(graph: ChannelGraph) -> int:
    return sum(g.size for g in graph.groups)


@contextmanager
def gated(model: nn.Module, graph: ChannelGraph, gates: torch.Tensor) -> Iterator[nn.Module]:
    """Run `model` with every channel-mixing consumer's input multiplied by its gates.

    `gates` holds one value per unit (all groups, in order). A zero gate removes that unit's
    channels from every consumer: exactly what the shrunk model computes.
    """
    modules = dict(model.named_modules())
    handles = []
    for consumer in graph.consumers:
        index = unit_gate_index(graph, consumer.labels)
        if not bool((index > 0).any()):
            continue
        axis = 1 if consumer.kind == "conv" else -1

        def hook(module, args, index=index, axis=axis):
            full = torch.cat([gates.new_ones(1), gates])
            scale = full[index.to(gates.device)]
            x = args[0]
            shape = [1] * x.ndim
            shape[axis] = scale.numel()
            return (x * scale.reshape(shape).to(x.dtype),) + tuple(args[1:])

        handles.append(modules[consumer.module].register_forward_pre_hook(hook))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def plan_gates(graph: ChannelGraph, plan: PrunePlan, gates: torch.Tensor | None = None) -> torch.Tensor:
    """Gate values of the pruned model: the given gates (or ones) with dropped units at zero."""
    values = torch.ones(num_units(graph)) if gates is None else gates.detach().clone().float()
    mask = torch.zeros_like(values, dtype=torch.bool)
    offset = 0
    for group, gp in zip(graph.groups, plan.groups):
        mask[[offset + u for u in gp.kept_units]] = True
        offset += group.size
    return torch.where(mask, values, torch.zeros_like(values))


def shrink(model: nn.Module, graph: ChannelGraph, plan: PrunePlan, gates: torch.Tensor | None = None) -> nn.Module:
    """A new model with physically smaller layers (the original is left untouched)."""
    full_gates = None if gates is None else torch.cat([torch.ones(1), plan_gates(graph, plan, gates)])
    return shrink_classes(model, graph, plan.kept_mask(graph), full_gates)


def shrink_classes(
    model: nn.Module, graph: ChannelGraph, kept_class: np.ndarray, full_gates: torch.Tensor | None = None,
    in_place: bool = False,
) -> nn.Module:
    """`shrink` for a boolean per class id (True: kept); `full_gates` as `cat([1], gates)`.
    `in_place` shrinks `model` itself (for a throwaway copy, as the analysis' probe uses)."""
    keep_label = kept_class[graph.class_of_label]
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        new_values: dict[str, torch.Tensor] = {}
        for s in graph.slices:
            index = torch.from_numpy(np.flatnonzero(keep_label[s.labels])).to(tensors[s.name].device)
            current = new_values.get(s.name, tensors[s.name])
            new_values[s.name] = _take(current, s.axis, index)
        if full_gates is not None:
            _fold_gates(graph, full_gates, keep_label, new_values)
    if in_place:
        for name, value in new_values.items():
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            original = tensors[name]
            if isinstance(original, nn.Parameter):
                setattr(owner, attr, nn.Parameter(value, requires_grad=original.requires_grad))
            else:
                owner._buffers[attr] = value
        _update_module_attributes(model, graph, keep_label)
        return model
    # Deep-copy everything else; the sliced tensors take the place of the originals.
    memo: dict[int, object] = {}
    for name, value in new_values.items():
        original = tensors[name]
        memo[id(original)] = (
            nn.Parameter(value.contiguous(), requires_grad=original.requires_grad)
            if isinstance(original, nn.Parameter) else value.contiguous()
        )
    shrunk = copy.deepcopy(model, memo)
    _update_module_attributes(shrunk, graph, keep_label)
    return shrunk


def _take(tensor: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """`tensor.index_select(axis, index)`. Along axis 0 of a conv weight torch 2.x picks a
    row-by-row CPU kernel ~20x slower than selecting along axis 1 of the same data with a leading
    unit axis, so that is what is done there."""
    if axis == 0 and tensor.ndim > 2:
        return tensor.unsqueeze(0).index_select(1, index).squeeze(0)
    return tensor.index_select(axis, index)


def _fold_gates(
    graph: ChannelGraph, full_gates: torch.Tensor, keep_label: np.ndarray,
    new_values: dict[str, torch.Tensor],
) -> None:
    """Multiply each consumer's kept input weights by their gates (W diag(g) x = W (g * x))."""
    for consumer in graph.consumers:
        kept = keep_label[consumer.labels]
        scale = full_gates[unit_gate_index(graph, consumer.labels[kept])]
        name = f"{consumer.module}.weight"
        weight = new_values[name]
        if consumer.kind == "linear":
            new_values[name] = weight * scale.reshape(1, -1).to(weight.dtype)
            continue
        in_per = weight.shape[1]
        groups = scale.numel() // in_per  # whole conv groups are kept or dropped together
        out_per = weight.shape[0] // max(groups, 1)
        per_output = scale.reshape(groups, 1, in_per).expand(groups, out_per, in_per).reshape(weight.shape[0], in_per)
        new_values[name] = weight * per_output.reshape(weight.shape[0], in_per, *([1] * (weight.ndim - 2))).to(weight.dtype)


def _update_module_attributes(model: nn.Module, graph: ChannelGraph, keep_label: np.ndarray) -> None:
    """Keep `in_channels`, `num_features`... consistent with the sliced tensors."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and name in graph.convs:
            info = graph.convs[name]
            out_kept = int(keep_label[info.out_labels].sum())
            in_kept = int(keep_label[info.in_labels].sum())
            if info.groups > 1:
                out_per = module.out_channels // module.groups
                module.groups = out_kept // out_per
            module.in_channels, module.out_channels = in_kept, out_kept
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.GroupNorm) and name in graph.norm_groups:
            labels, per_group = graph.norm_groups[name]
            module.num_channels = int(keep_label[labels].sum())
            module.num_groups = module.num_channels // per_group
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)):
            if module.weight is not None:
                module.num_features = module.weight.shape[0]
            elif module.running_mean is not None:
                module.num_features = module.running_mean.shape[0]


def check_shrink(
    model: nn.Module,
    shrunk: nn.Module,
    graph: ChannelGraph,
    plan: PrunePlan,
    example: torch.Tensor,
    gates: torch.Tensor | None = None,
    tolerance: float = SHRINK_TOLERANCE,
) -> float:
    """Max |shrunk(x) - gated(x)| in eval mode; raises CheckFailedError above `tolerance`."""
    model_mode, shrunk_mode = model.training, shrunk.training
    model.eval()
    shrunk.eval()
    try:
        with torch.no_grad(), gated(model, graph, plan_gates(graph, plan, gates)):
            expected = model(example)
        with torch.no_grad():
            try:
                actual = shrunk(example)
            except RuntimeError as error:
                raise CheckFailedError(
                    f"the shrunk model does not run ({str(error).splitlines()[0]}); its forward probably "
                    "hard-codes a channel count: pass --ignore for that module"
                ) from error
    finally:
        model.train(model_mode)
        shrunk.train(shrunk_mode)
    expected_leaves, actual_leaves = output_tensors(expected), output_tensors(actual)
    if len(expected_leaves) != len(actual_leaves) or any(
        e.shape != a.shape for e, a in zip(expected_leaves, actual_leaves)
    ):
        raise CheckFailedError(
            "the shrunk model's outputs differ in number or shape from the original's; this is a bug "
            "in the channel analysis: please report it with `edgeprune inspect` output"
        )
    diff = max((float((e - a).abs().max()) for e, a in zip(expected_leaves, actual_leaves) if e.numel()), default=0.0)
    scale = max([1.0] + [float(e.abs().max()) for e in expected_leaves if e.numel()])
    if not diff <= tolerance * scale:
        raise CheckFailedError(
            f"shrunk model differs from the gated model by {diff:.3g} (tolerance {tolerance:g}); "
            "this is a bug in the channel analysis: please report it with `edgeprune inspect` output"
        )
    return diff

