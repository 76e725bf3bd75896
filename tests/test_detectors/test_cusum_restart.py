"""CUSUM with restart after alarm, and the decision interval set in days."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detectors.cusum import (
    average_run_length,
    bernoulli_reference,
    cusum,
    decision_interval,
    decision_interval_for_time,
)

P0, P1 = 0.10, 0.20  # error rate at clearance, and the rise worth catching
CASES_PER_DAY = 40
OLD_ARL_CASES = 1000.0  # the fixed in-control ARL of the performance job


def test_restart_hand_computed() -> None:
    errors = [1, 0, 1, 1, 0, 1, 1]
    # increments x - 0.3: 0.7, -0.3, 0.7, 0.7, -0.3, 0.7, 0.7
    plain = cusum(errors, target=0.1, k=0.2, h=1.0)
    assert plain.path == pytest.approx((0.7, 0.4, 1.1, 1.8, 1.5, 2.2, 2.9))
    assert plain.alarm_indices == (2,)  # one up-crossing: it never comes back below h
    assert not plain.restart
    again = cusum(errors, target=0.1, k=0.2, h=1.0, restart=True)
    # 0.7, 0.4, 1.1 (alarm, reset), 0.7, 0.4, 1.1 (alarm, reset), 0.7
    assert again.path == pytest.approx((0.7, 0.4, 1.1, 0.7, 0.4, 1.1, 0.7))
    assert again.alarm_indices == (2, 5)
    assert again.alarm_index == 2
    assert again.statistic == pytest.approx(0.7)
    assert again.max_statistic == pytest.approx(1.1)
    assert again.restart


def test_without_restart_every_up_crossing_is_listed() -> None:
    result = cusum([1, 1, 0, 0, 0, 0, 1, 1], target=0.1, k=0.2, h=1.0)
    # 0.7, 1.4 (up), 1.1, 0.8, 0.5, 0.2, 0.9, 1.6 (up)
    assert result.alarm_indices == (1, 7)
    assert result.alarm_index == 1


def test_restart_statistic_is_zero_right_after_an_alarm() -> None:
    result = cusum([1, 1], target=0.1, k=0.2, h=1.0, restart=True)
    assert result.path == pytest.approx((0.7, 1.4))
    assert result.statistic == 0.0


def test_decision_interval_for_time_is_decision_interval_for_a_year_of_cases() -> None:
    h = decision_interval_for_time(P0, P1, CASES_PER_DAY)
    k = bernoulli_reference(P0, P1)
    assert h == decision_interval(P0, k, 365 * CASES_PER_DAY)
    assert average_run_length(P0, P0, k, h) >= 365 * CASES_PER_DAY
    assert average_run_length(P0, P0, k, h - 0.01) < 365 * CASES_PER_DAY
    # more volume, same time: a higher threshold
    assert decision_interval_for_time(P0, P1, 4 * CASES_PER_DAY) > h


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"cases_per_day": 0.0}, "'cases_per_day'", id="no-volume"),
        pytest.param({"cases_per_day": 5.0, "arl0_days": -1.0}, "'arl0_days'", id="bad-days"),
        pytest.param({"cases_per_day": 0.5, "arl0_days": 1.0}, "must exceed 1 case", id="tiny"),
    ],
)
def test_decision_interval_for_time_rejects_bad_input(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decision_interval_for_time(P0, P1, **kwargs)


def test_a_year_arl0_rarely_false_alarms_in_90_days_and_still_catches_a_rise() -> None:
    """90 in-control days at 40 cases a day, then 30 days at twice the error rate."""
    k = bernoulli_reference(P0, P1)
    h_year = decision_interval_for_time(P0, P1, CASES_PER_DAY, arl0_days=365)
    h_old = decision_interval(P0, k, OLD_ARL_CASES)
    change = 90 * CASES_PER_DAY
    rng = np.random.default_rng(70)
    runs = 1000
    false_new = false_old = detected = 0
    delays: list[float] = []
    for _ in range(runs):
        before = rng.random(change) < P0
        after = rng.random(30 * CASES_PER_DAY) < P1
        errors = np.r_[before, after].astype(float)
        chart = cusum(errors, target=P0, k=k, h=h_year, restart=True)
        false_new += any(i < change for i in chart.alarm_indices)
        false_old += cusum(errors[:change], target=P0, k=k, h=h_old).alarmed
        after_change = [i for i in chart.alarm_indices if i >= change]
        if after_change:
            detected += 1
            delays.append((after_change[0] - change + 1) / CASES_PER_DAY)
    rate_new, rate_old = false_new / runs, false_old / runs
    expected = 1.0 - math.exp(-90 / 365)  # geometric run length with a one-year mean
    message = (
        f"P(false alarm within 90 in-control days) = {rate_new:.3f} with ARL0 = 1 year "
        f"(h={h_year:.3f}; geometric approximation {expected:.3f}) vs {rate_old:.3f} with "
        f"ARL0 = {OLD_ARL_CASES:.0f} cases (h={h_old:.3f}); rise detected in "
        f"{detected}/{runs} runs, median delay {np.median(delays):.1f} days"
    )
    assert rate_new < 0.3, message
    assert rate_old > 0.9, message  # the problem this design fixes
    assert detected / runs >= 0.99, message
    assert float(np.median(delays)) < 7.0, message
