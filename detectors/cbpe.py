"""Confidence-based performance estimation (CBPE) before labels arrive.

Clinician-confirmed diagnoses arrive weeks after the prediction. Until then the
performance of a recent window can only be *estimated*, from the scores alone,
the way NannyML's CBPE does it.

Assumption (say it wherever the estimate is shown): the scores are
**calibrated in the window being estimated**: among cases scored ``p`` a
fraction ``p`` truly has the finding, ``P(y = 1 | score = p) = p``. Then each
case contributes its expected share of the confusion matrix at the operating
threshold ``t``::

    E[TP] = sum_{s_i >= t} p_i        E[FP] = sum_{s_i >= t} (1 - p_i)
    E[FN] = sum_{s_i <  t} p_i        E[TN] = sum_{s_i <  t} (1 - p_i)

and sensitivity, specificity, PPV and NPV are estimated from these expected
counts. The estimate follows changes in the *case mix* (prevalence, how many
cases fall near the threshold: covariate shift). It cannot see a change in
``P(y | score)`` itself (concept shift, or a scanner change that makes the model
confidently wrong): under such a change the scores are no longer calibrated
and the estimate is wrong, which is exactly why it only warns and the labelled
performance, once matured, decides. Scores that are not calibrated should be
recalibrated on labelled reference data first: fit a :class:`Calibrator` on
the reference's scores and labels and pass it as ``calibrator=`` (or pass any
function as ``calibrate=``). The operating decision stays ``raw score >=
threshold``; only the probability each case contributes is calibrated.

Calibrator
    Isotonic regression of the reference labels on the reference scores (the
    pool-adjacent-violators fit of :func:`scipy.optimize.isotonic_regression`,
    equal scores pooled first): the non-decreasing step function closest to
    the labels in least squares, which assumes only that a higher score never
    means a lower probability. New scores are mapped by linear interpolation
    between the fitted points (constant beyond the reference's range), and
    clipped to ``[1e-6, 1 - 1e-6]`` so no case is certain. With it, the
    assumption becomes "``P(y | score)`` in the window is what it was in the
    reference": case-mix changes are still followed, concept shift still is not.

The interval reflects the randomness of the labels that have not arrived yet
(each ``y_i`` a Bernoulli(``p_i``) draw; delta method on the two independent
sums ``TP`` and ``FN``), not the error in the calibration itself.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import isotonic_regression
from scipy.special import ndtri  # norm.ppf without importing scipy.stats

ASSUMPTION = (
    "label-free estimate (CBPE): assumes the scores are calibrated in this window, "
    "P(finding | score = p) = p; blind to changes in that relation (concept shift)"
)


@dataclass(frozen=True, slots=True)
class EstimatedMetric:
    """An estimated metric with a normal-approximation interval clipped to [0, 1].

    ``expected_denominator`` is the expected number of cases behind the metric
    (expected positives for sensitivity, ...): compare it with a minimum sample.
    """

    value: float
    lower: float
    upper: float
    expected_denominator: float


@dataclass(frozen=True, slots=True)
class CBPEResult:
    """Estimated confusion-matrix metrics at one threshold."""

    sensitivity: EstimatedMetric
    specificity: EstimatedMetric
    ppv: EstimatedMetric
    npv: EstimatedMetric
    expected_tp: float
    expected_fp: float
    expected_tn: float
    expected_fn: float
    expected_prevalence: float
    n: int
    threshold: float
    assumption: str = ASSUMPTION


class Calibrator:
    """Isotonic recalibration of scores, fitted on labelled reference data.

    ``Calibrator().fit(reference_scores, reference_labels)(scores)`` returns
    calibrated probabilities in ``[eps, 1 - eps]``; see the module docstring.
    After ``fit``: ``thresholds_`` (the distinct reference scores, ascending)
    and ``values_`` (the fitted probability at each).
    """

    def __init__(self, eps: float = 1e-6) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"'eps' must be in (0, 0.5), got {eps!r}")
        self.eps = eps
        self.thresholds_: np.ndarray | None = None
        self.values_: np.ndarray | None = None

    def fit(self, scores: ArrayLike, labels: ArrayLike) -> Calibrator:
        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels)
        if s.ndim != 1 or y.shape != s.shape:
            raise ValueError(
                f"'scores' and 'labels' must be 1-D of equal length, got {s.shape} and {y.shape}"
            )
        if s.size == 0:
            raise ValueError("Calibrator needs at least one labelled case")
        if not np.isfinite(s).all():
            raise ValueError("'scores' must be finite (no NaN or inf)")
        if y.dtype != np.bool_:
            values = set(np.unique(y).tolist())
            if not values <= {0, 1}:
                raise ValueError(f"'labels' must hold 0/1, got values {sorted(values)!r}")
        yf = y.astype(np.float64)
        # Pool equal scores (their mean label, weighted by count), then PAVA.
        thresholds, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=yf, minlength=thresholds.size) / counts
        fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x
        self.thresholds_ = thresholds
        self.values_ = np.clip(fitted, self.eps, 1.0 - self.eps)
        return self

    def __call__(self, scores: ArrayLike) -> np.ndarray:
        """Calibrated probabilities for ``scores`` (same shape)."""
        if self.thresholds_ is None or self.values_ is None:
            raise RuntimeError("Calibrator has not been fit: call fit(scores, labels) first")
        s = np.asarray(scores, dtype=np.float64)
        out = np.interp(s, self.thresholds_, self.values_)
        return np.clip(out, self.eps, 1.0 - self.eps)

    transform = __call__


def _metric(
    value: float, gradient: tuple[float, float], var_tp: float, var_fn: float, z: float, den: float
) -> EstimatedMetric:
    if not math.isfinite(value):
        return EstimatedMetric(math.nan, 0.0, 1.0, den)
    se = math.sqrt(max(gradient[0] ** 2 * var_tp + gradient[1] ** 2 * var_fn, 0.0))
    return EstimatedMetric(value, max(0.0, value - z * se), min(1.0, value + z * se), den)


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def estimate_performance(
    scores: ArrayLike,
    threshold: float,
    *,
    confidence: float = 0.95,
    calibrate: Callable[[np.ndarray], np.ndarray] | None = None,
    calibrator: Calibrator | None = None,
) -> CBPEResult:
    """Estimate sensitivity, specificity, PPV and NPV from ``scores`` alone.

    ``scores`` are the model's outputs in ``[0, 1]``; the decision is
    ``score >= threshold`` (as in :func:`detectors.performance.binary_metrics`).
    ``calibrate`` maps raw scores to calibrated probabilities (e.g. an isotonic
    fit on labelled reference data); ``calibrator`` is a fitted
    :class:`Calibrator` used the same way (give one or the other). Without
    either the scores are taken as calibrated. The decision ``score >=
    threshold`` is always made on the raw scores. See the module docstring for
    the assumption.
    """
    if calibrator is not None:
        if calibrate is not None:
            raise ValueError("give 'calibrate' or 'calibrator', not both")
        calibrate = calibrator
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"'scores' must be 1-D, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("'scores' must be finite (no NaN or inf)")
    if not math.isfinite(threshold):
        raise ValueError(f"'threshold' must be a finite number, got {threshold!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"'confidence' must be in (0, 1), got {confidence!r}")
    p = np.asarray(calibrate(s), dtype=np.float64) if calibrate is not None else s
    if p.shape != s.shape or (p.size and (p.min() < 0.0 or p.max() > 1.0)):
        raise ValueError("calibrated probabilities must have the scores' shape and lie in [0, 1]")
    z = float(ndtri(0.5 + confidence / 2.0))
    flagged = s >= threshold
    n = int(s.size)
    n_pp = int(flagged.sum())
    n_pn = n - n_pp
    tp = float(p[flagged].sum())
    fn = float(p[~flagged].sum())
    fp = n_pp - tp
    tn = n_pn - fn
    var_tp = float((p[flagged] * (1 - p[flagged])).sum())
    var_fn = float((p[~flagged] * (1 - p[~flagged])).sum())
    positives = tp + fn
    negatives = fp + tn
    # Every metric is a function of the two independent sums TP and FN; the
    # gradients below are d(metric)/d(TP) and d(metric)/d(FN).
    sens = _ratio(tp, positives)
    sens_grad = (fn / positives**2, -tp / positives**2) if positives > 0 else (0.0, 0.0)
    spec = _ratio(tn, negatives)
    # spec = (n_pn - FN) / (n - TP - FN)
    spec_grad = (
        (tn / negatives**2, (tn - negatives) / negatives**2) if negatives > 0 else (0.0, 0.0)
    )
    ppv = _ratio(tp, n_pp)
    npv = _ratio(tn, n_pn)
    return CBPEResult(
        sensitivity=_metric(sens, sens_grad, var_tp, var_fn, z, positives),
        specificity=_metric(spec, spec_grad, var_tp, var_fn, z, negatives),
        ppv=_metric(ppv, (1.0 / n_pp if n_pp else 0.0, 0.0), var_tp, var_fn, z, float(n_pp)),
        npv=_metric(npv, (0.0, -1.0 / n_pn if n_pn else 0.0), var_tp, var_fn, z, float(n_pn)),
        expected_tp=tp,
        expected_fp=fp,
        expected_tn=tn,
        expected_fn=fn,
        expected_prevalence=_ratio(positives, n),
        n=n,
        threshold=float(threshold),
    )


__all__ = ["ASSUMPTION", "CBPEResult", "Calibrator", "EstimatedMetric", "estimate_performance"]
