"""Performance metrics against hand-computed values and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, roc_auc_score

from detectors import (
    BinaryMetrics,
    Proportion,
    auroc_delong,
    binary_metrics,
    calibration_slope_intercept,
    expected_calibration_error,
    wilson_interval,
)

# ---------------------------------------------------------------- Wilson


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        # Published values (e.g. Newcombe 1998, Table I style; 95 %, no continuity correction).
        pytest.param(8, 10, (0.4902, 0.9433), id="8-of-10"),
        pytest.param(0, 10, (0.0, 0.2775), id="0-of-10"),
        pytest.param(10, 10, (0.7225, 1.0), id="10-of-10"),
        pytest.param(81, 263, (0.2553, 0.3662), id="81-of-263"),
    ],
)
def test_wilson_known_values(successes: int, trials: int, expected: tuple[float, float]) -> None:
    lower, upper = wilson_interval(successes, trials)
    assert lower == pytest.approx(expected[0], abs=5e-5)
    assert upper == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize(
    ("successes", "trials", "confidence"),
    [
        pytest.param(3, 7, 0.95, id="3-of-7"),
        pytest.param(45, 50, 0.90, id="45-of-50-90pc"),
        pytest.param(1, 400, 0.99, id="1-of-400-99pc"),
    ],
)
def test_wilson_equals_roots_of_score_equation(
    successes: int, trials: int, confidence: float
) -> None:
    # Wilson's interval is {pi : (p - pi)^2 <= z^2 pi (1 - pi) / n}: the two roots of
    # (1 + z^2/n) pi^2 - (2p + z^2/n) pi + p^2 = 0.
    z = norm.ppf(1 - (1 - confidence) / 2)
    p, n = successes / trials, trials
    roots = np.sort(np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]).real)
    lower, upper = wilson_interval(successes, trials, confidence)
    assert lower == pytest.approx(roots[0], rel=1e-9)
    assert upper == pytest.approx(roots[1], rel=1e-9)


def test_wilson_empty_and_invalid() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    empty = Proportion.from_counts(0, 0)
    assert math.isnan(empty.value)
    assert (empty.lower, empty.upper, empty.successes, empty.trials) == (0.0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="'confidence' must be in"):
        wilson_interval(1, 3, confidence=95)


# ---------------------------------------------------------------- binary metrics


def test_binary_metrics_match_sklearn_confusion_matrix() -> None:
    rng = np.random.default_rng(30)
    y = rng.integers(0, 2, size=500)
    scores = np.clip(0.3 * y + rng.uniform(size=500) * 0.7, 0, 1)
    scores[:5] = 0.5  # exactly at the threshold: predicted positive
    threshold = 0.5
    tn, fp, fn, tp = confusion_matrix(y, scores >= threshold, labels=[0, 1]).ravel()

    metrics = binary_metrics(y, scores, threshold)

    assert isinstance(metrics, BinaryMetrics)
    assert (metrics.tp, metrics.fp, metrics.tn, metrics.fn) == (tp, fp, tn, fn)
    assert metrics.n == 500
    assert metrics.n_positive == int(y.sum())
    assert metrics.prevalence == pytest.approx(y.mean())
    assert metrics.sensitivity == Proportion.from_counts(int(tp), int(tp + fn))
    assert metrics.specificity.value == pytest.approx(tn / (tn + fp))
    assert metrics.ppv.value == pytest.approx(tp / (tp + fp))
    assert metrics.npv.value == pytest.approx(tn / (tn + fn))
    for prop in (metrics.sensitivity, metrics.specificity, metrics.ppv, metrics.npv):
        assert prop.lower <= prop.value <= prop.upper


def test_binary_metrics_without_positives_is_not_estimable() -> None:
    metrics = binary_metrics([0, 0, 0, 0], [0.1, 0.7, 0.2, 0.9], threshold=0.5)
    assert math.isnan(metrics.sensitivity.value)
    assert (metrics.sensitivity.lower, metrics.sensitivity.upper) == (0.0, 1.0)
    assert metrics.specificity.value == 0.5
    assert metrics.ppv.value == 0.0
    assert metrics.prevalence == 0.0


@pytest.mark.parametrize(
    ("y", "scores", "match"),
    [
        pytest.param([0, 1, 2], [0.1, 0.2, 0.3], "0/1 labels", id="three-classes"),
        pytest.param([0, 1], [0.1], "same length", id="length-mismatch"),
        pytest.param([0, 1], [0.1, float("nan")], "finite", id="nan-score"),
    ],
)
def test_binary_metrics_rejects_bad_input(y: list[int], scores: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(y, scores, 0.5)


# ---------------------------------------------------------------- AUROC / DeLong


def _delong_naive(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUROC and DeLong variance from the O(m n) pairwise kernel (DeLong et al. 1988)."""
    pos, neg = scores[y == 1], scores[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = float(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size)
    return auc, var


def _scored_sample(n: int, seed: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=n) < 0.3).astype(int)
    scores = expit(rng.normal(loc=1.2 * y - 0.5, size=n))
    if ties:
        scores = np.round(scores, 1)
    return y, scores


