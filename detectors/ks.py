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

Effect size
    ``effect_size`` is the largest KS distance ``D`` over the features
    (``effect_name="ks_d"``): the largest vertical gap between the reference's
    and the window's empirical CDFs, in ``[0, 1]``, whatever the sample sizes.

    ============  ============================================================
    ``ks_d``      meaning
    ============  ============================================================
    0             identical empirical distributions
    ~0.1          small: a 0.25 SD mean shift of a normal feature gives ~0.1
    ~0.2 - 0.4    moderate to large (0.5 SD shift ~0.2, 1 SD ~0.38)
    1             disjoint: every window value lies beyond every reference one
    ============  ============================================================

:func:`adjust_p_values` lives in :mod:`detectors.multiplicity` and is
re-exported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from detectors.base import (
    Data,
    Detector,
    DriftResult,
    InsufficientDataError,
    as_2d_float,
    check_min_samples,
)
from detectors.multiplicity import Correction, adjust_p_values, check_correction


def _ks_2samp(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``ks_2samp(x, y)`` with scipy's own exact -> asymptotic fallback made quiet.

    With ``method="auto"`` scipy tries the exact distribution and, when that
    fails numerically, warns and uses the asymptotic one. We take the same
    fallback explicitly so the result is identical but no warning escapes.
    Imported here: ``scipy.stats`` costs ~1 s and ~50 MB to import, and most
    daily check runs have no new window to test.
    """
    from scipy.stats import ks_2samp

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
        super().__init__(alpha=alpha, min_samples=check_min_samples(min_samples))
        check_correction(correction, "correction")
        if feature_names is not None:
            if isinstance(feature_names, str):
                raise ValueError("'feature_names' must be a sequence of str, not a single str")
            feature_names = [str(name) for name in feature_names]
            if len(set(feature_names)) != len(feature_names):
                raise ValueError(f"'feature_names' must be unique, got {feature_names!r}")
        self.correction: Correction = correction
        self.feature_names: list[str] | None = feature_names

    def _prepare(self, data: Data) -> np.ndarray:
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

    def _check_size(self, data: np.ndarray, what: str) -> None:
        counts = np.sum(~np.isnan(data), axis=0)
        names = self._names(data.shape[1])
        for name, count in zip(names, counts, strict=True):
            if count < self.min_samples:
                raise InsufficientDataError(
                    f"{what} has {int(count)} non-missing values of {data.shape[0]} rows for "
                    f"feature {name!r}; {type(self).__name__} needs at least "
                    f"min_samples={self.min_samples}"
                )

    def _score(self, window: np.ndarray) -> DriftResult:
        return self._compare(self.reference, window, self._names(window.shape[1]), {})

    def _compare(
        self,
        ref: np.ndarray,
        win: np.ndarray,
        names: Sequence[str],
        extra: dict[str, object],
    ) -> DriftResult:
        """Column-by-column KS of ``ref`` against ``win`` (same width), corrected."""
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
        return self._result(
            statistic=float(stats[worst]),
            p_value=float(corrected[worst]),
            n_window=int(win.shape[0]),
            details={
                "feature": names[worst],
                "per_feature": {
                    name: {"statistic": float(s), "p_value": float(p)}
                    for name, s, p in zip(names, stats, corrected, strict=True)
                },
                **extra,
            },
            effect_size=float(stats.max()),
            effect_name="ks_d",
        )


__all__ = ["KSDetector", "adjust_p_values"]
