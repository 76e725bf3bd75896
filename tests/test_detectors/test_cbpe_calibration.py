"""CBPE with an isotonic calibrator fitted on labelled reference data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from detectors.cbpe import Calibrator, estimate_performance

THRESHOLD = 0.25  # on the raw (miscalibrated) score: true probability 0.5


def _cases(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores p² for true probabilities p: same ranking, over-confident negatives."""
    p = rng.beta(0.8, 2.0, size=n)
    labels = rng.random(n) < p
    return p**2, labels


def _realised(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    flagged = scores >= THRESHOLD
    sensitivity = float((flagged & labels).sum() / labels.sum())
    specificity = float((~flagged & ~labels).sum() / (~labels).sum())
    return sensitivity, specificity


def test_calibrator_matches_sklearn_isotonic_regression() -> None:
    rng = np.random.default_rng(80)
    scores, labels = _cases(rng, 500)
    scores = np.round(scores, 2)  # ties, pooled before the fit
    ours = Calibrator().fit(scores, labels)
    theirs = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    grid = np.linspace(-0.1, 1.1, 241)
    expected = np.clip(theirs.predict(grid), 1e-6, 1 - 1e-6)
    # ours clips the fitted points before interpolating, sklearn after: <= 1e-6 apart
    np.testing.assert_allclose(ours(grid), expected, rtol=0, atol=1.0001e-6)
    assert np.mean(np.abs(ours(grid) - expected) < 1e-12) > 0.95


def test_calibrator_clips_and_is_monotone() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    labels = np.array([0, 0, 0, 1, 1, 1])
    calibrator = Calibrator().fit(scores, labels)
    out = calibrator(np.array([0.0, 0.1, 0.35, 0.6, 1.0]))
    # PAVA gives 0, 0, 0, 1, 1, 1; clipped to [1e-6, 1 - 1e-6]; 0.35 is halfway.
    np.testing.assert_allclose(out, [1e-6, 1e-6, 0.5, 1 - 1e-6, 1 - 1e-6])
    assert np.all(np.diff(calibrator(np.linspace(0, 1, 101))) >= 0)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        pytest.param([0.1, 0.2], [0, 2], "0/1", id="labels"),
        pytest.param([0.1, np.nan], [0, 1], "finite", id="nan"),
        pytest.param([0.1, 0.2], [0], "equal length", id="lengths"),
        pytest.param([], [], "at least one", id="empty"),
    ],
)
def test_calibrator_rejects_bad_input(scores: list[float], labels: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Calibrator().fit(scores, labels)


def test_unfitted_calibrator_raises() -> None:
    with pytest.raises(RuntimeError, match="has not been fit"):
        Calibrator()([0.5])


def test_default_behaviour_is_unchanged_without_a_calibrator() -> None:
    scores = np.array([0.9, 0.6, 0.3, 0.1])
    assert estimate_performance(scores, 0.5) == estimate_performance(scores, 0.5, calibrator=None)
    with pytest.raises(ValueError, match="not both"):
        estimate_performance(scores, 0.5, calibrate=lambda s: s, calibrator=Calibrator())


def test_calibrated_estimate_is_closer_to_the_realised_performance() -> None:
    runs = 20
    raw_errors: list[tuple[float, float]] = []
    calibrated_errors: list[tuple[float, float]] = []
    for run in range(runs):
        rng = np.random.default_rng(800 + run)
        reference_scores, reference_labels = _cases(rng, 2000)
        window_scores, window_labels = _cases(rng, 1000)
        calibrator = Calibrator().fit(reference_scores, reference_labels)
        sensitivity, specificity = _realised(window_scores, window_labels)
        for errors, kwargs in (
            (raw_errors, {}),
            (calibrated_errors, {"calibrator": calibrator}),
        ):
            estimate = estimate_performance(window_scores, THRESHOLD, **kwargs)  # type: ignore[arg-type]
            errors.append(
                (
                    abs(estimate.sensitivity.value - sensitivity),
                    abs(estimate.specificity.value - specificity),
                )
            )
    raw = np.mean(raw_errors, axis=0)
    calibrated = np.mean(calibrated_errors, axis=0)
    message = (
        f"mean |error| over {runs} runs, (sensitivity, specificity): "
        f"raw {raw.round(4).tolist()}, calibrated {calibrated.round(4).tolist()}"
    )
    assert np.all(calibrated < raw), message
    assert calibrated[0] < 0.05, message
