"""Performance metrics for a binary finding, with confidence intervals.

Pure functions on arrays (numpy/scipy only) returning frozen dataclasses, used by
the performance job to compare a deployed model with its clearance baseline.

Conventions
    * ``y_true`` holds 0/1 (or bool) labels, ``scores`` the model's probability
      of the positive class in ``[0, 1]`` (``binary_metrics`` accepts any finite
      score and a matching threshold).
    * A ratio with an empty denominator (no positives for sensitivity, ...) is
      ``nan`` with the uninformative interval ``(0, 1)``: the job reports "not
      estimable", it does not invent a number.
    * Proportions use the Wilson score interval, which keeps its coverage for
      small counts and proportions near 0 or 1 where the Wald interval fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit, ndtri  # ndtri: norm.ppf without importing scipy.stats


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"'confidence' must be in (0, 1), got {confidence!r}")
    return float(ndtri(0.5 + confidence / 2.0))


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``successes / trials``; ``(0.0, 1.0)`` when ``trials == 0``.

    ``(p̂ + z²/2n ± z sqrt(p̂(1-p̂)/n + z²/4n²)) / (1 + z²/n)`` with ``z`` the
    two-sided normal quantile for ``confidence``.
    """
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(
            f"need 0 <= successes <= trials, got successes={successes!r}, trials={trials!r}"
        )
    z = _z(confidence)
    if trials == 0:
        return 0.0, 1.0
    n = float(trials)
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == trials else min(1.0, center + half)
    return lower, upper


@dataclass(frozen=True, slots=True)
class Proportion:
    """``successes / trials`` with its Wilson interval; ``value`` is nan when ``trials == 0``."""

    value: float
    lower: float
    upper: float
    successes: int
    trials: int

    @classmethod
    def from_counts(cls, successes: int, trials: int, confidence: float = 0.95) -> Proportion:
        lower, upper = wilson_interval(successes, trials, confidence)
        value = successes / trials if trials > 0 else math.nan
        return cls(value, lower, upper, int(successes), int(trials))


@dataclass(frozen=True, slots=True)
class Estimate:
    """A point estimate with a confidence interval."""

    value: float
    lower: float
    upper: float


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    """Confusion-matrix metrics at one operating threshold."""

    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    prevalence: float
    n: int
    n_positive: int
    tp: int
    fp: int
    tn: int
    fn: int


