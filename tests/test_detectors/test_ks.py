"""KSDetector: agreement with scipy, multiple-testing corrections, input rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import ks_2samp

from detectors import InsufficientDataError, KSDetector
from detectors.ks import adjust_p_values


@pytest.mark.parametrize(
    ("n_ref", "n_win", "shift"),
    [
        pytest.param(40, 35, 0.0, id="exact-null"),
        pytest.param(200, 150, 0.4, id="exact-shifted"),
        pytest.param(12_000, 11_000, 0.03, id="asymptotic-large"),
    ],
)
def test_one_feature_matches_scipy(n_ref: int, n_win: int, shift: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=n_ref)
    y = rng.normal(loc=shift, size=n_win)
    expected = ks_2samp(x, y)
    result = KSDetector().fit(x).score(y)
    # One feature: every correction is the identity.
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-12, abs=0.0)
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert result.details["feature"] == "feature_0"
    assert result.n_reference == n_ref
    assert result.n_window == n_win


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        pytest.param("bonferroni", [0.03, 0.12, 0.09], id="bonferroni"),
        # sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
        pytest.param("holm", [0.03, 0.06, 0.06], id="holm"),
        # sorted 0.01, 0.03, 0.04 -> 0.03, 0.045, 0.04 -> running min from top 0.03, 0.04, 0.04
        pytest.param("fdr_bh", [0.03, 0.04, 0.04], id="fdr-bh"),
    ],
)
def test_adjust_p_values_hand_computed(method: str, expected: list[float]) -> None:
    adjusted = adjust_p_values([0.01, 0.04, 0.03], method)  # type: ignore[arg-type]
    np.testing.assert_allclose(adjusted, expected, rtol=1e-12)


def test_adjust_p_values_clips_at_one() -> None:
    np.testing.assert_array_equal(adjust_p_values([0.5, 0.9], "bonferroni"), [1.0, 1.0])
    np.testing.assert_array_equal(adjust_p_values([0.6, 0.9], "holm"), [1.0, 1.0])


def _three_features(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    reference = rng.normal(size=(300, 3))
    window = rng.normal(size=(200, 3)) + np.array([0.0, 0.25, 0.15])
    return reference, window


@pytest.mark.parametrize(
    "correction",
    [pytest.param("bonferroni", id="bonferroni"), pytest.param("holm", id="holm")],
)
def test_three_features_corrected_like_by_hand(correction: str) -> None:
    reference, window = _three_features(np.random.default_rng(2))
    names = ["kvp", "slice_thickness", "pixel_spacing"]
    raw = np.array([ks_2samp(reference[:, j], window[:, j]).pvalue for j in range(3)])
    stats = np.array([ks_2samp(reference[:, j], window[:, j]).statistic for j in range(3)])
    if correction == "bonferroni":
        expected = np.minimum(3 * raw, 1.0)
    else:
        order = np.argsort(raw)
        p1, p2, p3 = raw[order]
        stepped = [3 * p1, max(3 * p1, 2 * p2), max(3 * p1, 2 * p2, p3)]
        expected = np.empty(3)
        expected[order] = np.minimum(stepped, 1.0)

    result = (
        KSDetector(correction=correction, feature_names=names)  # type: ignore[arg-type]
        .fit(reference)
        .score(window)
    )

    per_feature = result.details["per_feature"]
    assert list(per_feature) == names
    got = np.array([per_feature[name]["p_value"] for name in names])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    worst = int(np.argmin(expected))
    assert result.details["feature"] == names[worst]
    assert result.p_value == pytest.approx(expected[worst], rel=1e-12)
    assert result.statistic == pytest.approx(stats[worst], rel=1e-12)
    assert result.drifted == (expected[worst] < 0.05)


def test_holm_is_never_larger_than_bonferroni() -> None:
    reference, window = _three_features(np.random.default_rng(3))
    bonf = KSDetector(correction="bonferroni").fit(reference).score(window)
    holm = KSDetector(correction="holm").fit(reference).score(window)
    for name, entry in holm.details["per_feature"].items():
        assert entry["p_value"] <= bonf.details["per_feature"][name]["p_value"] + 1e-15


def test_nans_are_dropped_per_feature() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(120, 2))
    window = rng.normal(size=(90, 2))
    window[:20, 0] = np.nan
    reference[::7, 1] = np.nan
    result = KSDetector().fit(reference).score(window)

    for j, name in enumerate(["feature_0", "feature_1"]):
        x = reference[:, j]
        y = window[:, j]
        raw = ks_2samp(x[~np.isnan(x)], y[~np.isnan(y)]).pvalue
        assert result.details["per_feature"][name]["p_value"] == pytest.approx(min(2 * raw, 1.0))
    assert result.n_window == 90


def test_null_false_alarm_rate_within_binomial_error() -> None:
    rng = np.random.default_rng(5)
    alpha, trials = 0.05, 300
    detector = KSDetector(alpha=alpha, correction="holm")
    alarms = 0
    for _ in range(trials):
        detector.fit(rng.normal(size=(60, 3)))
        alarms += detector.score(rng.normal(size=(60, 3))).drifted
    assert alarms / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_shift_in_one_feature_is_detected_and_named() -> None:
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(200, 4))
    window = rng.normal(size=(200, 4))
    window[:, 2] += 1.0
    result = KSDetector(feature_names=["a", "b", "c", "d"]).fit(reference).score(window)
    assert result.drifted
    assert result.details["feature"] == "c"


def test_too_small_window_names_sizes() -> None:
    detector = KSDetector(min_samples=30).fit(np.zeros((50, 1)))
    with pytest.raises(InsufficientDataError, match=r"window has 10 .*min_samples=30"):
        detector.score(np.zeros(10))


def test_too_small_reference_names_sizes() -> None:
    with pytest.raises(InsufficientDataError, match=r"reference has 29 .*min_samples=30"):
        KSDetector().fit(np.zeros(29))


def test_feature_mostly_missing_is_insufficient() -> None:
    window = np.ones((40, 2))
    window[:15, 1] = np.nan
    detector = KSDetector(feature_names=["kvp", "exposure"]).fit(np.ones((40, 2)))
    with pytest.raises(InsufficientDataError, match=r"25 non-missing .*'exposure'"):
        detector.score(window)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"correction": "sidak"}, "'correction' must be one of", id="bad-correction"),
        pytest.param({"min_samples": 0}, "'min_samples' must be", id="bad-min-samples"),
        pytest.param({"alpha": 1.5}, "'alpha' must be in", id="bad-alpha"),
        pytest.param({"feature_names": ["a", "a"]}, "must be unique", id="duplicate-names"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KSDetector(**kwargs)  # type: ignore[arg-type]


def test_shape_mismatches_raise() -> None:
    rng = np.random.default_rng(8)
    with pytest.raises(ValueError, match="'feature_names' has 3 names"):
        KSDetector(feature_names=["a", "b", "c"]).fit(rng.normal(size=(40, 2)))
    detector = KSDetector().fit(rng.normal(size=(40, 2)))
    with pytest.raises(ValueError, match="window has 3 features but the reference has 2"):
        detector.score(rng.normal(size=(40, 3)))
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, d\)"):
        detector.score(rng.normal(size=(40, 2, 2)))
