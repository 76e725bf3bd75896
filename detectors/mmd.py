"""Maximum mean discrepancy with an exact permutation test, on torch (GPU when present).

Statistic
    The biased (V-statistic) estimate of MMD² with a Gaussian kernel
    ``k(a, b) = exp(-||a - b||² / (2 σ²))``:
    ``MMD²_b = mean(K_xx) + mean(K_yy) - 2 mean(K_xy) = wᵀ K w`` where ``K`` is
    the kernel matrix of the pooled sample ``z = [x; y]`` (``N = n + m`` rows)
    and ``w`` holds ``1/n`` for reference rows and ``-1/m`` for window rows.

Bandwidth
    The median heuristic on the pooled sample: ``σ`` is the median Euclidean
    distance between distinct pooled points. Above ``median_max_points`` pooled
    points the median is taken over a seeded random subset of that many points
    (the full set has N²/2 distances). If the median is 0 (mostly tied points)
    the median of the non-zero distances is used; if every point is identical,
    ``σ = 1`` and the statistic is 0. ``σ`` depends on the pooled set only, so it
    is the same for every relabelling and the permutation test stays exact.

Permutation test
    ``B = n_permutations`` random relabellings ``w_b = w[π_b]`` are drawn from a
    seeded CPU ``torch.Generator`` (so CPU and GPU see the same permutations),
    and all statistics are computed in one batched product: with ``A`` the
    ``(B + 1) x N`` matrix of weight rows (row 0 is the observed labelling),
    ``stat = sum((A @ K) * A, dim=1)``. The p-value is ``(b + 1) / (B + 1)`` with
    ``b`` the number of permuted statistics ``>=`` the observed one, which is a
    valid (exact, slightly conservative) p-value for any ``B``.

Memory
    ``K`` is ``N² x itemsize`` bytes (1.6 GB for 10k vs 10k in float32) and is
    not held by default: each row block ``K[r]`` is computed, used for
    ``A[:, r] @ K[r]`` (accumulating ``sum((A[:, r] @ K[r]) * A, dim=1)``) and
    dropped. Row blocks and permutation batches are sized to about
    ``block_bytes`` (128 MiB) each; when all ``B + 1`` weight rows fit in one
    batch (the usual case) every block of ``K`` is computed exactly once. Only
    when several batches are needed, and ``K`` fits under ``max_kernel_bytes``,
    is ``K`` built once (block by block) and kept for the later batches instead
    of being recomputed. Per-block contributions are accumulated in float64.

Dimension reduction
    ``reduce="pca"`` projects on the top ``n_components`` principal axes of the
    reference; ``reduce="random"`` on a seeded Gaussian random projection. Both
    are fitted in :meth:`MMDDetector.fit` and applied to every window.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch
from numpy.typing import ArrayLike

from detectors.base import Detector, DriftResult, InsufficientDataError, as_2d_float

Reduce = Literal["pca", "random"]
_REDUCERS: tuple[str, ...] = get_args(Reduce)

_MIB = 1024 * 1024


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"'device' must be 'auto' or a torch device such as 'cpu' or 'cuda:0'; got {device!r}"
        ) from exc


def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(len(a), len(b))``, clamped at 0 against rounding."""
    a_sq = (a * a).sum(dim=1, keepdim=True)
    d = torch.addmm(b_sq.unsqueeze(0), a, b.T, beta=1.0, alpha=-2.0)
    d.add_(a_sq).clamp_(min=0.0)
    return d


def _median_distance(sq: torch.Tensor) -> float:
    """Lower median of the distinct-pair distances, from a full squared-distance matrix.

    The median is taken on squared distances (the square root is monotonic, so it
    picks the same pair) and rooted once; a zero median falls back to the median
    of the non-zero distances.
    """
    pairs = torch.ones(sq.shape[0], sq.shape[0], dtype=torch.bool, device=sq.device).triu_(1)
    values = sq[pairs]
    if values.numel() == 0:
        return 1.0
    med = float(values.median())
    if med <= 0.0:
        positive = values[values > 0]
        if positive.numel() == 0:
            return 1.0
        med = float(positive.median())
    return med**0.5


def median_bandwidth(
    z: torch.Tensor, max_points: int = 4096, generator: torch.Generator | None = None
) -> float:
    """Median Euclidean distance between distinct rows of ``z`` (see module docstring).

    Above ``max_points`` rows, a random subset of ``max_points`` rows (drawn with
    ``generator``) is used. For an even number of pairs this is the lower median.
    """
    n = z.shape[0]
    if n > max_points:
        idx = torch.randperm(n, generator=generator)[:max_points].to(z.device)
        z = z[idx]
    # One matrix product in z's own dtype (float32 by default) is several times
    # faster than torch.pdist in float64; a bandwidth heuristic needs no more.
    return _median_distance(_sq_dists(z, z, (z * z).sum(dim=1)))


