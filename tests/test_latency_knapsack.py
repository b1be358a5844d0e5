"""The latency-saliency knapsack on hand-made tables with a known optimum."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import sparse

from edgeprune.latency.knapsack import plan_latency, solve_mckp
from edgeprune.latency.layers import LayerSite, LayerSpec
from edgeprune.latency.predict import LatencyPredictor
from edgeprune.latency.table import LayerTable
from edgeprune.plan import CostModel, PlanProblem


def test_mckp_matches_brute_force():
    rng = np.random.default_rng(3)
    values = [np.sort(rng.random(4)) for _ in range(4)]
    costs = [np.sort(rng.random(4)) for _ in range(4)]
    budget = 1.7
    best = max((c for c in itertools.product(range(4), repeat=4)
                if sum(costs[g][i] for g, i in enumerate(c)) <= budget),
               key=lambda c: sum(values[g][i] for g, i in enumerate(c)))
    assert tuple(solve_mckp(values, costs, budget)) == best


def _problem(sizes, scores):
    offsets = np.cumsum([0] + list(sizes))
    cost = CostModel(offsets, sparse.csr_matrix((0, int(offsets[-1]))), np.zeros(0, dtype=np.int64))
    orders = tuple(np.argsort(-np.asarray(s), kind="stable") for s in scores)
    return PlanProblem(cost, tuple(np.arange(1, n + 1) for n in sizes), orders,
                       tuple(np.asarray(s, dtype=float)[o] for s, o in zip(scores, orders)), offsets)


def _predictor(sizes, latency_of_count):
    """One layer per group whose output channels are that group (its input is fixed)."""
    offsets = np.cumsum([0] + list(sizes))
    sites, tables = [], []
    for g, n in enumerate(sizes):
        spec = LayerSpec("conv2d", 4, n, (1, 1), (1, 1), (0, 0), (1, 1), 1, (8, 8))
        sites.append(LayerSite(f"conv{g}", spec, np.full(4, -1), offsets[g] + np.arange(n)))
        counts = tuple(range(1, n + 1))
        tables.append(LayerTable(spec, (4,), (1.0,), counts, tuple(latency_of_count[g](k) for k in counts)))
    fixed = 2.0
    return LatencyPredictor.from_tables(sites, tables, fixed + sum(t.full_ms for t in tables))


def test_plan_latency_finds_the_known_optimum_on_a_staircase_table():
    sizes = (8, 8, 6)
    rng = np.random.default_rng(0)
    scores = [rng.random(n) for n in sizes]
    steps = [lambda k: 1.0 * np.ceil(k / 4), lambda k: 0.5 * k, lambda k: 2.0 * np.ceil(k / 3)]
    predictor = _predictor(sizes, steps)
    problem = _problem(sizes, scores)
    keep = 0.6
    counts = plan_latency(problem, predictor, keep)
    budget = keep * predictor.dense_ms
    feasible = [c for c in itertools.product(*(range(1, n + 1) for n in sizes))
                if predictor(problem.kept_for(c)) <= budget + 1e-9]
    best = max(feasible, key=problem.importance)
    assert predictor(problem.kept_for(counts)) <= budget + 1e-9
    assert problem.importance(counts) == pytest.approx(problem.importance(best))
    # Where a step of the table costs nothing, the plan keeps the channels: counts sit on step edges.
    assert counts[0] % 4 == 0 and counts[2] % 3 == 0


def test_plan_latency_meets_the_budget_when_layers_share_two_groups():
    sizes = (16, 16)
    offsets = np.cumsum([0, *sizes])
    spec = LayerSpec("conv2d", 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8))
    site = LayerSite("mid", spec, offsets[0] + np.arange(16), offsets[1] + np.arange(16))
    points = tuple(range(1, 17))
    table = LayerTable(spec, points, tuple(0.1 * k for k in points), points, tuple(0.1 * k for k in points))
    predictor = LatencyPredictor.from_tables([site], [table], 1.0 + table.full_ms)
    problem = _problem(sizes, [np.linspace(1, 2, 16), np.linspace(3, 4, 16)])
    counts = plan_latency(problem, predictor, 0.5)
    ratio = predictor(problem.kept_for(counts)) / predictor.dense_ms
    assert ratio <= 0.5 + 1e-9
    assert ratio > 0.45, "the budget is spent, not wasted"