@pytest.mark.parametrize(
    "ties", [pytest.param(False, id="continuous"), pytest.param(True, id="heavy-ties")]
)
def test_auroc_matches_sklearn_and_naive_delong(ties: bool) -> None:
    y, scores = _scored_sample(400, seed=31, ties=ties)
    estimate = auroc_delong(y, scores)
    naive_auc, naive_var = _delong_naive(y, scores)

    assert estimate.value == pytest.approx(roc_auc_score(y, scores), rel=1e-12)
    assert estimate.value == pytest.approx(naive_auc, rel=1e-12)
    half = norm.ppf(0.975) * math.sqrt(naive_var)
    assert estimate.lower == pytest.approx(estimate.value - half, rel=1e-9)
    assert estimate.upper == pytest.approx(estimate.value + half, rel=1e-9)


def test_delong_interval_contains_value_and_shrinks_with_n() -> None:
    small = auroc_delong(*_scored_sample(100, seed=32, ties=False))
    large = auroc_delong(*_scored_sample(4000, seed=33, ties=False))
    for est in (small, large):
        assert 0.0 <= est.lower < est.value < est.upper <= 1.0
    assert (large.upper - large.lower) < 0.5 * (small.upper - small.lower)


def test_delong_interval_is_clipped_to_unit_interval() -> None:
    y = np.array([0] * 5 + [1] * 5)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.65, 0.6, 0.7, 0.8, 0.9, 0.95])
    estimate = auroc_delong(y, scores)
    assert estimate.value == pytest.approx(24 / 25)
    assert estimate.upper == 1.0
    assert 0.0 <= estimate.lower < estimate.value


def test_auroc_one_class_is_nan() -> None:
    estimate = auroc_delong([1, 1, 1], [0.2, 0.5, 0.9])
    assert all(math.isnan(v) for v in (estimate.value, estimate.lower, estimate.upper))


# ---------------------------------------------------------------- calibration


def test_ece_zero_for_perfectly_calibrated_bins() -> None:
    scores = np.array([0.25] * 4 + [0.75] * 4 + [0.55] * 20)
    y = np.array([1, 0, 0, 0] + [1, 1, 1, 0] + [1] * 11 + [0] * 9)
    assert expected_calibration_error(y, scores, n_bins=10) == pytest.approx(0.0, abs=1e-15)


def test_ece_hand_computed() -> None:
    scores = np.array([0.1, 0.2, 0.7, 0.9, 1.0])
    y = np.array([0, 1, 1, 1, 0])
    # n_bins=2: bin [0, .5) holds 0.1, 0.2 (mean .15, rate .5) -> 2/5 * .35 = .14
    #           bin [.5, 1] holds 0.7, 0.9, 1.0 (mean .8667, rate 2/3) -> 3/5 * .2 = .12
    assert expected_calibration_error(y, scores, n_bins=2) == pytest.approx(0.26, rel=1e-12)


def test_ece_rejects_scores_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error([0, 1], [0.2, 1.3])


@pytest.mark.parametrize(
    ("true_slope", "true_intercept"),
    [
        pytest.param(1.0, 0.0, id="calibrated"),
        pytest.param(0.5, 0.0, id="overconfident"),
        pytest.param(1.0, -0.7, id="overestimates-risk"),
    ],
)
def test_calibration_slope_intercept_recovers_simulated_truth(
    true_slope: float, true_intercept: float
) -> None:
    rng = np.random.default_rng(34)
    n = 20_000
    scores = expit(rng.normal(loc=-0.5, scale=1.5, size=n))
    y = (rng.uniform(size=n) < expit(true_intercept + true_slope * logit(scores))).astype(int)
    slope, intercept = calibration_slope_intercept(y, scores)
    assert slope == pytest.approx(true_slope, abs=0.1)
    assert intercept == pytest.approx(true_intercept, abs=0.1)


def test_calibration_fit_equals_unpenalised_sklearn() -> None:
    rng = np.random.default_rng(35)
    scores = rng.uniform(0.02, 0.98, size=600)
    y = (rng.uniform(size=600) < scores**1.5).astype(int)
    slope, intercept = calibration_slope_intercept(y, scores)
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000)
    model.fit(logit(scores)[:, None], y)
    assert slope == pytest.approx(model.coef_[0, 0], abs=1e-5)
    assert intercept == pytest.approx(model.intercept_[0], abs=1e-5)


@pytest.mark.parametrize(
    ("y", "scores"),
    [
        pytest.param([1, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], id="one-class"),
        pytest.param([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9], id="separable"),
        pytest.param([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], id="constant-score"),
    ],
)
def test_calibration_without_a_fit_is_nan(y: list[int], scores: list[float]) -> None:
    slope, intercept = calibration_slope_intercept(y, scores)
    assert math.isnan(slope)
    assert math.isnan(intercept)
