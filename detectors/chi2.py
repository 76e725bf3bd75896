"""Chi-squared test of homogeneity for one categorical field (scanner model,
convolution kernel, body part, ...).

Values are compared as strings: ``None`` and float NaN become the category
``"missing"`` (a field that stops being filled in is drift worth seeing), and
every other value ``v`` becomes ``str(v)`` so the categories in ``details`` are
JSON keys. The 2 x k contingency table spans the union of the categories seen in
the reference and the window, so a category that appears only in the window
(a new scanner) counts against homogeneity instead of being dropped.

The test is :func:`scipy.stats.chi2_contingency` with its defaults (Yates'
continuity correction applies only to a 2 x 2 table). When the union holds a
single category the table has no degrees of freedom: there is nothing to test,
and the result is ``statistic=0.0, p_value=1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import chi2_contingency

from detectors.base import Detector, DriftResult, InsufficientDataError

MISSING = "missing"

#: Anything array-like, including a plain list mixing str, numbers and None.
Categories = ArrayLike | Sequence[object]


def _category(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float | np.floating) and math.isnan(value):
        return MISSING
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class Chi2Detector(Detector, key="chi2"):
    """Chi-squared homogeneity test on a 1-D array of categories.

    Parameters
    ----------
    alpha:
        Level at which the p-value flags drift.
    min_samples:
        Fewest values (``"missing"`` included) in the reference and the window.
    """

    def __init__(self, alpha: float = 0.05, min_samples: int = 30) -> None:
        super().__init__(alpha=alpha)
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"'min_samples' must be a positive int, got {min_samples!r}")
        self.min_samples = min_samples

    def _prepare(self, data: Categories) -> np.ndarray:
        arr = np.asarray(data, dtype=object)
        if arr.ndim != 1:
            raise ValueError(
                f"{type(self).__name__} needs a 1-D array of categories, got shape {arr.shape}"
            )
        return np.array([_category(v) for v in arr.tolist()], dtype=object)

    def _check_size(self, data: np.ndarray, what: str) -> None:
        if data.shape[0] < self.min_samples:
            raise InsufficientDataError(
                f"{what} has {data.shape[0]} values; {type(self).__name__} needs at least "
                f"min_samples={self.min_samples}"
            )

    def fit(self, reference: Categories) -> Chi2Detector:
        prepared = self._prepare(reference)
        self._check_size(prepared, "reference")
        self._reference = prepared
        return self

    def score(self, window: Categories) -> DriftResult:
        ref = self.reference
        win = self._prepare(window)
        self._check_size(win, "window")

        ref_cats, ref_counts = np.unique(ref.astype(str), return_counts=True)
        win_cats, win_counts = np.unique(win.astype(str), return_counts=True)
        ref_map = dict(zip(ref_cats.tolist(), ref_counts.tolist(), strict=True))
        win_map = dict(zip(win_cats.tolist(), win_counts.tolist(), strict=True))
        categories = sorted(set(ref_map) | set(win_map))
        table = np.array(
            [
                [ref_map.get(c, 0) for c in categories],
                [win_map.get(c, 0) for c in categories],
            ],
            dtype=np.int64,
        )

        if len(categories) < 2:
            statistic, p_value = 0.0, 1.0
        else:
            # Every column has a positive total and both rows hold >= min_samples
            # values, so no expected frequency is zero and scipy does not raise.
            res = chi2_contingency(table)
            statistic, p_value = float(res.statistic), float(res.pvalue)

        n_ref, n_win = int(ref.shape[0]), int(win.shape[0])
        return DriftResult(
            detector=self.key,
            statistic=statistic,
            p_value=p_value,
            threshold=self.alpha,
            drifted=p_value < self.alpha,
            n_reference=n_ref,
            n_window=n_win,
            details={
                "categories": {
                    c: {
                        "reference": ref_map.get(c, 0) / n_ref,
                        "window": win_map.get(c, 0) / n_win,
                    }
                    for c in categories
                },
                "new_categories": [c for c in categories if c not in ref_map],
            },
        )


__all__ = ["MISSING", "Chi2Detector"]
