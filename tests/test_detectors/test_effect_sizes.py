"""Effect sizes on DriftResult: KS D, Cramér's V and PSI, normalised MMD."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from detectors import Chi2Detector, KSDetector, MMDDetector
from detectors.chi2 import population_stability_index


@pytest.mark.parametrize(
    ("shifts", "n_ref", "n_win"),
    [
        pytest.param([0.0, 0.0, 0.0], 80, 70, id="null"),
        pytest.param([0.0, 0.6, 0.2], 300, 150, id="one-feature-shifted"),
        pytest.param([1.5, 0.0, 0.3], 50, 500, id="unbalanced"),
    ],
)
def test_ks_effect_is_the_largest_scipy_distance(
    shifts: list[float], n_ref: int, n_win: int
) -> None:
    rng = np.random.default_rng(30)
    reference = rng.normal(size=(n_ref, 3))
    window = rng.normal(size=(n_win, 3)) + np.array(shifts)
    result = KSDetector(correction="holm").fit(reference).score(window)
    expected = max(ks_2samp(reference[:, j], window[:, j]).statistic for j in range(3))
    assert result.effect_name == "ks_d"
    assert result.effect_size == pytest.approx(expected, rel=1e-12)


def test_ks_effect_of_disjoint_samples_is_one() -> None:
    result = KSDetector().fit(np.arange(40.0)).score(np.arange(100.0, 140.0))
    assert result.effect_size == 1.0


def test_cramers_v_is_zero_for_identical_shares() -> None:
    reference = ["GE"] * 40 + ["Siemens"] * 30 + ["Philips"] * 30
    window = ["GE"] * 20 + ["Siemens"] * 15 + ["Philips"] * 15
    result = Chi2Detector().fit(reference).score(window)
    assert result.effect_name == "cramers_v"
    assert result.effect_size == pytest.approx(0.0, abs=1e-12)
    assert result.details["psi"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("window", "low"),
    [
        pytest.param(["Canon"] * 50, 0.99, id="one-new-category"),
        pytest.param(["Canon"] * 25 + ["Fuji"] * 25, 0.99, id="two-new-categories"),
    ],
)
def test_cramers_v_is_one_for_disjoint_categories(window: list[str], low: float) -> None:
    reference = ["GE"] * 60 + ["Siemens"] * 40
    result = Chi2Detector().fit(reference).score(window)
    assert low <= result.effect_size <= 1.0 + 1e-12
    assert result.details["psi"] > 10.0  # large but finite: shares floored at 1e-4


def test_cramers_v_and_psi_hand_computed() -> None:
    # 2 x 2 table [[60, 40], [30, 70]]: N = 200, Pearson X² without Yates.
    reference = ["a"] * 60 + ["b"] * 40
    window = ["a"] * 30 + ["b"] * 70
    table = np.array([[60, 40], [30, 70]], dtype=float)
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    x2 = float(((table - expected) ** 2 / expected).sum())
    result = Chi2Detector().fit(reference).score(window)
    assert result.effect_size == pytest.approx(math.sqrt(x2 / 200.0), rel=1e-12)
    psi = (0.3 - 0.6) * math.log(0.3 / 0.6) + (0.7 - 0.4) * math.log(0.7 / 0.4)
    assert result.details["psi"] == pytest.approx(psi, rel=1e-12)
    assert population_stability_index([0.6, 0.4], [0.3, 0.7]) == pytest.approx(psi, rel=1e-12)


def test_mmd_effect_equals_numpy_formula() -> None:
    rng = np.random.default_rng(31)
    x = rng.normal(size=(60, 4))
    y = rng.normal(loc=0.4, size=(50, 4))
    result = MMDDetector(n_permutations=10, dtype=torch.float64, device="cpu").fit(x).score(y)
    bandwidth = result.details["bandwidth"]

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        return np.exp(-sq / (2.0 * bandwidth**2))

    kxx, kyy, kxy = gram(x, x).mean(), gram(y, y).mean(), gram(x, y).mean()
    expected = math.sqrt((kxx + kyy - 2 * kxy) / (1.0 - kxx))
    assert result.effect_name == "mmd_norm"
    assert result.effect_size == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "bandwidth",
    [pytest.param("median", id="median"), pytest.param("multi", id="multi")],
)
def test_mmd_effect_grows_with_the_shift(bandwidth: str) -> None:
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    effects = []
    for shift in shifts:
        rng = np.random.default_rng(32)
        reference = rng.normal(size=(300, 8))
        window = rng.normal(size=(300, 8)) + shift
        detector = MMDDetector(n_permutations=20, bandwidth=bandwidth, device="cpu")  # type: ignore[arg-type]
        effects.append(detector.fit(reference).score(window).effect_size)
    assert all(a < b for a, b in itertools.pairwise(effects)), effects
    assert effects[0] < 0.15  # only the small-sample floor under the null
    assert effects[2] == pytest.approx(0.85 * 0.5, abs=0.07)  # documented ~0.85 x shift


def test_mmd_effect_is_zero_for_identical_points() -> None:
    result = (
        MMDDetector(n_permutations=10, device="cpu").fit(np.ones((30, 2))).score(np.ones((30, 2)))
    )
    assert result.effect_size == 0.0
