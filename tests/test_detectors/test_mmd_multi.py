"""MMD over several bandwidths (MMDAgg-style): calibration, power, aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import binom

from detectors import MMDDetector
from detectors.mmd import aggregate_min_p, permutation_p_values

ALPHA = 0.05


def test_permutation_p_values_hand_computed() -> None:
    stats = np.array([[0.5, 0.1, 0.5, 0.7, 0.2], [0.9, 0.1, 0.2, 0.3, 0.4]])
    # row 0: #(>= 0.5) = 3 of 5 -> 0.6; row 1: observed is the largest -> 0.2.
    per_row = permutation_p_values(stats)
    np.testing.assert_allclose(per_row[:, 0], [0.6, 0.2])
    # every relabelling's own p-value too: 0.1 is >= by all five in row 0.
    np.testing.assert_allclose(per_row[0], [0.6, 1.0, 0.6, 0.2, 0.8])


def test_aggregate_min_p_hand_computed() -> None:
    stats = np.array([[0.5, 0.1, 0.5, 0.7, 0.2], [0.9, 0.1, 0.2, 0.3, 0.4]])
    # per-row p: g0 = 0.6, 1.0, 0.6, 0.2, 0.8 ; g1 = 0.2, 1.0, 0.8, 0.6, 0.4
    # min over g: 0.2, 1.0, 0.6, 0.2, 0.4 -> #(<= 0.2) = 2 of 5 -> 0.4
    p_minp, observed = aggregate_min_p(stats, "minp")
    assert p_minp == pytest.approx(0.4)
    np.testing.assert_allclose(observed, [0.6, 0.2])
    p_bonf, _ = aggregate_min_p(stats, "bonferroni")
    assert p_bonf == pytest.approx(min(1.0, 2 * 0.2))


def test_median_row_of_the_grid_equals_the_median_detector() -> None:
    rng = np.random.default_rng(40)
    x = rng.normal(size=(70, 5))
    y = rng.normal(loc=0.2, size=(60, 5))
    kwargs = {"n_permutations": 60, "seed": 2, "dtype": torch.float64, "device": "cpu"}
    median = MMDDetector(**kwargs).fit(x).score(y)  # type: ignore[arg-type]
    multi = MMDDetector(bandwidth="multi", **kwargs).fit(x).score(y)  # type: ignore[arg-type]
    row = next(b for b in multi.details["bandwidths"] if b["factor"] == 1.0)
    assert row["bandwidth"] == pytest.approx(median.details["bandwidth"], rel=1e-12)
    assert row["statistic"] == pytest.approx(median.statistic, rel=1e-9)
    assert row["p_value"] == pytest.approx(median.p_value)  # the same permutations
    assert multi.effect_size == pytest.approx(median.effect_size, rel=1e-9)
    assert json.loads(json.dumps(multi.details)) == multi.details


@pytest.mark.parametrize(
    ("block_bytes", "max_kernel_bytes"),
    [
        pytest.param(128 << 20, 2 << 30, id="shared-distances"),
        pytest.param(4000, 0, id="streamed-blocks"),
        pytest.param(4000, 1 << 30, id="held-distances"),
    ],
)
def test_grid_paths_agree(block_bytes: int, max_kernel_bytes: int) -> None:
    rng = np.random.default_rng(41)
    x = rng.normal(size=(50, 3))
    y = rng.normal(scale=1.3, size=(45, 3))
    reference = (
        MMDDetector(n_permutations=30, bandwidth="multi", dtype=torch.float64, device="cpu")
        .fit(x)
        .score(y)
    )
    other = (
        MMDDetector(
            n_permutations=30,
            bandwidth="multi",
            dtype=torch.float64,
            device="cpu",
            block_bytes=block_bytes,
            max_kernel_bytes=max_kernel_bytes,
        )
        .fit(x)
        .score(y)
    )
    assert other.p_value == reference.p_value
    for a, b in zip(other.details["bandwidths"], reference.details["bandwidths"], strict=True):
        assert a["statistic"] == pytest.approx(b["statistic"], rel=1e-10)
        assert a["p_value"] == b["p_value"]


def test_fixed_bandwidth_is_used_as_given() -> None:
    rng = np.random.default_rng(42)
    result = (
        MMDDetector(n_permutations=20, bandwidth=2.5, device="cpu")
        .fit(rng.normal(size=(40, 2)))
        .score(rng.normal(size=(40, 2)))
    )
    assert result.details["bandwidth"] == 2.5
    assert result.details["bandwidth_mode"] == "fixed"


def _spread_runs(bandwidth: str, variance: float, runs: int, seed0: int) -> int:
    """Alarms over ``runs`` seeded (reference, window) pairs: N(0, I) vs N(0, variance I), 32-d."""
    alarms = 0
    for run in range(runs):
        rng = np.random.default_rng(seed0 + run)
        reference = rng.normal(size=(100, 32))
        window = rng.normal(scale=np.sqrt(variance), size=(100, 32))
        detector = MMDDetector(
            n_permutations=200,
            seed=run,
            bandwidth=bandwidth,  # type: ignore[arg-type]
            device="cpu",
        )
        alarms += detector.fit(reference).score(window).drifted
    return alarms


@pytest.mark.slow
def test_multi_has_more_power_than_median_on_a_spread_change() -> None:
    """Covariance x 1.1, n = m = 100, 32-d: the median bandwidth barely sees it."""
    runs = 50
    median = _spread_runs("median", 1.1, runs, seed0=1000)
    multi = _spread_runs("multi", 1.1, runs, seed0=1000)
    message = f"power over {runs} runs: median {median / runs:.2f}, multi {multi / runs:.2f}"
    assert multi > median, message
    assert multi / runs >= 0.15, message


@pytest.mark.parametrize(
    ("aggregate", "two_sided"),
    [
        # the permutation-calibrated min-p is exact: its rate sits inside the interval
        pytest.param("minp", True, id="minp"),
        # Bonferroni over the grid is valid but conservative: only the upper bound holds
        pytest.param("bonferroni", False, id="bonferroni"),
    ],
)
def test_null_false_alarm_rate_within_binomial_interval(aggregate: str, two_sided: bool) -> None:
    runs = 100
    alarms = 0
    for run in range(runs):
        rng = np.random.default_rng(2000 + run)
        detector = MMDDetector(
            n_permutations=200,
            seed=run,
            bandwidth="multi",
            aggregate=aggregate,  # type: ignore[arg-type]
            device="cpu",
        )
        alarms += detector.fit(rng.normal(size=(100, 8))).score(rng.normal(size=(100, 8))).drifted
    low, high = binom.interval(0.99, runs, ALPHA)
    message = f"{aggregate}: {alarms}/{runs} null alarms, 99% interval [{low:.0f}, {high:.0f}]"
    assert alarms <= high, message
    if two_sided:
        assert alarms >= low, message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"bandwidth": "silverman"}, "'bandwidth' must be", id="bad-mode"),
        pytest.param({"bandwidth": -1.0}, "'bandwidth' must be", id="negative"),
        pytest.param({"bandwidth_factors": ()}, "'bandwidth_factors' must be", id="no-factors"),
        pytest.param({"bandwidth_factors": (1.0, 1.0)}, "must be distinct", id="repeated"),
        pytest.param({"aggregate": "fisher"}, "'aggregate' must be", id="bad-aggregate"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MMDDetector(**kwargs)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "bandwidth", [pytest.param("median", id="median"), pytest.param("multi", id="multi")]
)
def test_cuda_matches_cpu(bandwidth: str) -> None:
    rng = np.random.default_rng(43)
    reference = rng.normal(size=(300, 16))
    window = rng.normal(scale=1.05, size=(300, 16))
    kwargs = {"bandwidth": bandwidth, "dtype": torch.float64, "n_permutations": 300}
    cpu = MMDDetector(device="cpu", **kwargs).fit(reference).score(window)  # type: ignore[arg-type]
    gpu = MMDDetector(device="cuda", **kwargs).fit(reference).score(window)  # type: ignore[arg-type]
    assert gpu.details["device"].startswith("cuda")
    assert gpu.statistic == pytest.approx(cpu.statistic, rel=1e-9)
    assert gpu.effect_size == pytest.approx(cpu.effect_size, rel=1e-9)
    assert gpu.p_value == cpu.p_value
