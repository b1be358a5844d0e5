"""The closed loop converges on a fake target whose latency is a known function of the channels."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.errors import InputError
from edgeprune.latency.closed_loop import Measurement, calibrate, closed_loop, corrected_scale
from edgeprune.latency.knapsack import plan_latency
from tests.test_latency_knapsack import _predictor, _problem

SIZES = (32, 32, 32)


def _true_ms(counts) -> float:
    """What the fake target measures: 4 ms fixed, and layers that cost 0.6x what the table says."""
    return 4.0 + sum(0.6 * 0.01 * k * k for k in counts)


def _setup():
    table = [lambda k: 0.01 * k * k] * len(SIZES)
    predictor = _predictor(SIZES, table)
    problem = _problem(SIZES, [np.linspace(1, 2, n) * (g + 1) for g, n in enumerate(SIZES)])
    dense = _true_ms([n for n in SIZES])

    def plan_at(scale):
        counts = plan_latency(problem, predictor.with_scale(scale), KEEP)
        return counts, predictor.with_scale(scale)(problem.kept_for(counts)) / predictor.dense_ms

    def measure(counts):
        ratio = _true_ms(counts) / dense
        return Measurement(ratio, (ratio * 0.99, ratio * 1.01), dense, _true_ms(counts))

    return plan_at, measure


KEEP = 0.5


def test_closed_loop_converges_where_the_table_alone_misses():
    plan_at, measure = _setup()
    counts, predicted = plan_at(1.0)
    assert abs(measure(counts).ratio - KEEP) > 0.03, "the uncorrected table misses (else the test proves nothing)"
    result = closed_loop(KEEP, plan_at, measure, tolerance=0.03, max_rounds=4)
    assert result.met
    assert 2 <= len(result.rounds) <= 4
    assert abs(result.final.measured.ratio - KEEP) <= 0.03
    record = result.to_dict()
    assert record["requested_ratio"] == KEEP and record["rounds"] == len(result.rounds)
    assert record["measured_ratio_ci95"][0] < record["measured_ratio"] < record["measured_ratio_ci95"][1]


def test_calibration_then_one_round_meets_the_request():
    plan_at, measure = _setup()

    def uniform():
        counts = [n // 2 for n in SIZES]
        return counts, None

    from tests.test_latency_knapsack import _predictor as make_predictor

    predictor = make_predictor(SIZES, [lambda k: 0.01 * k * k] * len(SIZES))
    problem = _problem(SIZES, [np.ones(n) for n in SIZES])
    half = [16, 16, 16]
    scale, first = calibrate(lambda: (half, predictor(problem.kept_for(half)) / predictor.dense_ms), measure)
    result = closed_loop(KEEP, plan_at, measure, initial_scale=scale)
    assert result.met and len(result.rounds) == 1


def test_corrected_scale_matches_the_measured_saving():
    assert corrected_scale(1.0, predicted_ratio=0.5, measured_ratio=0.7) == pytest.approx(0.6)
    assert corrected_scale(2.0, predicted_ratio=0.8, measured_ratio=0.6) == pytest.approx(4.0)


def test_bad_request_is_refused():
    plan_at, measure = _setup()
    with pytest.raises(InputError, match="ratio"):
        closed_loop(1.5, plan_at, measure)
