"""Plan, measure on the target, correct, plan again: until the measured latency ratio is the request.

A table predicts each layer alone; in the whole model, fusion, caches, threading and a loaded
machine make the saving differ. After each round the dense and pruned models are measured side
by side (interleaved), and the table is corrected by what was measured: the planner is asked
for the ratio that, on the measured relation between what the table was asked and what the target
ran (a line fitted to every round so far, each weighted by how tightly it was measured; an
offset before there are two; once rounds lie on both sides of the request, interpolation between
the nearest two, so a cliff in the kernels' latency is closed in on rather than jumped over),
gives the request. A few rounds at most; every round is kept.

A round *confirms* the request when its whole 95% interval lies within the tolerance band, and the
loop stops there; a median inside the band with an interval reaching outside it is met but not
confirmed, and the loop tries to tighten it while rounds remain. The round kept is the confirmed
one closest to the request, else the closest median (the interval rule is applied where the
verdict is made, `report.rules.budget_met`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

import numpy as np

from edgeprune.errors import InputError

DEFAULT_TOLERANCE = 0.03  # percentage points of the dense latency, as a fraction
DEFAULT_MAX_ROUNDS = 5
ASK_MIN = 0.05  # the least latency ratio the table is ever asked for
MAX_STEP = 0.3  # the most one round moves what the table is asked for

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
    asked_ratio: float  # what the table was asked for this round (the correction the loop learned)
    predicted_ratio: float
    measured: Measurement

    def to_dict(self) -> dict[str, Any]:
        return {"asked_ratio": self.asked_ratio, "predicted_ratio": self.predicted_ratio, **asdict(self.measured),
                "ratio_ci95": list(self.measured.ratio_ci95)}


@dataclass(frozen=True)
class LoopResult(Generic[PlanT]):
    """The plan kept (a round whose 95% interval lies within the tolerance, else the round whose
    median is closest to the request) and every round that led to it."""

    requested: float
    tolerance: float
    plan: PlanT
    rounds: tuple[LoopRound, ...]
    chosen_round: int

    @property
    def final(self) -> LoopRound:
        return self.rounds[self.chosen_round]

    @property
    def met(self) -> bool:
        return abs(self.final.measured.ratio - self.requested) <= self.tolerance

    @property
    def confirmed(self) -> bool:
        return confirms(self.final.measured, self.requested, self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        final = self.final
        return {"requested_ratio": self.requested, "tolerance": self.tolerance,
                "predicted_ratio": final.predicted_ratio, "measured_ratio": final.measured.ratio,
                "measured_ratio_ci95": list(final.measured.ratio_ci95), "dense_ms": final.measured.dense_ms,
                "pruned_ms": final.measured.pruned_ms, "met": self.met, "confirmed": self.confirmed,
                "rounds": len(self.rounds),
                "chosen_round": self.chosen_round + 1, "history": [r.to_dict() for r in self.rounds]}


def closed_loop(requested: float, plan_at: Callable[[float], tuple[PlanT, float]],
                measure: Callable[[PlanT], Measurement], *, tolerance: float = DEFAULT_TOLERANCE,
                max_rounds: int = DEFAULT_MAX_ROUNDS, on_round: Optional[Callable[[LoopRound], None]] = None
                ) -> LoopResult[PlanT]:
    """`plan_at(asked)` plans to the table-predicted ratio `asked` and returns (plan, predicted
    ratio); `measure(plan)` measures it against dense on the target. `LoopRound.asked_ratio`
    records what the table was asked for in that round."""
    if not 0 < requested <= 1:
        raise InputError(f"the requested latency ratio must be in (0, 1], got {requested}")
    if max_rounds < 1:
        raise InputError(f"max_rounds must be >= 1, got {max_rounds}")
    asked = float(requested)
    plans, rounds = [], []
    for _ in range(max_rounds):
        plan, predicted = plan_at(asked)
        measured = measure(plan)
        round_ = LoopRound(asked, float(predicted), measured)
        plans.append(plan)
        rounds.append(round_)
        if on_round is not None:
            on_round(round_)
        if confirms(measured, requested, tolerance):
            break
        asked = next_request(requested, [(r.asked_ratio, r.measured.ratio) for r in rounds],
                             [r.measured.ratio_ci95 for r in rounds])
    chosen = min(range(len(rounds)), key=lambda i: (not confirms(rounds[i].measured, requested, tolerance),
                                                     abs(rounds[i].measured.ratio - requested)))
    return LoopResult(requested, tolerance, plans[chosen], tuple(rounds), chosen)


def confirms(measured: Measurement, requested: float, tolerance: float) -> bool:
    """The whole 95% interval of the measured ratio lies within `requested` ± `tolerance`."""
    low, high = measured.ratio_ci95
    return requested - tolerance <= low and high <= requested + tolerance


def next_request(requested: float, history: list[tuple[float, float]],
                 intervals: Optional[list[tuple[float, float]]] = None) -> float:
    """What to ask the table for next, from (asked, measured) of the rounds so far and each
    measurement's 95% interval.

    Rounds measured wholly on both sides of the request: interpolate between the nearest two (a
    latency that steps between asks is closed in on). Otherwise, one round or rounds all asked the
    same: shift by the (weighted) mean miss, the table's error taken as an offset; else a straight
    line measured = a + b * asked, fitted by weighted least squares over every round (weight
    1 / interval width^2, so one noisy round cannot bend it), solved for the request when its
    slope is plausible (0.3 to 3), else the offset again, and at most MAX_STEP from the best
    round's ask. The answer stays within [ASK_MIN, 1].
    """
    asked = np.array([h[0] for h in history], dtype=float)
    measured = np.array([h[1] for h in history], dtype=float)
    if intervals is None:
        intervals = [(m, m) for m in measured]
    low = np.array([i[0] for i in intervals], dtype=float)
    high = np.array([i[1] for i in intervals], dtype=float)
    weight = 1.0 / np.maximum(high - low, 1e-3) ** 2
    bracket = _bracket(asked, measured, low, high, requested)
    if bracket is not None:
        (a0, m0), (a1, m1) = bracket
        wanted = float(a0 + (requested - m0) * (a1 - a0) / (m1 - m0))
        return float(min(1.0, max(ASK_MIN, wanted)))
    best = int(np.argmin(np.abs(measured - requested)))
    wanted = float(requested - np.average(measured - asked, weights=weight))
    if np.ptp(asked) > 1e-6:
        slope, intercept = np.polyfit(asked, measured, 1, w=np.sqrt(weight))
        if 0.3 <= slope <= 3.0:
            wanted = float((requested - intercept) / slope)
    wanted = min(asked[best] + MAX_STEP, max(asked[best] - MAX_STEP, wanted))
    return float(min(1.0, max(ASK_MIN, wanted)))


def _bracket(asked: np.ndarray, measured: np.ndarray, low: np.ndarray, high: np.ndarray, requested: float):
    """The two rounds nearest in what they asked whose 95% intervals lie wholly under and wholly
    over the request (a round whose interval straddles it does not bracket anything), if they are
    ordered as a latency that grows with the ask; None otherwise."""
    under = [(a, m) for a, m, h in zip(asked, measured, high) if h < requested]
    over = [(a, m) for a, m, lo in zip(asked, measured, low) if lo > requested]
    if not under or not over:
        return None
    below, above = max(under), min(over)
    return (below, above) if below[0] < above[0] else None
