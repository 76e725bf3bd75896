"""PCAReducer against scikit-learn, and the KS-on-components detector ("ks-pca")."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.decomposition import PCA

from detectors import ComponentKSDetector, InsufficientDataError, PCAReducer, get_detector


def _correlated(rng: np.random.Generator, n: int, d: int = 64, latent: int = 6) -> np.ndarray:
    """Embeddings-like data: a few latent factors plus isotropic noise."""
    mixing = np.random.default_rng(99).normal(size=(latent, d))
    return rng.normal(size=(n, latent)) @ mixing + 0.5 * rng.normal(size=(n, d))


def test_pca_matches_sklearn_up_to_sign() -> None:
    rng = np.random.default_rng(50)
    x = _correlated(rng, 200, d=20)
    ours = PCAReducer(5).fit(x)
    theirs = PCA(n_components=5, svd_solver="full").fit(x)
    assert ours.components_ is not None and ours.explained_variance_ is not None
    assert ours.explained_variance_ratio_ is not None
    signs = np.sign(np.sum(ours.components_ * theirs.components_, axis=1))
    np.testing.assert_allclose(ours.components_, theirs.components_ * signs[:, None], atol=1e-10)
    np.testing.assert_allclose(ours.explained_variance_, theirs.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, theirs.explained_variance_ratio_, rtol=1e-10
    )
    window = rng.normal(size=(30, 20))
    np.testing.assert_allclose(
        ours.transform(window), theirs.transform(window) * signs[None, :], atol=1e-10
    )


@pytest.mark.parametrize(
    ("n", "d", "asked", "kept"),
    [
        pytest.param(200, 20, 32, 20, id="capped-by-d"),
        pytest.param(10, 64, 32, 9, id="capped-by-n-minus-1"),
        pytest.param(200, 64, 8, 8, id="as-asked"),
    ],
)
def test_components_are_capped(n: int, d: int, asked: int, kept: int) -> None:
    reducer = PCAReducer(asked).fit(np.random.default_rng(51).normal(size=(n, d)))
    assert reducer.n_components_ == kept
    assert reducer.components_ is not None
    np.testing.assert_allclose(
        reducer.components_ @ reducer.components_.T, np.eye(kept), atol=1e-10
    )


def test_pca_is_reproducible_and_sign_fixed() -> None:
    x = np.random.default_rng(52).normal(size=(100, 10))
    a = PCAReducer(4).fit(x).components_
    b = PCAReducer(4).fit(-x).components_  # negated data: same axes, flipped SVD signs
    assert a is not None and b is not None
    np.testing.assert_allclose(a, b, atol=1e-12)
    for row in a:
        assert row[np.argmax(np.abs(row))] > 0


def test_pca_input_rules() -> None:
    with pytest.raises(RuntimeError, match="has not been fit"):
        PCAReducer().transform(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        PCAReducer().fit(np.array([[1.0, np.nan], [2.0, 3.0]]))
    reducer = PCAReducer(2).fit(np.random.default_rng(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="data has 4 features but the reference has 3"):
        reducer.transform(np.zeros((5, 4)))


def test_ks_pca_is_registered_and_detects_a_latent_shift() -> None:
    assert get_detector("ks-pca") is ComponentKSDetector
    rng = np.random.default_rng(53)
    reference = _correlated(rng, 400)
    window = _correlated(rng, 100)
    window += 0.8 * np.random.default_rng(99).normal(size=(6, 64))[0]  # the first factor moves
    result = ComponentKSDetector(n_components=16).fit(reference).score(window)
    assert result.drifted
    assert result.details["feature"].startswith("pc_")
    assert result.details["n_components"] == 16
    assert result.details["n_reference_ks"] == 200
    assert 0.5 < result.details["explained_variance"] <= 1.0
    assert result.effect_name == "ks_d"


def test_ks_pca_holdout_needs_min_samples_in_each_part() -> None:
    with pytest.raises(InsufficientDataError, match=r"split 25 \(PCA\) / 25 \(KS\)"):
        ComponentKSDetector(min_samples=30).fit(np.random.default_rng(0).normal(size=(50, 4)))


@pytest.mark.parametrize(
    ("holdout", "calibrated"),
    [
        # both sides of every KS test out-of-sample: false alarms at alpha
        pytest.param(0.5, True, id="holdout"),
        # in-sample PCA: the top components of the reference are too wide (documented)
        pytest.param(0.0, False, id="in-sample"),
    ],
)
def test_null_false_alarm_rate_isotropic_high_dimension(holdout: float, calibrated: bool) -> None:
    """Isotropic 128-d data, 200 reference rows: the worst case for in-sample PCA."""
    runs, alpha = 100, 0.05
    alarms = 0
    for run in range(runs):
        rng = np.random.default_rng(3000 + run)
        detector = ComponentKSDetector(alpha=alpha, holdout=holdout, seed=run)
        alarms += (
            detector.fit(rng.normal(size=(200, 128))).score(rng.normal(size=(100, 128))).drifted
        )
    _, high = binom.interval(0.99, runs, alpha)
    message = f"holdout={holdout}: {alarms}/{runs} null alarms, 99% upper bound {high:.0f}"
    if calibrated:
        assert alarms <= high, message
    else:
        assert alarms > high, message
