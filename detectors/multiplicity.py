"""Multiple-testing corrections for a family of p-values.

One drift check usually runs several tests at once (one KS test per feature,
one MMD p-value per kernel bandwidth, one test per image-quality feature);
without a correction the chance that *some* test fires on a quiet week grows
with the number of tests. :func:`adjust_p_values` turns the raw p-values into
adjusted ones that are compared with ``alpha`` directly:

==============  ==========================================  =======================
method          controls                                    assumption
==============  ==========================================  =======================
``bonferroni``  family-wise error rate (any false alarm)    none
``holm``        family-wise error rate, uniformly more      none
                powerful than Bonferroni (step-down)
``fdr_bh``      false discovery rate (share of flagged      independent or positively
                features that did not drift; Benjamini-      dependent tests
                Hochberg step-up)
==============  ==========================================  =======================

Pure numpy; no I/O.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

Correction = Literal["bonferroni", "holm", "fdr_bh"]
CORRECTIONS: tuple[str, ...] = get_args(Correction)


def check_correction(method: object, name: str = "method") -> None:
    """ValueError unless ``method`` is one of :data:`CORRECTIONS`."""
    if method not in CORRECTIONS:
        raise ValueError(f"'{name}' must be one of {', '.join(CORRECTIONS)}; got {method!r}")


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
    check_correction(method)
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


__all__ = ["CORRECTIONS", "Correction", "adjust_p_values", "check_correction"]
