"""Chi2Detector: agreement with scipy, categories, missing values, edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2_contingency
from scipy.stats.contingency import association

from detectors import Chi2Detector, InsufficientDataError
from detectors.chi2 import chi2_homogeneity


def _repeat(counts: dict[str, int]) -> list[str]:
    return [cat for cat, count in counts.items() for _ in range(count)]


@pytest.mark.parametrize(
    ("ref_counts", "win_counts"),
    [
        pytest.param(
            {"GE": 40, "Siemens": 35, "Philips": 25},
            {"GE": 20, "Siemens": 30, "Philips": 10},
            id="2x3",
        ),
        pytest.param({"CHEST": 50, "ABDOMEN": 30}, {"CHEST": 25, "ABDOMEN": 35}, id="2x2-yates"),
        pytest.param(
            {"B30f": 60, "B70f": 40}, {"B30f": 30, "B70f": 20, "Br40": 15}, id="new-kernel"
        ),
    ],
)
def test_matches_scipy_chi2_contingency(
    ref_counts: dict[str, int], win_counts: dict[str, int]
) -> None:
    cats = sorted(set(ref_counts) | set(win_counts))
    table = np.array([[ref_counts.get(c, 0) for c in cats], [win_counts.get(c, 0) for c in cats]])
    expected = chi2_contingency(table)

    rng = np.random.default_rng(0)
    reference = rng.permutation(np.array(_repeat(ref_counts), dtype=object))
    window = rng.permutation(np.array(_repeat(win_counts), dtype=object))
    result = Chi2Detector().fit(reference).score(window)

    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12)
    assert result.drifted == (expected.pvalue < 0.05)
    assert result.n_reference == sum(ref_counts.values())
    assert result.n_window == sum(win_counts.values())
    assert result.details["new_categories"] == sorted(set(win_counts) - set(ref_counts))


def test_proportions_and_missing_category() -> None:
    reference = ["GE"] * 30 + ["Siemens"] * 10
    window = ["GE"] * 20 + [None] * 5 + [float("nan")] * 5 + ["Canon"] * 10
    result = Chi2Detector().fit(reference).score(window)
    assert result.details["categories"] == {
        "Canon": {"reference": 0.0, "window": 0.25},
        "GE": {"reference": 0.75, "window": 0.5},
        "Siemens": {"reference": 0.25, "window": 0.0},
        "missing": {"reference": 0.0, "window": 0.25},
    }
    assert result.details["new_categories"] == ["Canon", "missing"]
    assert result.drifted


def test_numeric_categories_are_compared_as_strings() -> None:
    reference = [1.0] * 20 + [2.5] * 20
    window = np.array([1.0] * 25 + [2.5] * 15)
    result = Chi2Detector().fit(reference).score(window)
    assert set(result.details["categories"]) == {"1.0", "2.5"}
    table = np.array([[20, 20], [25, 15]])
    assert result.p_value == pytest.approx(chi2_contingency(table).pvalue, rel=1e-12)


def test_single_category_overall_is_no_drift() -> None:
    result = Chi2Detector().fit(["CT"] * 40).score(["CT"] * 35)
    assert result.statistic == 0.0
    assert result.p_value == 1.0
    assert not result.drifted
    assert result.details["new_categories"] == []


def test_null_false_alarm_rate_within_binomial_error() -> None:
    rng = np.random.default_rng(1)
    cats = np.array(["a", "b", "c", "d"])
    probs = [0.4, 0.3, 0.2, 0.1]
    alpha, trials = 0.05, 300
    detector = Chi2Detector(alpha=alpha)
    alarms = 0
    for _ in range(trials):
        detector.fit(rng.choice(cats, size=200, p=probs))
        alarms += detector.score(rng.choice(cats, size=200, p=probs)).drifted
    assert alarms / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_too_small_samples_name_sizes() -> None:
    with pytest.raises(InsufficientDataError, match=r"reference has 5 values.*min_samples=30"):
        Chi2Detector().fit(["a"] * 5)
    detector = Chi2Detector(min_samples=10).fit(["a"] * 10)
    with pytest.raises(InsufficientDataError, match=r"window has 9 values.*min_samples=10"):
        detector.score(["a"] * 9)


def test_two_dimensional_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs a 1-D array of categories"):
        Chi2Detector().fit(np.zeros((40, 2)))


@pytest.mark.parametrize("columns", [2, 3, 7])
def test_chi2_homogeneity_matches_scipy(columns: int) -> None:
    rng = np.random.default_rng(columns)
    for _ in range(50):
        table = rng.integers(1, 60, size=(2, columns))
        statistic, p_value, v = chi2_homogeneity(table)
        expected = chi2_contingency(table)
        assert statistic == pytest.approx(expected.statistic, rel=1e-12)
        assert p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
        assert v == pytest.approx(association(table, method="cramer", correction=False), rel=1e-12)
