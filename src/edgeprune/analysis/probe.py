"""Find channel groups whose removal breaks the model's own forward (a hard-coded channel count).

Labels follow the traced graph, but the shrunk model runs its own `forward`, which may read a
width it was built with (``torch.split(x, self.width)``, ``x.view(b, 64, -1)``). To find those
during analysis rather than at the shrink check, a meta-device copy is shrunk by one unit in every
group and run; when it fails, a binary search over the groups names each one that breaks it. A
clean model costs one shape-only forward.
"""
from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeprune.analysis.channels import FROZEN, ChannelGraph
from edgeprune.analysis.tracing import first_line

_MAX_FINDINGS = 256


@dataclass(frozen=True)
class HardcodedWidth:
    """A group that cannot shrink: its labels, and where the model's forward failed."""

    group: int
    labels: np.ndarray
    where: str
    op: str
    reason: str


def find_hardcoded_widths(model: nn.Module, graph: ChannelGraph, example: torch.Tensor, on_meta: bool) -> list[HardcodedWidth]:
    from edgeprune.analysis.graph import meta_copy
    from edgeprune.shrink import shrink_classes

    subject = model
    x = example.to("meta") if on_meta else example
    drop = _units_to_drop(graph)

    def failure(group_ids: list[int], fresh: bool = True) -> tuple[BaseException, dict[int, str]] | None:
        kept = np.ones(len(graph.class_of_label), dtype=bool)
        for g in group_ids:
            kept[drop[g]] = False
        if x.device.type == "meta":  # a meta copy is cheap and throwaway: shrink it in place
            shrunk = _fast_batch_norms(shrink_classes(meta_copy(subject), graph, kept, in_place=True))
        else:
            shrunk = shrink_classes(subject, graph, kept)
        try:
            with torch.no_grad():
                shrunk.eval()(x)
        except Exception as error:  # any failure of the user's forward is what is looked for
            return error, {id(m): name for name, m in shrunk.named_modules()}
        return None

    rest = [g for g in range(len(graph.groups)) if g in drop]
    if not rest or failure(rest) is None:
        return []  # one shape-only forward: the common case
    if failure([]) is not None:  # the unpruned model does not run like this
        if not on_meta:
            return []
        x = example  # the forward needs real values
        if failure([]) is not None:
            return []

    findings: list[HardcodedWidth] = []
    while rest and len(findings) < _MAX_FINDINGS:
        error = failure(rest)
        if error is None:
            break
        lo, hi = 1, len(rest)  # smallest prefix of `rest` that fails
        while lo < hi:
            mid = (lo + hi) // 2
            if failure(rest[:mid]) is not None:
                hi = mid
            else:
                lo = mid + 1
        culprit = rest[lo - 1]
        error = failure([culprit]) or error
        where, op = _failing_module(error[0], error[1], subject)
        classes = np.asarray(graph.groups[culprit].units)
        labels = np.flatnonzero(np.isin(graph.class_of_label, classes))
        findings.append(HardcodedWidth(
            culprit, labels[labels != FROZEN], where, op,
            f"removing channels of this group breaks the model's own forward ({first_line(error[0])}): "
            "it hard-codes the channel count",
        ))
        rest = rest[lo:]
    return findings


def _fast_batch_norms(model: nn.Module) -> nn.Module:
    """Replace torch's own BatchNorm forwards by a width check: on the meta device batch_norm runs
    through slow decompositions (most of a ResNet's probe time) and only its widths matter here."""
    for module in model.modules():
        if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            module.forward = functools.partial(_checked_width, module)
    return model


def _checked_width(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    expected = module.running_mean if module.running_mean is not None else module.weight
    if expected is not None and x.shape[1] != expected.shape[0]:
        raise RuntimeError(f"running_mean should contain {x.shape[1]} elements not {expected.shape[0]}")
    return x


def _units_to_drop(graph: ChannelGraph) -> dict[int, list[int]]:
    """Per group, classes of units to remove: one from every sliced axis that can lose one.

    A group can span several layers (a concatenation, Res2Net's pieces), and the hard-coded width
    may sit behind any of them, so every layer of every group loses a unit, never its last.
    """
    offsets = np.cumsum([0] + [g.size for g in graph.groups])
    group_of_unit = np.repeat(np.arange(len(graph.groups)), [g.size for g in graph.groups])
    axes: dict[bytes, np.ndarray] = {}
    for s in graph.slices:
        units = np.unique(graph.unit_of_class[graph.class_of_label[s.labels]])
        units = units[units >= 0]
        if units.size >= 2:
            axes.setdefault(units.tobytes(), units)
    protected = {int(units[0]) for units in axes.values()}  # each axis keeps its first unit
    dropped: set[int] = set()
    for units in axes.values():
        if dropped.intersection(units.tolist()):
            continue
        free = [int(u) for u in units[::-1] if int(u) not in protected]
        if free:
            dropped.add(free[0])
    drop: dict[int, list[int]] = {}
    for unit in sorted(dropped):
        g = int(group_of_unit[unit])
        drop.setdefault(g, []).append(graph.groups[g].units[unit - int(offsets[g])])
    return drop


def _failing_module(error: BaseException, paths: dict[int, str], root: nn.Module) -> tuple[str, str]:
    """The innermost module of `root` whose code was running when `error` was raised."""
    where, op = "", type(root).__name__
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in paths:
            where, op = paths[id(owner)], type(owner).__name__
    return where or "(model)", op
