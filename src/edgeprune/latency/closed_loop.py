"""Plan, measure on the target, correct, plan again: until the measured latency ratio is the request.

A table predicts each layer alone; in the whole model, fusion, caches and threading make the
saving somewhat different. After each round the dense and pruned models are measured side by
side (interleaved) and the prediction's scale is corrected by what was measured: the share of
latency the plan removed, measured over predicted. A few rounds at most; every round is kept.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

from edgeprune.errors import InputError

DEFAULT_TOLERANCE = 0.03  # percentage points of the dense latency, as a fraction
DEFAULT_MAX_ROUNDS = 3
SCALE_BOUNDS = (0.05, 20.0)

PlanT = TypeVar("PlanT")


@dataclass(frozen=True)
class Measurement:
    """Pruned latency over dense latency, measured in one run with the two interleaved."""

    ratio: float
    ratio_ci95: tuple[float, float]
    dense_ms: float
    pruned_ms: float


@dataclass(frozen=True)
class LoopRound:
    scale: float  # the prediction's correction this round planned with
    predicted_ratio: float
    measured: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "predicted_ratio": self.predicted_ratio, **asdict(self.measured),
                "ratio_ci95": list(self.measured.ratio_ci95)}


@dataclass(frozen=True)
class LoopResult(Generic[PlanT]):
    """The plan kept (the round closest to the request) and every round that led to it."""

    requested: float
    tolerance: float
    plan: PlanT
    rounds: tuple[LoopRound, ...]
    chosen_round: int
    calibration: Optional[LoopRound] = None

    @property
    def final(self) -> LoopRound:
        return self.rounds[self.chosen_round]

    @property
    def met(self) -> bool:
        return abs(self.final.measured.ratio - self.requested) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        final = self.final
        return {"requested_ratio": self.requested, "tolerance": self.tolerance,
                "predicted_ratio": final.predicted_ratio, "measured_ratio": final.measured.ratio,
                "measured_ratio_ci95": list(final.measured.ratio_ci95), "dense_ms": final.measured.dense_ms,
                "pruned_ms": final.measured.pruned_ms, "met": self.met, "rounds": len(self.rounds),
                "chosen_round": self.chosen_round + 1, "history": [r.to_dict() for r in self.rounds],
                "calibration": self.calibration.to_dict() if self.calibration else None}


def closed_loop(requested: float, plan_at: Callable[[float], tuple[PlanT, float]],
                measure: Callable[[PlanT], Measurement], *, tolerance: float = DEFAULT_TOLERANCE,
                max_rounds: int = DEFAULT_MAX_ROUNDS, initial_scale: float = 1.0,
                on_round: Optional[Callable[[LoopRound], None]] = None) -> LoopResult[PlanT]:
    """`plan_at(scale)` plans with the prediction's changes multiplied by `scale` and returns
    (plan, predicted ratio); `measure(plan)` measures it against dense on the target.
    `initial_scale` is a correction already learned (see `calibrate`)."""
    if not 0 < requested <= 1:
        raise InputError(f"the requested latency ratio must be in (0, 1], got {requested}")
    if max_rounds < 1:
        raise InputError(f"max_rounds must be >= 1, got {max_rounds}")
    scale = float(initial_scale)
    plans, rounds = [], []
    for _ in range(max_rounds):
        plan, predicted = plan_at(scale)
        measured = measure(plan)
        round_ = LoopRound(scale, float(predicted), measured)
        plans.append(plan)
        rounds.append(round_)
        if on_round is not None:
            on_round(round_)
        if abs(measured.ratio - requested) <= tolerance:
            break
        scale = corrected_scale(scale, predicted, measured.ratio)
    chosen = min(range(len(rounds)), key=lambda i: abs(rounds[i].measured.ratio - requested))
    return LoopResult(requested, tolerance, plans[chosen], tuple(rounds), chosen)


def calibrate(plan_uniform: Callable[[], tuple[PlanT, float]], measure: Callable[[PlanT], Measurement]
              ) -> tuple[float, LoopRound]:
    """The first correction, from one plan that is not a candidate (every group cut alike): a
    table measured layer by layer can be far off the whole model on a loaded machine, and a
    planner told the wrong scale can aim at a budget it cannot reach."""
    plan, predicted = plan_uniform()
    measured = measure(plan)
    return corrected_scale(1.0, predicted, measured.ratio), LoopRound(1.0, float(predicted), measured)


def corrected_scale(scale: float, predicted_ratio: float, measured_ratio: float) -> float:
    """The scale under which the prediction would have matched the measurement: the removed share
    of latency, measured over predicted, applied to the scale the round planned with."""
    predicted_saving = 1.0 - predicted_ratio
    measured_saving = 1.0 - measured_ratio
    if predicted_saving <= 1e-6:
        return scale
    new = scale * max(measured_saving, 1e-3) / predicted_saving
    return float(min(max(new, SCALE_BOUNDS[0]), SCALE_BOUNDS[1]))
