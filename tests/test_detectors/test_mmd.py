"""MMDDetector: exactness of the permutation test, the statistic, batching and reduction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from detectors import InsufficientDataError, MMDDetector
from detectors.mmd import median_bandwidth, resolve_device


def numpy_mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
    """Biased MMD² written out directly: mean Kxx + mean Kyy - 2 mean Kxy."""

    def gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=-1)
        return np.exp(-sq / (2.0 * bandwidth**2))

    return float(gram(x, x).mean() + gram(y, y).mean() - 2.0 * gram(x, y).mean())


def test_null_false_alarm_rate_within_binomial_error() -> None:
    rng = np.random.default_rng(10)
    alpha, trials = 0.05, 200
    alarms = 0
    for trial in range(trials):
        detector = MMDDetector(alpha=alpha, n_permutations=50, seed=trial)
        detector.fit(rng.normal(size=(50, 3)))
        alarms += detector.score(rng.normal(size=(50, 3))).drifted
    assert alarms / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_mean_shift_is_detected() -> None:
    rng = np.random.default_rng(11)
    detector = MMDDetector(n_permutations=50).fit(rng.normal(size=(50, 3)))
    result = detector.score(rng.normal(loc=1.0, size=(50, 3)))
    assert result.drifted
    assert result.p_value == pytest.approx(1 / 51)


@pytest.mark.parametrize(
    ("shift", "n_permutations"),
    [
        pytest.param(0.0, 100, id="null-100"),
        pytest.param(0.3, 37, id="small-shift-37"),
        pytest.param(2.0, 19, id="large-shift-19"),
    ],
)
def test_p_value_has_permutation_form(shift: float, n_permutations: int) -> None:
    rng = np.random.default_rng(12)
    detector = MMDDetector(n_permutations=n_permutations).fit(rng.normal(size=(40, 2)))
    result = detector.score(rng.normal(loc=shift, size=(45, 2)))
    scaled = result.p_value * (n_permutations + 1)
    assert scaled == pytest.approx(round(scaled), abs=1e-9)
    assert 1 <= round(scaled) <= n_permutations + 1
    assert result.details["n_permutations"] == n_permutations


def test_p_value_counts_ties_as_exceeding(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    detector = MMDDetector(n_permutations=4).fit(rng.normal(size=(30, 2)))
    # Observed 0.5; permuted 0.1, 0.5 (tie), 0.7, 0.2 -> b = 2 -> p = 3 / 5.
    monkeypatch.setattr(detector, "_statistics", lambda *args: np.array([0.5, 0.1, 0.5, 0.7, 0.2]))
    result = detector.score(rng.normal(size=(30, 2)))
    assert result.statistic == 0.5
    assert result.p_value == pytest.approx(0.6)


def test_same_seed_reproduces_different_seed_differs() -> None:
    rng = np.random.default_rng(14)
    reference = rng.normal(size=(60, 3))
    window = rng.normal(loc=0.15, size=(60, 3))
    first = MMDDetector(n_permutations=200, seed=3).fit(reference).score(window)
    again = MMDDetector(n_permutations=200, seed=3).fit(reference).score(window)
    other = MMDDetector(n_permutations=200, seed=4).fit(reference).score(window)
    assert first == again
    assert other.statistic == first.statistic
    assert other.p_value != first.p_value


@pytest.mark.parametrize(
    ("dtype", "block_bytes", "max_kernel_bytes", "tol"),
    [
        pytest.param(torch.float64, 2000, 0, 1e-12, id="float64-streamed-blocks"),
        pytest.param(torch.float64, 2000, 1 << 30, 1e-12, id="float64-cached-kernel"),
        pytest.param(torch.float64, 128 << 20, 1 << 30, 1e-12, id="float64-one-block"),
        pytest.param(torch.float32, 2000, 0, 1e-6, id="float32-streamed-blocks"),
    ],
)
def test_batched_permutation_statistics_equal_naive_loop(
    dtype: torch.dtype, block_bytes: int, max_kernel_bytes: int, tol: float
) -> None:
    rng = np.random.default_rng(15)
    n, m, n_perm = 30, 25, 20
    pooled = np.vstack([rng.normal(size=(n, 2)), rng.normal(loc=0.3, size=(m, 2))])
    z = torch.as_tensor(pooled, dtype=dtype)
    exact = z.to(torch.float64).numpy()  # the values the detector actually sees
    weights = torch.cat(
        [
            torch.full((n,), 1.0 / n, dtype=torch.float64),
            torch.full((m,), -1.0 / m, dtype=torch.float64),
        ]
    )
    bandwidth = 1.3
    detector = MMDDetector(
        n_permutations=n_perm,
        dtype=dtype,
        device="cpu",
        block_bytes=block_bytes,
        max_kernel_bytes=max_kernel_bytes,
    )
    generator = torch.Generator().manual_seed(99)
    replay = torch.Generator().manual_seed(99)

    batched = detector._statistics(z, bandwidth, weights, generator)

    naive = [numpy_mmd2(exact[:n], exact[n:], bandwidth)]
    for _ in range(n_perm):
        relabelled = weights[torch.randperm(n + m, generator=replay)].numpy()
        naive.append(numpy_mmd2(exact[relabelled > 0], exact[relabelled < 0], bandwidth))
    assert batched.shape == (n_perm + 1,)
    np.testing.assert_allclose(batched, naive, rtol=0, atol=tol)
    assert len(set(np.round(naive, 12))) > 1  # the permutations really relabel


@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [
        pytest.param(torch.float64, 1e-10, id="float64"),
        pytest.param(torch.float32, 1e-4, id="float32"),
    ],
)
def test_observed_statistic_and_bandwidth_equal_numpy(dtype: torch.dtype, rtol: float) -> None:
    rng = np.random.default_rng(16)
    x = rng.normal(size=(50, 4))
    y = rng.normal(loc=0.2, scale=1.2, size=(49, 4))
    result = MMDDetector(n_permutations=10, dtype=dtype, device="cpu").fit(x).score(y)

    seen = torch.as_tensor(np.vstack([x, y]), dtype=dtype).to(torch.float64).numpy()
    # 99 points -> 4851 pairs, an odd count, so the median is unambiguous.
    bandwidth = float(np.median(pdist(seen)))
    assert result.details["bandwidth"] == pytest.approx(bandwidth, rel=rtol)
    expected = numpy_mmd2(seen[:50], seen[50:], bandwidth)
    assert result.statistic == pytest.approx(expected, rel=rtol)
    assert result.details["device"] == "cpu"


def test_median_bandwidth_ignores_ties_at_zero() -> None:
    z = torch.zeros((10, 2), dtype=torch.float64)
    z[0, 0] = 3.0
    z[1, 0] = 4.0
    # 28 of the 45 distances are 0, so the median of the 17 positive ones (1, 3 x8, 4 x8) is used.
    positive = pdist(z.numpy())
    positive = positive[positive > 0]
    assert median_bandwidth(z) == pytest.approx(float(np.sort(positive)[(positive.size - 1) // 2]))
    assert median_bandwidth(torch.ones((5, 3))) == 1.0


def test_identical_points_give_zero_statistic_and_p_one() -> None:
    result = MMDDetector(n_permutations=20).fit(np.ones((30, 2))).score(np.ones((30, 2)))
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == 1.0
    assert not result.drifted


def test_full_rank_pca_is_a_rotation_and_keeps_the_statistic() -> None:
    rng = np.random.default_rng(17)
    reference = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 5))
    window = rng.normal(loc=0.2, size=(70, 5)) @ rng.normal(size=(5, 5))
    plain = MMDDetector(dtype=torch.float64).fit(reference).score(window)
    pca = (
        MMDDetector(dtype=torch.float64, reduce="pca", n_components=5).fit(reference).score(window)
    )
    assert pca.statistic == pytest.approx(plain.statistic, rel=1e-9)
    assert pca.details["bandwidth"] == pytest.approx(plain.details["bandwidth"], rel=1e-9)
    assert pca.p_value == plain.p_value


@pytest.mark.parametrize(
    "reduce", [pytest.param("pca", id="pca"), pytest.param("random", id="random")]
)
def test_reduction_detects_shift_and_is_reproducible(reduce: str) -> None:
    rng = np.random.default_rng(18)
    reference = rng.normal(size=(100, 64))
    window = rng.normal(size=(100, 64))
    window[:, :8] += 0.8
    results = [
        MMDDetector(reduce=reduce, n_components=8, seed=5).fit(reference).score(window)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    assert results[0] == results[1]
    assert results[0].drifted


def test_pca_with_more_components_than_features_raises() -> None:
    with pytest.raises(ValueError, match=r"'n_components'=8 exceeds"):
        MMDDetector(reduce="pca", n_components=8).fit(np.random.default_rng(0).normal(size=(40, 3)))


def test_resolve_device_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(ValueError, match="'device' must be 'auto' or a torch device"):
        resolve_device("tpu-please")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(19)
    reference = rng.normal(size=(300, 16))
    window = rng.normal(loc=0.05, size=(300, 16))
    cpu = MMDDetector(device="cpu", dtype=torch.float64).fit(reference).score(window)
    gpu = MMDDetector(device="cuda", dtype=torch.float64).fit(reference).score(window)
    assert gpu.details["device"].startswith("cuda")
    assert gpu.statistic == pytest.approx(cpu.statistic, rel=1e-9)
    assert gpu.p_value == cpu.p_value


def test_input_rules() -> None:
    rng = np.random.default_rng(20)
    with pytest.raises(InsufficientDataError, match=r"reference has 20 rows.*min_samples=30"):
        MMDDetector().fit(rng.normal(size=(20, 2)))
    detector = MMDDetector().fit(rng.normal(size=(40, 2)))
    with pytest.raises(InsufficientDataError, match=r"window has 29 rows.*min_samples=30"):
        detector.score(rng.normal(size=(29, 2)))
    with pytest.raises(ValueError, match="window has 3 features but the reference has 2"):
        detector.score(rng.normal(size=(40, 3)))
    bad = rng.normal(size=(40, 2))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="needs finite data"):
        detector.score(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"n_permutations": 0}, "'n_permutations' must be an int >= 1", id="no-perms"),
        pytest.param(
            {"reduce": "umap"}, "'reduce' must be None, 'pca' or 'random'", id="bad-reduce"
        ),
        pytest.param({"dtype": torch.int64}, "'dtype' must be a floating", id="int-dtype"),
        pytest.param({"min_samples": 1}, "'min_samples' must be an int >= 2", id="min-samples"),
    ],
)
def test_invalid_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MMDDetector(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "median_max_points",
    [pytest.param(1024, id="all-points"), pytest.param(150, id="seeded-subset")],
)
def test_shared_distance_matrix_matches_the_blocked_path(median_max_points: int) -> None:
    """Scoring with one shared distance matrix gives what the memory-bounded path gives."""
    rng = np.random.default_rng(21)
    x = rng.normal(size=(200, 8))
    y = rng.normal(loc=0.15, size=(180, 8))
    shared = MMDDetector(n_permutations=40, median_max_points=median_max_points, seed=3)
    blocked = MMDDetector(
        n_permutations=40, median_max_points=median_max_points, seed=3, max_kernel_bytes=0
    )
    a, b = shared.fit(x).score(y), blocked.fit(x).score(y)
    assert a.details["bandwidth"] == pytest.approx(b.details["bandwidth"], rel=1e-5)
    assert a.statistic == pytest.approx(b.statistic, rel=1e-4)
    assert a.p_value == b.p_value
