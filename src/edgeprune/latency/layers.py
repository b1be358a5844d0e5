"""The prunable layers whose latency the table holds, and how their widths follow the kept units.

A layer's latency depends on its input and output channel counts, which may belong to two
different channel groups (or be frozen); both are counted from the kept-unit mask the plan
uses, so a prediction is exact in the widths whatever the architecture.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import nn

from edgeprune.analysis.graph import ChannelGraph, unit_labels


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the runtime sees it: the key of a latency-table point (with the target)."""

    op: str  # "conv2d" or "linear"
    cin: int
    cout: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    spatial: tuple[int, ...] = ()  # input height and width; () for linear
    batch: int = 1
    dtype: str = "fp32"

    @property
    def key(self) -> str:
        """A stable string for the on-disk cache."""
        dims = lambda t: "x".join(str(v) for v in t) or "-"  # noqa: E731
        return (f"{self.op}|cin{self.cin}|cout{self.cout}|k{dims(self.kernel)}|s{dims(self.stride)}"
                f"|p{dims(self.padding)}|d{dims(self.dilation)}|g{self.groups}|hw{dims(self.spatial)}"
                f"|b{self.batch}|{self.dtype}")

    @property
    def grouped(self) -> bool:
        """Grouped and depthwise convs: whole groups go together, so only one axis is free."""
        return self.groups > 1

    def at(self, cin: int, cout: int) -> "LayerSpec":
        """The same layer with other channel counts (a grouped conv keeps its group width)."""
        if self.grouped:
            per_out = self.cout // self.groups
            groups = max(1, cout // per_out)
            return replace(self, cin=groups * (self.cin // self.groups), cout=groups * per_out, groups=groups)
        return replace(self, cin=int(cin), cout=int(cout))

    def flops(self) -> int:
        """Multiply-adds x2 of one forward pass (for reports; the table never uses it)."""
        if self.op == "linear":
            return 2 * self.batch * self.cin * self.cout
        h, w = self.spatial
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return 2 * self.batch * oh * ow * self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class LayerSite:
    """Where a layer sits: its full-size spec and the global unit of every in/out channel (-1: frozen)."""

    module: str
    spec: LayerSpec
    in_units: np.ndarray
    out_units: np.ndarray

    def counts(self, kept_units: np.ndarray) -> tuple[int, int]:
        """(cin, cout) when `kept_units` (bool per global unit) stay."""
        return _count(self.in_units, kept_units), _count(self.out_units, kept_units)

    @property
    def groups_touched(self) -> np.ndarray:
        return np.unique(np.concatenate([self.in_units, self.out_units]))


def _count(units: np.ndarray, kept: np.ndarray) -> int:
    pruneable = units[units >= 0]
    return int(units.size - pruneable.size + kept[pruneable].sum())


def find_layers(model: nn.Module, graph: ChannelGraph, input_shape: Sequence[int], batch: int = 1,
                dtype: str = "fp32") -> list[LayerSite]:
    """Every Conv2d and Linear the forward pass runs, with its input size seen on a real pass.

    Layers the analysis froze completely are still listed (their widths never change, so they
    cost the same in every plan); other ops (pooling, adds, activations) are the fixed cost.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_pre_hook(record(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    slices = {(s.name, s.axis): s.labels for s in graph.slices}
    sites = []
    for name, module in model.named_modules():
        if name not in shapes:
            continue
        if isinstance(module, nn.Conv2d):
            spec = LayerSpec("conv2d", module.in_channels, module.out_channels, tuple(module.kernel_size),
                             tuple(module.stride), _padding(module), tuple(module.dilation), module.groups,
                             tuple(shapes[name][2:]), batch, dtype)
            info = graph.convs.get(name)
            in_units = unit_labels(graph, info.in_labels) if info else None
            out_units = unit_labels(graph, info.out_labels) if info else None
        else:
            spec = LayerSpec("linear", module.in_features, module.out_features, batch=batch, dtype=dtype)
            labels_in, labels_out = slices.get((f"{name}.weight", 1)), slices.get((f"{name}.weight", 0))
            in_units = unit_labels(graph, labels_in) if labels_in is not None else None
            out_units = unit_labels(graph, labels_out) if labels_out is not None else None
        if in_units is None or in_units.size != spec.cin:
            in_units = np.full(spec.cin, -1, dtype=np.int64)
        if out_units is None or out_units.size != spec.cout:
            out_units = np.full(spec.cout, -1, dtype=np.int64)
        sites.append(LayerSite(name, spec, np.asarray(in_units), np.asarray(out_units)))
    return sites


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    if isinstance(conv.padding, str):  # "same"/"valid": the explicit amounts for odd kernels
        if conv.padding == "valid":
            return (0, 0)
        return tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))
    return tuple(conv.padding)
