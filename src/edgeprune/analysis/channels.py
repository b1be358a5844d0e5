"""What the channel analysis finds: groups of channels removed together, and how every
parameter is sliced. Plain data, shared by planning, gating and shrinking (see graph.py)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np



FROZEN = 0  # the label every unprunable channel is tied to


@dataclass(frozen=True)
class FrozenReason:
    """Why some channels stay unpruned: where, which op, and the reason in words."""

    where: str
    op: str
    reason: str
    channels: int

    def to_dict(self) -> dict:
        return {"where": self.where, "op": self.op, "reason": self.reason, "channels": self.channels}


@dataclass(frozen=True)
class FrozenShare:
    """Parameters that no plan can remove, attributed to the freeze that caused it."""

    where: str
    op: str
    reason: str
    params: int

    def to_dict(self) -> dict:
        return {"where": self.where, "op": self.op, "reason": self.reason, "params": self.params}


@dataclass(frozen=True)
class ParamSlice:
    """Parameter (or buffer) `name` is sliced along `axis`; `labels[i]` names slice i's channel."""

    name: str
    axis: int
    labels: np.ndarray
    is_buffer: bool = False


@dataclass(frozen=True)
class Consumer:
    """A module that mixes channels; the gated model multiplies its input by the gates."""

    module: str
    kind: str  # "conv" (channel axis 1) or "linear" (last axis)
    labels: np.ndarray  # label of each input channel / feature


@dataclass(frozen=True)
class ConvInfo:
    """What shrink needs to rebuild a conv: its groups and the labels of its in/out channels."""

    module: str
    groups: int
    in_labels: np.ndarray
    out_labels: np.ndarray


@dataclass
class ChannelGroup:
    """Channels removed together. `units[u]` is the class id of unit u (see `ChannelGraph.unit_of`)."""

    id: int
    name: str
    units: list[int]
    modules: list[str]
    channels: int  # width of the group's first producer, for display and rounding
    unit_width: int  # channels per unit in that producer (1 except for grouped convs)

    @property
    def size(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "units": self.size,
            "channels": self.channels,
            "unit_width": self.unit_width,
            "modules": list(self.modules),
        }


@dataclass
class ChannelGraph:
    """The analysis result: groups, frozen channels, and how every parameter is sliced."""

    groups: list[ChannelGroup]
    frozen: list[FrozenReason]
    slices: list[ParamSlice]
    consumers: list[Consumer]
    convs: dict[str, ConvInfo]
    class_of_label: np.ndarray  # label -> class id (FROZEN class is 0)
    unit_index: dict[int, tuple[int, int]]  # class id -> (group index, unit index)
    flop_weights: dict[str, int]  # parameter name -> output positions per weight element (x2 = FLOPs)
    traced_params: list[str]  # parameters the traced forward uses
    unused_modules: list[str]
    input_shape: tuple[int, ...]
    frozen_param_count: int = 0
    notes: list[str] = field(default_factory=list)
    norm_groups: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # GroupNorm -> (labels, per group)
    opaque_modules: dict[str, str] = field(default_factory=dict)  # module path -> why it is kept whole
    frozen_params: list[FrozenShare] = field(default_factory=list)  # largest first
    params_total: int = 0  # parameters the traced forward uses

    @property
    def frozen_fraction(self) -> float:
        """Share of the traced parameters that sits in frozen channels (no plan can remove it)."""
        total = self.params_total
        return sum(f.params for f in self.frozen_params) / total if total else 0.0

    @functools.cached_property
    def unit_of_class(self) -> np.ndarray:
        """Global unit number (groups in order) of every class id, -1 for frozen classes."""
        offsets = np.cumsum([0] + [g.size for g in self.groups])
        out = np.full(len(self.class_of_label), -1, dtype=np.int64)
        for cls, (g, u) in self.unit_index.items():
            out[cls] = offsets[g] + u
        return out

    def to_dict(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "groups": [g.to_dict() for g in self.groups],
            "frozen": [f.to_dict() for f in self.frozen],
            "frozen_fraction": round(self.frozen_fraction, 6),
            "frozen_params": [f.to_dict() for f in self.frozen_params],
            "opaque_modules": dict(self.opaque_modules),
            "unused_modules": list(self.unused_modules),
            "notes": list(self.notes),
        }


def unit_labels(graph: ChannelGraph, labels: np.ndarray) -> np.ndarray:
    """For each label, its (group, unit) flattened as a global unit number, or -1 when frozen."""
    return graph.unit_of_class[graph.class_of_label[labels]]
