"""Per-feature two-sample Kolmogorov–Smirnov test with a multiple-testing correction.

Each column of the reference is compared with the same column of the window by
:func:`scipy.stats.ks_2samp`; the ``d`` p-values are corrected for multiplicity
(Bonferroni, Holm or Benjamini–Hochberg) and the detector reports the feature
with the smallest corrected p-value. ``drifted`` therefore means "at least one
feature drifted" at family-wise level ``alpha`` (Bonferroni, Holm) or at false
discovery rate ``alpha`` (``fdr_bh``).

Missing values (NaN) are dropped per feature, so a sparse column does not throw
away rows of the others; each feature must still keep ``min_samples`` values on
both sides, otherwise :class:`InsufficientDataError` is raised (never a silent
skip).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp

from detectors.base import Detector, DriftResult, InsufficientDataError, as_2d_float

Correction = Literal["bonferroni", "holm", "fdr_bh"]
_CORRECTIONS: tuple[str, ...] = get_args(Correction)


def adjust_p_values(p_values: ArrayLike, method: Correction = "bonferroni") -> np.ndarray:
    """Multiplicity-adjusted p-values, in the input order, clipped to ``[0, 1]``.

    ``holm`` is the step-down Holm–Bonferroni procedure and ``fdr_bh`` the
    step-up Benjamini–Hochberg procedure; both are made monotone in the sorted
    order exactly as statsmodels' ``multipletests`` does, so an adjusted p-value
    below ``alpha`` means "rejected by the procedure at level ``alpha``".
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"'p_values' must be 1-D, got shape {p.shape}")
    if method not in _CORRECTIONS:
        raise ValueError(f"'method' must be one of {', '.join(_CORRECTIONS)}; got {method!r}")
    k = p.size
    if k == 0:
        return p.copy()
    if method == "bonferroni":
        return np.minimum(p * k, 1.0)

    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        # p_(i) * (k - i + 1), then a running maximum from the smallest upwards.
        factors = np.arange(k, 0, -1, dtype=np.float64)
        stepped = np.maximum.accumulate(ranked * factors)
    else:
        # p_(i) * k / i, then a running minimum from the largest downwards.
        factors = k / np.arange(1, k + 1, dtype=np.float64)
        stepped = np.minimum.accumulate((ranked * factors)[::-1])[::-1]
    adjusted = np.empty(k, dtype=np.float64)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


def _ks_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``ks_2samp(x, y)`` with scipy's own exact -> asymptotic fallback made quiet.

    With ``method="auto"`` scipy tries the exact distribution and, when that
    fails numerically, warns and uses the asymptotic one. We take the same
    fallback explicitly so the result is identical but no warning escapes.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            res = ks_2samp(x, y)
        except RuntimeWarning:
            res = None
    if res is None:
        res = ks_2samp(x, y, method="asymp")
    return float(res.statistic), float(res.pvalue)


class KSDetector(Detector, key="ks"):
    """Per-feature KS test on 1-D ``(n,)`` or 2-D ``(n, d)`` numeric data.

    Parameters
    ----------
    alpha:
        Level at which the corrected p-value flags drift.
    correction:
        ``"bonferroni"`` (default), ``"holm"`` or ``"fdr_bh"``.
    feature_names:
        One name per column, used in ``details``; defaults to ``feature_0``, ...
    min_samples:
        Fewest non-missing values per feature in the reference and the window.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        correction: Correction = "bonferroni",
        feature_names: Sequence[str] | None = None,
        min_samples: int = 30,
    ) -> None:
        super().__init__(alpha=alpha)
        if correction not in _CORRECTIONS:
            raise ValueError(
                f"'correction' must be one of {', '.join(_CORRECTIONS)}; got {correction!r}"
            )
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"'min_samples' must be a positive int, got {min_samples!r}")
        if feature_names is not None:
            if isinstance(feature_names, str):
                raise ValueError("'feature_names' must be a sequence of str, not a single str")
            feature_names = [str(name) for name in feature_names]
            if len(set(feature_names)) != len(feature_names):
                raise ValueError(f"'feature_names' must be unique, got {feature_names!r}")
        self.correction: Correction = correction
        self.min_samples = min_samples
        self.feature_names: list[str] | None = feature_names

    def _prepare(self, data: ArrayLike) -> np.ndarray:
        arr = as_2d_float(data, type(self).__name__)
        if self.feature_names is not None and len(self.feature_names) != arr.shape[1]:
            raise ValueError(
                f"data has {arr.shape[1]} features but 'feature_names' has "
                f"{len(self.feature_names)} names"
            )
        return arr

    def _names(self, d: int) -> list[str]:
        return (
            self.feature_names
            if self.feature_names is not None
            else [f"feature_{i}" for i in range(d)]
        )

    def _check_counts(self, data: np.ndarray, what: str) -> None:
        counts = np.sum(~np.isnan(data), axis=0)
        names = self._names(data.shape[1])
        for name, count in zip(names, counts, strict=True):
            if count < self.min_samples:
                raise InsufficientDataError(
                    f"{what} has {int(count)} non-missing values of {data.shape[0]} rows for "
                    f"feature {name!r}; {type(self).__name__} needs at least "
                    f"min_samples={self.min_samples}"
                )

    def fit(self, reference: ArrayLike) -> KSDetector:
        prepared = self._prepare(reference)
        self._check_counts(prepared, "reference")
        self._reference = prepared
        return self

    def score(self, window: ArrayLike) -> DriftResult:
        ref = self.reference
        win = self._prepare(window)
        if win.shape[1] != ref.shape[1]:
            raise ValueError(
                f"window has {win.shape[1]} features but the reference has {ref.shape[1]}"
            )
        self._check_counts(win, "window")

        d = ref.shape[1]
        stats = np.empty(d)
        raw = np.empty(d)
        for j in range(d):
            x = ref[:, j]
            y = win[:, j]
            stats[j], raw[j] = _ks_2samp(x[~np.isnan(x)], y[~np.isnan(y)])
        corrected = adjust_p_values(raw, self.correction)

        # Smallest corrected p first; ties (p clipped to 1, or underflow to 0)
        # go to the feature with the larger KS distance.
        worst = int(np.lexsort((-stats, corrected))[0])
        names = self._names(d)
        p_value = float(corrected[worst])
        return DriftResult(
            detector=self.key,
            statistic=float(stats[worst]),
            p_value=p_value,
            threshold=self.alpha,
            drifted=p_value < self.alpha,
            n_reference=int(ref.shape[0]),
            n_window=int(win.shape[0]),
            details={
                "feature": names[worst],
                "per_feature": {
                    name: {"statistic": float(s), "p_value": float(p)}
                    for name, s, p in zip(names, stats, corrected, strict=True)
                },
            },
        )


__all__ = ["KSDetector", "adjust_p_values"]
