"""Importance criteria: one score per prunable unit, all planned and shrunk the same way.

`gate` (learned, the default) comes from `gates.learn_gates`; the others exist to compare
against: `magnitude` (L2 norm of the unit's weights in every tied layer), `bn` (|gamma| of its
BatchNorms, network-slimming style), `taylor` (first-order |dL/dg| at g = 1 over a few batches)
and `random` (the floor any criterion must beat).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeprune.devices import model_device
from edgeprune.errors import InputError
from edgeprune.analysis.graph import ChannelGraph
from edgeprune.importance.gates import split_by_group
from edgeprune.shrink import gated, num_units, unit_gate_index

from edgeprune.importance import CRITERIA


def _accumulate(graph: ChannelGraph, model: nn.Module, include: Callable[[str, nn.Module], bool], power: int) -> torch.Tensor:
    """Sum over sliced tensors of |w|**power per unit, for the parameters `include` selects."""
    tensors = dict(model.named_parameters())
    modules = dict(model.named_modules())
    total = torch.zeros(num_units(graph) + 1)
    for s in graph.slices:
        if s.is_buffer or s.name not in tensors:
            continue
        module_name = s.name.rsplit(".", 1)[0]
        if not include(s.name, modules.get(module_name)):
            continue
        values = tensors[s.name].detach().abs().pow(power)
        per_slice = values.transpose(0, s.axis).reshape(values.shape[s.axis], -1).sum(dim=1)
        total.index_add_(0, unit_gate_index(graph, s.labels), per_slice.float().cpu())
    return total[1:]


def magnitude_scores(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    weights = lambda name, module: name.endswith("weight") and isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
    return _accumulate(graph, model, weights, power=2).sqrt()


def bn_scores(model: nn.Module, graph: ChannelGraph) -> torch.Tensor:
    """|gamma| summed over the unit's BatchNorms; units with no BatchNorm fall back to magnitude."""
    is_bn = lambda name, module: name.endswith("weight") and isinstance(module, nn.modules.batchnorm._BatchNorm)
    scores = _accumulate(graph, model, is_bn, power=1)
    fallback = magnitude_scores(model, graph)
    no_bn = scores == 0
    if bool(no_bn.any()):
        scale = scores[~no_bn].mean() / fallback[~no_bn].mean().clamp_min(1e-12) if bool((~no_bn).any()) else 1.0
        scores[no_bn] = fallback[no_bn] * scale
    return scores


def taylor_scores(model: nn.Module, graph: ChannelGraph, data: Dataset, batches: int = 8, batch_size: int = 64, seed: int = 0) -> torch.Tensor:
    """First-order Taylor importance |dL/dg| of each gate at g = 1 (Molchanov et al. 2019)."""
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    device = model_device(model)
    gates = torch.ones(num_units(graph), device=device, requires_grad=True)
    scores = torch.zeros_like(gates)
    was_training = model.training
    model.eval()
    try:
        with gated(model, graph, gates):
            for i, (images, labels) in enumerate(loader):
                if i >= batches:
                    break
                images, labels = images.to(device), labels.to(device)
                loss = F.cross_entropy(model(images), labels)
                (grad,) = torch.autograd.grad(loss, gates)
                scores += grad.abs()
    finally:
        model.train(was_training)
    return scores.detach().cpu()


def score_units(
    criterion: str,
    model: nn.Module,
    graph: ChannelGraph,
    *,
    gates: torch.Tensor | None = None,
    data: Dataset | None = None,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Scores per group for `criterion`; `gate` needs learned `gates`, `taylor` needs `data`."""
    if criterion not in CRITERIA:
        raise InputError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion == "slimming":
        raise InputError("criterion 'slimming' needs its sparsity-training phase: run it through edgeprune export "
                         "or sweep, or use bn on a model trained with an L1 penalty on its BatchNorm scales")
    if criterion == "gate":
        if gates is None:
            raise InputError("criterion 'gate' needs learned gates: run the gate phase (edgeprune export does)")
        values = gates.abs()
    elif criterion == "magnitude":
        values = magnitude_scores(model, graph)
    elif criterion == "bn":
        values = bn_scores(model, graph)
    elif criterion == "taylor":
        if data is None:
            raise InputError("criterion 'taylor' needs training data")
        values = taylor_scores(model, graph, data, seed=seed)
    else:
        values = torch.from_numpy(np.random.default_rng(seed).random(num_units(graph)))
    return split_by_group(graph, values)
