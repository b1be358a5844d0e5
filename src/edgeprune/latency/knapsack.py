"""Choose kept channels that keep the most importance for the latency spent.

As in HALP's latency-saliency knapsack: every group picks one kept count (a multiple-choice
knapsack) maximising the importance kept, subject to the predicted latency fitting the budget.
A layer's latency depends on two groups (its input and output widths), so the cost of a group's
choice is linearised at the current plan (half of a layer's change to each group it joins,
exact at that plan), the knapsack is solved exactly (scipy's MILP, HiGHS), and this repeats from
the new plan a few times. A greedy pass on the exact prediction then removes steps (least
importance per millisecond saved) until the budget is met and adds back steps that still fit,
first those the table says cost nothing (snapping counts to where the latency actually drops).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Sequence

import numpy as np
from scipy import optimize, sparse

from edgeprune.latency.predict import LatencyPredictor
from edgeprune.plan import LatencyModel, PlanProblem

LINEARISATION_ROUNDS = 4
#: A move whose predicted cost is below this share of the dense latency is free.
FREE_SHARE = 1e-6


def solve_mckp(values: Sequence[np.ndarray], costs: Sequence[np.ndarray], budget: float,
               time_limit_s: float = 20.0) -> list[int]:
    """Index of the chosen option of every group: max sum of values with sum of costs <= budget.

    Exact (a 0/1 integer program over one-hot choices). When even the cheapest options exceed
    the budget, the cheapest option of every group is returned.
    """
    sizes = [len(v) for v in values]
    offsets = np.cumsum([0] + sizes)
    n = int(offsets[-1])
    c = -np.concatenate([np.asarray(v, dtype=float) for v in values])
    cost = np.concatenate([np.asarray(v, dtype=float) for v in costs])
    cheapest = [int(np.argmin(k)) for k in costs]
    if sum(float(k[i]) for k, i in zip(costs, cheapest)) > budget:
        return cheapest
    rows = np.repeat(np.arange(len(sizes)), sizes)
    one_hot = sparse.csr_matrix((np.ones(n), (rows, np.arange(n))), shape=(len(sizes), n))
    constraints = [optimize.LinearConstraint(one_hot, 1, 1),
                   optimize.LinearConstraint(sparse.csr_matrix(cost.reshape(1, -1)), -np.inf, budget)]
    with _quiet_stdout():  # HiGHS' MIP solver writes debug lines to the C stdout, whatever `disp` says
        result = optimize.milp(c, constraints=constraints, integrality=np.ones(n), bounds=optimize.Bounds(0, 1),
                               options={"time_limit": time_limit_s, "mip_rel_gap": 1e-6})
    if result.x is None:
        return cheapest
    x = result.x.reshape(-1)
    return [int(np.argmax(x[offsets[g]:offsets[g + 1]])) for g in range(len(sizes))]


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration (the library never prints)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured stdout (pytest, click's runner): nothing to guard
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def plan_latency(problem: PlanProblem, latency: LatencyModel, keep: float) -> list[int]:
    """Kept units per group so that `latency(plan) <= keep * latency(dense)` with the most
    importance kept (see the module docstring). Usable as `plan.make_plan`'s `latency_planner`."""
    counts = [int(a[-1]) for a in problem.allowed]
    dense_ms = latency(problem.kept_for(counts))
    budget_ms = keep * dense_ms
    if isinstance(latency, LatencyPredictor):
        for _ in range(LINEARISATION_ROUNDS):
            values, costs = linearised_costs(problem, latency, counts)
            choice = solve_mckp(values, costs, (keep - 1.0) * dense_ms)
            new = [int(a[i]) for a, i in zip(problem.allowed, choice)]
            if new == counts:
                break
            counts = new
    return _repair(problem, latency, counts, budget_ms, dense_ms)


def linearised_costs(problem: PlanProblem, predictor: LatencyPredictor, counts: list[int]
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per group and allowed count: (importance kept, predicted change in ms) with every other
    group at `counts`; each layer's change is split evenly between the groups it joins."""
    offsets = problem.unit_offsets
    kept = problem.kept_for(counts)
    rank = np.empty(problem.cost.num_units, dtype=np.int64)  # position of each unit in its group's order
    for g, order in enumerate(problem.order_in_group):
        rank[offsets[g] + order] = np.arange(order.size)
    group_of = lambda units: np.searchsorted(offsets, units, side="right") - 1  # noqa: E731
    touching: dict[int, list[tuple[int, float]]] = {}
    for i, site in enumerate(predictor.sites):
        units = np.concatenate([site.in_units, site.out_units])
        groups = np.unique(group_of(units[units >= 0]))
        for g in groups:
            touching.setdefault(int(g), []).append((i, 1.0 / groups.size))
    values, costs = [], []
    for g, allowed in enumerate(problem.allowed):
        values.append(np.array([problem.values_in_order[g][: int(k)].sum() for k in allowed]))
        delta = np.zeros(allowed.size)
        for i, weight in touching.get(g, []):
            site, table = predictor.sites[i], predictor.tables[i]
            axes = []
            for units in (site.in_units, site.out_units):
                mine = (units >= 0) & (group_of(np.maximum(units, 0)) == g)
                others = int((~mine).sum() - ((units >= 0) & ~mine & ~kept[np.maximum(units, 0)]).sum())
                ranks = np.sort(rank[units[mine]])
                axes.append(others + np.searchsorted(ranks, allowed, side="left"))
            ms = np.array([table.latency_ms(a, b) for a, b in zip(*axes)])
            delta += weight * predictor.scale * (ms - table.full_ms)
        costs.append(delta)
    return values, costs


def _repair(problem: PlanProblem, latency: LatencyModel, counts: list[int], budget_ms: float,
            dense_ms: float, max_jump: int = 3) -> list[int]:
    """Greedy on the exact prediction: remove steps until the budget holds, then add what fits."""
    counts = list(counts)
    index = [int(np.searchsorted(a, k)) for a, k in zip(problem.allowed, counts)]

    def evaluate(trial_index):
        trial = [int(a[j]) for a, j in zip(problem.allowed, trial_index)]
        return latency(problem.kept_for(trial)), problem.importance(trial)

    now_ms, now_value = evaluate(index)
    while now_ms > budget_ms:
        best = None
        for g in range(len(index)):
            for jump in range(1, max_jump + 1):
                if index[g] - jump < 0:
                    break
                trial = index.copy()
                trial[g] -= jump
                ms, value = evaluate(trial)
                saved = now_ms - ms
                if saved > FREE_SHARE * dense_ms:
                    score = (now_value - value) / saved
                    if best is None or score < best[0]:
                        best = (score, trial, ms, value)
        if best is None:
            break
        _, index, now_ms, now_value = best
    free = FREE_SHARE * dense_ms
    while True:
        best = None
        for g in range(len(index)):
            if index[g] + 1 >= problem.allowed[g].size:
                continue
            trial = index.copy()
            trial[g] += 1
            ms, value = evaluate(trial)
            added = ms - now_ms
            if ms <= budget_ms or (added <= free and ms <= budget_ms + free):
                score = (value - now_value) / max(added, free)
                if best is None or score > best[0]:
                    best = (score, trial, ms, value)
        if best is None:
            break
        _, index, now_ms, now_value = best
    return [int(a[j]) for a, j in zip(problem.allowed, index)]
