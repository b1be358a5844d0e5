"""Predicted whole-model latency of a plan, from the layer tables.

predicted(kept) = dense_ms + scale * sum over layers of (table(cin, cout) - table(full)): the
measured dense latency anchors the prediction, so a per-call overhead or an op outside the
tables cancels out, and only the change each layer makes is read from its table. `scale` is
the correction the closed loop learns from what the target measured (1 before any measurement).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from edgeprune.latency.layers import LayerSite
from edgeprune.latency.table import LayerTable


@dataclass(frozen=True)
class LatencyPredictor:
    """Callable on a kept-unit mask (bool per global unit), returning predicted ms."""

    sites: tuple[LayerSite, ...]
    tables: tuple[LayerTable, ...]
    dense_ms: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.sites) != len(self.tables):
            raise ValueError(f"{len(self.sites)} layers but {len(self.tables)} tables")
        object.__setattr__(self, "_full", np.array([t.full_ms for t in self.tables]))

    @classmethod
    def from_tables(cls, sites: Sequence[LayerSite], tables: Sequence[LayerTable], dense_ms: float) -> "LatencyPredictor":
        return cls(tuple(sites), tuple(tables), float(dense_ms))

    def layer_ms(self, kept_units: np.ndarray) -> np.ndarray:
        """Each layer's table latency at the widths `kept_units` leaves it."""
        return np.array([t.latency_ms(*s.counts(kept_units)) for s, t in zip(self.sites, self.tables)])

    def __call__(self, kept_units: np.ndarray) -> float:
        return self.dense_ms + self.scale * float((self.layer_ms(kept_units) - self._full).sum())

    def with_scale(self, scale: float) -> "LatencyPredictor":
        return replace(self, scale=float(scale))
