"""Drift and performance statistics: arrays in, frozen result dataclasses out.

Pure maths on numpy/scipy/torch, no I/O. Importing the package registers every
detector, so ``get_detector("mmd")`` works after ``import detectors``.

Registered detectors: ``ks`` (:class:`KSDetector`), ``chi2``
(:class:`Chi2Detector`), ``mmd`` (:class:`MMDDetector`).
"""

from detectors.base import (
    Detector,
    DriftResult,
    InsufficientDataError,
    NotFittedError,
    get_detector,
)
from detectors.chi2 import Chi2Detector
from detectors.ks import KSDetector
from detectors.mmd import MMDDetector
from detectors.performance import (
    BinaryMetrics,
    Estimate,
    Proportion,
    auroc_delong,
    binary_metrics,
    calibration_slope_intercept,
    expected_calibration_error,
    wilson_interval,
)

__all__ = [
    "BinaryMetrics",
    "Chi2Detector",
    "Detector",
    "DriftResult",
    "Estimate",
    "InsufficientDataError",
    "KSDetector",
    "MMDDetector",
    "NotFittedError",
    "Proportion",
    "auroc_delong",
    "binary_metrics",
    "calibration_slope_intercept",
    "expected_calibration_error",
    "get_detector",
    "wilson_interval",
]