def _labels_and_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(bool labels, float64 scores)``, both 1-D and of equal length."""
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"'y_true' and 'scores' must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(
            f"'y_true' and 'scores' must have the same length, got {y.size} and {s.size}"
        )
    if y.dtype != np.bool_:
        values = set(np.unique(y).tolist())
        if not values <= {0, 1}:
            raise ValueError(f"'y_true' must hold 0/1 labels, got values {sorted(values)!r}")
        y = y.astype(bool)
    if not np.isfinite(s).all():
        raise ValueError("'scores' must be finite (no NaN or inf)")
    return y, s


def _unit_scores(s: np.ndarray) -> None:
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"'scores' must be probabilities in [0, 1], got range [{s.min()}, {s.max()}]"
        )


def binary_metrics(
    y_true: ArrayLike, scores: ArrayLike, threshold: float, confidence: float = 0.95
) -> BinaryMetrics:
    """Sensitivity, specificity, PPV and NPV (Wilson intervals) at ``score >= threshold``."""
    if not math.isfinite(threshold):
        raise ValueError(f"'threshold' must be a finite number, got {threshold!r}")
    y, s = _labels_and_scores(y_true, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    n = int(y.size)
    n_pos = tp + fn
    return BinaryMetrics(
        sensitivity=Proportion.from_counts(tp, tp + fn, confidence),
        specificity=Proportion.from_counts(tn, tn + fp, confidence),
        ppv=Proportion.from_counts(tp, tp + fp, confidence),
        npv=Proportion.from_counts(tn, tn + fn, confidence),
        prevalence=n_pos / n if n > 0 else math.nan,
        n=n,
        n_positive=n_pos,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (Sun & Xu 2014, Algorithm 1)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = xs.size
    ranks_sorted = np.empty(n, dtype=np.float64)
    # Boundaries of runs of equal values in the sorted array.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], n]
    # A run occupying sorted positions [a, b) gets the mean rank (a + 1 + b) / 2.
    ranks_sorted[:] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def auroc_delong(y_true: ArrayLike, scores: ArrayLike, confidence: float = 0.95) -> Estimate:
    """AUROC with a DeLong confidence interval clipped to ``[0, 1]``.

    The variance uses the structural components of DeLong et al. (1988),
    computed in ``O(n log n)`` with midranks (Sun & Xu 2014). The AUROC is nan
    when only one class is present; the interval is nan when a class has a
    single member (its variance component is undefined).
    """
    z = _z(confidence)
    y, s = _labels_and_scores(y_true, scores)
    pos = s[y]
    neg = s[~y]
    m, n = pos.size, neg.size
    if m == 0 or n == 0:
        return Estimate(math.nan, math.nan, math.nan)
    tz = _midranks(np.concatenate([pos, neg]))
    tx = _midranks(pos)
    ty = _midranks(neg)
    auc = float((tz[:m].sum() - m * (m + 1) / 2.0) / (m * n))
    if m < 2 or n < 2:
        return Estimate(auc, math.nan, math.nan)
    v10 = (tz[:m] - tx) / n  # per positive: share of negatives scored below it
    v01 = 1.0 - (tz[m:] - ty) / m  # per negative: share of positives scored above it
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    half = z * math.sqrt(max(var, 0.0))
    return Estimate(auc, max(0.0, auc - half), min(1.0, auc + half))


def expected_calibration_error(y_true: ArrayLike, scores: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of ``[0, 1]``.

    ``sum_b (n_b / n) |mean score in b - observed positive rate in b|``; a score
    of exactly 1 falls in the last bin. nan for an empty sample.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"'n_bins' must be a positive int, got {n_bins!r}")
    y, s = _labels_and_scores(y_true, scores)
    _unit_scores(s)
    if s.size == 0:
        return math.nan
    bins = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    score_sums = np.bincount(bins, weights=s, minlength=n_bins)
    label_sums = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    # Per bin, (n_b / n) |mean_s - mean_y| = |sum_s - sum_y| / n; empty bins add 0.
    return float(np.abs(score_sums - label_sums).sum() / s.size)


def calibration_slope_intercept(
    y_true: ArrayLike,
    scores: ArrayLike,
    eps: float = 1e-6,
    max_iter: int = 50,
    tol: float = 1e-9,
) -> tuple[float, float]:
    """Calibration slope and intercept: logistic regression of ``y`` on ``logit(score)``.

    A calibrated model has slope 1 and intercept 0; slope < 1 means predictions
    are too extreme (over-fitting), > 1 too timid. Scores are clipped to
    ``[eps, 1 - eps]`` before the logit. Fitted by Newton–Raphson (IRLS) with
    step halving. Returns ``(nan, nan)`` when the fit does not exist: one class
    only, a constant score, separable data (the estimates diverge), or no
    convergence within ``max_iter`` Newton steps.
    """
    y, s = _labels_and_scores(y_true, scores)
    _unit_scores(s)
    if y.all() or not y.any():
        return math.nan, math.nan
    clipped = np.clip(s, eps, 1.0 - eps)
    x = np.log(clipped) - np.log1p(-clipped)
    if np.ptp(x) == 0.0:
        return math.nan, math.nan
    if x[y].min() >= x[~y].max() or x[y].max() <= x[~y].min():
        # (Quasi-)complete separation: the likelihood has no maximum.
        return math.nan, math.nan
    design = np.column_stack([x, np.ones_like(x)])
    yf = y.astype(np.float64)

    def loglik(beta: np.ndarray) -> float:
        eta = design @ beta
        # sum y*eta - log(1 + e^eta), overflow-free.
        return float(np.sum(yf * eta - np.logaddexp(0.0, eta)))

    beta = np.array([1.0, 0.0])  # start at "calibrated"
    current = loglik(beta)
    for _ in range(max_iter):
        p = expit(design @ beta)
        w = p * (1.0 - p)
        grad = design.T @ (yf - p)
        hess = (design * w[:, None]).T @ design
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return math.nan, math.nan
        t = 1.0
        while True:
            candidate = beta + t * step
            value = loglik(candidate)
            if value >= current - 1e-12 or t < 1e-8:
                break
            t /= 2.0
        beta, current = candidate, value
        if t == 1.0 and float(np.max(np.abs(step))) < tol:
            return float(beta[0]), float(beta[1])
    return math.nan, math.nan


__all__ = [
    "BinaryMetrics",
    "Estimate",
    "Proportion",
    "auroc_delong",
    "binary_metrics",
    "calibration_slope_intercept",
    "expected_calibration_error",
    "wilson_interval",
]