class MMDDetector(Detector, key="mmd"):
    """Kernel two-sample test for multivariate data (embeddings), on torch.

    ``score`` reports ``statistic`` = biased MMD² (not its square root) and the
    permutation p-value; see the module docstring for the method.

    Parameters
    ----------
    alpha:
        Level at which the permutation p-value flags drift.
    n_permutations:
        Number ``B`` of random relabellings; the smallest reachable p-value is
        ``1 / (B + 1)``, so ``B`` must be at least ``1 / alpha - 1`` for the test
        to be able to flag anything.
    seed:
        Seed of the generator for permutations, random projection and the
        bandwidth subsample: the same seed and data give the same result.
    device:
        ``"auto"`` (CUDA if available, else CPU), or any torch device string.
    dtype:
        Floating dtype of the kernel computations (``torch.float32`` default).
    reduce:
        ``None``, ``"pca"`` or ``"random"``, fitted on the reference.
    n_components:
        Output dimension of ``reduce``.
    min_samples:
        Fewest rows in the reference and the window.
    max_kernel_bytes:
        Largest pooled kernel matrix held in memory at once; above it the
        kernel is streamed in row blocks (slower when several permutation
        batches are needed, never more memory).
    block_bytes:
        Target size of one kernel row block and one permutation batch.
    median_max_points:
        Pooled points used for the median-heuristic bandwidth (a seeded subset
        above it: 1024 points give ~520k distances, plenty for a median, at a
        fraction of the cost of all N²/2).
    """

    def __init__(
        self,
        alpha: float = 0.05,
        n_permutations: int = 100,
        seed: int = 0,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        reduce: Reduce | None = None,
        n_components: int = 32,
        min_samples: int = 30,
        max_kernel_bytes: int = 2 * 1024 * _MIB,
        block_bytes: int = 128 * _MIB,
        median_max_points: int = 1024,
    ) -> None:
        super().__init__(alpha=alpha)
        for name, value, lowest in (
            ("n_permutations", n_permutations, 1),
            ("seed", seed, 0),
            ("n_components", n_components, 1),
            ("min_samples", min_samples, 2),
            ("max_kernel_bytes", max_kernel_bytes, 0),
            ("block_bytes", block_bytes, 1),
            ("median_max_points", median_max_points, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise ValueError(f"{name!r} must be an int >= {lowest}, got {value!r}")
        if reduce is not None and reduce not in _REDUCERS:
            raise ValueError(f"'reduce' must be None, 'pca' or 'random'; got {reduce!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"'dtype' must be a floating torch dtype, got {dtype!r}")
        self.n_permutations = n_permutations
        self.seed = seed
        self.device = resolve_device(device)
        self.dtype = dtype
        self.reduce: Reduce | None = reduce
        self.n_components = n_components
        self.min_samples = min_samples
        self.max_kernel_bytes = max_kernel_bytes
        self.block_bytes = block_bytes
        self.median_max_points = median_max_points
        self._ref_z: torch.Tensor | None = None
        self._center: torch.Tensor | None = None
        self._projection: torch.Tensor | None = None

    # ------------------------------------------------------------------ input

    def _prepare(self, data: ArrayLike) -> np.ndarray:
        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
        arr = as_2d_float(data, type(self).__name__)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{type(self).__name__} needs finite data: drop or impute NaN/inf rows first"
            )
        return arr

    def _check_size(self, data: np.ndarray, what: str) -> None:
        if data.shape[0] < self.min_samples:
            raise InsufficientDataError(
                f"{what} has {data.shape[0]} rows; {type(self).__name__} needs at least "
                f"min_samples={self.min_samples}"
            )

    def _generator(self, stream: int) -> torch.Generator:
        """An independent, reproducible CPU generator per use (permutations, ...)."""
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + stream)
        return g

    def _to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(arr, dtype=self.dtype, device=self.device)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        if self._center is not None:
            x = x - self._center
        if self._projection is not None:
            x = x @ self._projection
        return x

    # -------------------------------------------------------------- fit/score

    def fit(self, reference: ArrayLike) -> MMDDetector:
        prepared = self._prepare(reference)
        self._check_size(prepared, "reference")
        n, d = prepared.shape
        center: torch.Tensor | None = None
        projection: torch.Tensor | None = None
        if self.reduce == "pca":
            if self.n_components > min(n, d):
                raise ValueError(
                    f"'n_components'={self.n_components} exceeds min(n_reference, n_features)"
                    f"={min(n, d)}: PCA cannot produce that many components"
                )
            x64 = torch.as_tensor(prepared, dtype=torch.float64, device=self.device)
            mean = x64.mean(dim=0)
            _, _, vh = torch.linalg.svd(x64 - mean, full_matrices=False)
            center = mean.to(self.dtype)
            projection = vh[: self.n_components].T.contiguous().to(self.dtype)
        elif self.reduce == "random":
            g = self._generator(1)
            w = torch.randn(d, self.n_components, generator=g, dtype=torch.float64)
            projection = (w / math.sqrt(self.n_components)).to(self.dtype).to(self.device)
        # Assign only once everything succeeded, so a failed refit leaves the
        # previous fit intact.
        self._center, self._projection = center, projection
        self._ref_z = self._project(self._to_tensor(prepared))
        self._reference = prepared
        return self

    def score(self, window: ArrayLike) -> DriftResult:
        ref = self.reference  # raises NotFittedError
        assert self._ref_z is not None
        win = self._prepare(window)
        if win.shape[1] != ref.shape[1]:
            raise ValueError(
                f"window has {win.shape[1]} features but the reference has {ref.shape[1]}"
            )
        self._check_size(win, "window")

        with torch.no_grad():
            z = torch.cat([self._ref_z, self._project(self._to_tensor(win))], dim=0)
            n, m = ref.shape[0], win.shape[0]
            weights = torch.cat(
                [
                    torch.full((n,), 1.0 / n, dtype=torch.float64),
                    torch.full((m,), -1.0 / m, dtype=torch.float64),
                ]
            )
            total, itemsize = n + m, torch.finfo(self.dtype).bits // 8
            kernel: torch.Tensor | None = None
            if total * total * itemsize <= min(self.max_kernel_bytes, 4 * self.block_bytes):
                # Small enough: one distance matrix serves the bandwidth and the kernel
                # (for large samples the blocked path below uses far less memory).
                sq = _sq_dists(z, z, (z * z).sum(dim=1))
                if total > self.median_max_points:  # the subset median_bandwidth would draw
                    idx = torch.randperm(total, generator=self._generator(2))
                    idx = idx[: self.median_max_points].to(z.device)
                    bandwidth = _median_distance(sq[idx][:, idx])
                else:
                    bandwidth = _median_distance(sq)
                kernel = sq.mul_(-1.0 / (2.0 * bandwidth * bandwidth)).exp_()
            else:
                bandwidth = median_bandwidth(z, self.median_max_points, self._generator(2))
            stats = self._statistics(z, bandwidth, weights, self._generator(3), kernel)

        observed = float(stats[0])
        exceed = int((stats[1:] >= observed).sum())
        p_value = (exceed + 1) / (self.n_permutations + 1)
        return DriftResult(
            detector=self.key,
            statistic=observed,
            p_value=p_value,
            threshold=self.alpha,
            drifted=p_value < self.alpha,
            n_reference=int(n),
            n_window=int(m),
            details={
                "bandwidth": bandwidth,
                "n_permutations": self.n_permutations,
                "device": str(self.device),
            },
        )

    # ----------------------------------------------------------------- kernel

    def _statistics(
        self,
        z: torch.Tensor,
        bandwidth: float,
        weights: torch.Tensor,
        generator: torch.Generator,
        kernel: torch.Tensor | None = None,
    ) -> np.ndarray:
        """MMD²_b for the observed labelling (index 0) and ``n_permutations`` relabellings.

        ``weights`` is the observed weight vector (float64, CPU); ``kernel``, when
        given, is the full kernel matrix already computed. Permutation ``i``
        is the ``i``-th ``torch.randperm`` draw from ``generator``, so the result
        does not depend on how permutations are batched.
        """
        total = z.shape[0]
        itemsize = torch.finfo(self.dtype).bits // 8
        gamma = 1.0 / (2.0 * bandwidth * bandwidth)
        z_sq = (z * z).sum(dim=1)
        rows_per_block = max(1, self.block_bytes // (total * itemsize))
        # A batch, its product with a kernel block and the float64 reduction
        # each take about batch x N x itemsize: keep the three under one block.
        perms_per_batch = max(1, self.block_bytes // (4 * total * itemsize))

        def kernel_rows(start: int, stop: int) -> torch.Tensor:
            block = _sq_dists(z[start:stop], z, z_sq)
            return block.mul_(-gamma).exp_()

        n_rows = self.n_permutations + 1
        # Holding K only pays when it is read more than once (several batches).
        if (
            kernel is None
            and n_rows > perms_per_batch
            and total * total * itemsize <= self.max_kernel_bytes
        ):
            kernel = torch.empty((total, total), dtype=self.dtype, device=self.device)
            for start in range(0, total, rows_per_block):
                stop = min(start + rows_per_block, total)
                kernel[start:stop] = kernel_rows(start, stop)

        out = np.empty(n_rows, dtype=np.float64)
        for b0 in range(0, n_rows, perms_per_batch):
            b1 = min(b0 + perms_per_batch, n_rows)
            rows = [
                weights if i == 0 else weights[torch.randperm(total, generator=generator)]
                for i in range(b0, b1)
            ]
            a = torch.stack(rows).to(device=self.device, dtype=self.dtype)
            acc = torch.zeros(b1 - b0, dtype=torch.float64, device=self.device)
            for start in range(0, total, rows_per_block):
                stop = min(start + rows_per_block, total)
                k_rows = kernel[start:stop] if kernel is not None else kernel_rows(start, stop)
                # wᵀ K w = sum over row blocks r of (w[r] @ K[r, :]) · w, for every row of A.
                partial = a[:, start:stop] @ k_rows
                acc += partial.mul_(a).sum(dim=1, dtype=torch.float64)
            out[b0:b1] = acc.cpu().numpy()
        return out


__all__ = ["MMDDetector", "median_bandwidth", "resolve_device"]
