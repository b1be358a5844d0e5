"""The closed loop converges on a fake target whose latency is a known function of the channels."""
from __future__ import annotations

import numpy as np
import pytest

from edgeprune.errors import InputError
from edgeprune.latency.closed_loop import Measurement, closed_loop, next_request
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

    def plan_at(asked):
        counts = plan_latency(problem, predictor, asked)
        return counts, predictor(problem.kept_for(counts)) / predictor.dense_ms

    def measure(counts):
        ratio = _true_ms(counts) / dense
        return Measurement(ratio, (ratio * 0.99, ratio * 1.01), dense, _true_ms(counts))

    return plan_at, measure


KEEP = 0.5


def test_closed_loop_converges_where_the_table_alone_misses():
    plan_at, measure = _setup()
    counts, predicted = plan_at(KEEP)
    assert abs(measure(counts).ratio - KEEP) > 0.03, "the uncorrected table misses (else the test proves nothing)"
    result = closed_loop(KEEP, plan_at, measure, tolerance=0.03, max_rounds=4)
    assert result.met
    assert 2 <= len(result.rounds) <= 4
    assert abs(result.final.measured.ratio - KEEP) <= 0.03
    assert result.final.asked_ratio < KEEP, "the table over-promised savings, so it was asked for less"
    record = result.to_dict()
    assert record["requested_ratio"] == KEEP and record["rounds"] == len(result.rounds)
    assert record["measured_ratio_ci95"][0] < record["measured_ratio"] < record["measured_ratio_ci95"][1]


def test_closed_loop_stops_at_the_first_round_that_confirms_the_request():
    plan_at, measure = _setup()
    calls = []
    result = closed_loop(KEEP, plan_at, lambda c: calls.append(c) or measure(c), tolerance=0.5, max_rounds=4)
    assert len(calls) == 1 and len(result.rounds) == 1
    assert result.confirmed and result.to_dict()["confirmed"] is True


def test_a_median_in_the_band_with_a_wide_interval_is_met_but_not_confirmed():
    """The loop goes on while the interval reaches past the band, and keeps a confirmed round over
    a closer median whose interval is wide."""
    answers = iter([Measurement(0.51, (0.45, 0.57), 1.0, 0.51),   # met, not confirmed
                    Measurement(0.525, (0.52, 0.529), 1.0, 0.525),  # confirmed, further from 0.5
                    Measurement(0.60, (0.59, 0.61), 1.0, 0.60)])
    result = closed_loop(KEEP, lambda asked: (asked, asked), lambda plan: next(answers), tolerance=0.03,
                         max_rounds=3)
    assert len(result.rounds) == 2, "stops at the confirmed second round"
    assert result.chosen_round == 1 and result.met and result.confirmed

    wide = iter([Measurement(0.51, (0.45, 0.57), 1.0, 0.51), Measurement(0.49, (0.40, 0.60), 1.0, 0.49)])
    result = closed_loop(KEEP, lambda asked: (asked, asked), lambda plan: next(wide), tolerance=0.03, max_rounds=2)
    assert len(result.rounds) == 2 and result.met and not result.confirmed


def test_next_request_fits_a_line_through_the_rounds_and_stays_bounded():
    # asked 0.5 -> measured 0.6, asked 0.4 -> measured 0.5: ask 0.4 (slope 1) to get 0.5
    assert next_request(0.5, [(0.5, 0.6), (0.4, 0.5)]) == pytest.approx(0.4)
    assert next_request(0.5, [(0.5, 0.6)]) == pytest.approx(0.4)  # one round: shift by the miss
    assert next_request(0.5, [(0.5, 0.95)]) == pytest.approx(0.2)  # at most MAX_STEP at once
    assert next_request(0.1, [(0.06, 0.5)]) == pytest.approx(0.05)  # never below ASK_MIN


def _intervals(history, widths):
    return [(m - w / 2, m + w / 2) for (_, m), w in zip(history, widths)]


def test_one_noisy_round_does_not_throw_the_next_request_off():
    """resnet50 at keep 0.5 on this machine: the table over-promised by about 0.06-0.09, and one
    short, noisy round read 0.539 where its neighbours say about 0.44-0.47. A secant through the
    two rounds nearest the request took that round at face value and asked far too low (0.333,
    measured 0.42). Weighted by their intervals, the tight rounds decide the line."""
    history = [(0.600, 0.652), (0.500, 0.563), (0.437, 0.539)]
    widths = [0.012, 0.013, 0.059]
    weighted = next_request(0.5, history, _intervals(history, widths))
    unweighted = next_request(0.5, history)
    assert 0.415 < weighted < 0.435
    assert unweighted < weighted - 0.02  # the noisy round would have pulled the ask down


def test_bad_request_is_refused():
    plan_at, measure = _setup()
    with pytest.raises(InputError, match="ratio"):
        closed_loop(1.5, plan_at, measure)


def test_rounds_on_both_sides_of_the_request_are_closed_in_on():
    """efficientnet_b0 at keep 0.5 here: asked 0.5 -> 0.289, 0.711 -> 0.655, 0.622 -> 0.444,
    0.665 -> 0.604 (a cliff between 0.622 and 0.665). The line through all four asked for points
    outside that bracket; the next ask must lie inside it."""
    history = [(0.500, 0.289), (0.711, 0.655), (0.622, 0.444), (0.665, 0.604)]
    asked = next_request(0.5, history, _intervals(history, [0.006, 0.126, 0.009, 0.016]))
    assert 0.622 < asked < 0.665
    assert asked == pytest.approx(0.622 + (0.5 - 0.444) * (0.665 - 0.622) / (0.604 - 0.444))


def test_a_round_whose_interval_straddles_the_request_brackets_nothing():
    """0.51 measured with an interval reaching under 0.5 is not 'over the request': no
    interpolation towards it; the weighted line through every round answers instead, led by the
    two tight rounds (slope 0.7 there)."""
    history = [(0.40, 0.38), (0.50, 0.45), (0.60, 0.51)]
    tight_over = next_request(0.5, history, [(0.375, 0.385), (0.445, 0.455), (0.505, 0.515)])
    straddling = next_request(0.5, history, [(0.375, 0.385), (0.445, 0.455), (0.47, 0.55)])
    assert tight_over == pytest.approx(0.50 + 0.05 * 0.10 / 0.06)  # interpolated in the bracket
    assert 0.565 < straddling < 0.578  # the tight rounds' line: 0.50 + 0.05 / 0.7 = 0.571
