"""Drift and performance statistics: arrays in, frozen result dataclasses out.

Pure maths on numpy/scipy (torch for MMD only), no I/O. ``import detectors``
does not import torch: the MMD detector lives in :mod:`detectors.mmd`, which is
imported on first use, by ``get_detector("mmd")`` or by touching
``detectors.MMDDetector`` (a module-level ``__getattr__``).

Registered detectors: ``ks`` (:class:`KSDetector`), ``chi2``
(:class:`Chi2Detector`), ``ks-pca`` (:class:`ComponentKSDetector`), and, loaded
on demand, ``mmd`` (:class:`MMDDetector`) and the optional alibi-detect
backends ``ks-alibi`` and ``mmd-alibi``.

Every :class:`DriftResult` carries an effect size beside its p-value:

==============  ==========================  ==========================================
detector        ``effect_name``             scale
==============  ==========================  ==========================================
``ks``          ``ks_d``                    largest KS distance over features, [0, 1]
``ks-pca``      ``ks_d``                    the same, over principal components
``chi2``        ``cramers_v``               Cramér's V, [0, 1] (PSI in ``details``)
``mmd``         ``mmd_norm``                mean-embedding distance / reference spread
==============  ==========================  ==========================================

Other modules: :mod:`detectors.multiplicity` (p-value corrections),
:mod:`detectors.reduction` (PCA on the reference), :mod:`detectors.image_quality`
(per-image quality fingerprint), :mod:`detectors.cbpe` (label-free performance
estimation), :mod:`detectors.cusum` (CUSUM charts), :mod:`detectors.performance`
(metrics with intervals).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from detectors.base import (
    Detector,
    DriftResult,
    FeatureMismatchError,
    InsufficientDataError,
    NotFittedError,
    get_detector,
    known_detectors,
)
from detectors.chi2 import Chi2Detector
from detectors.ks import KSDetector
from detectors.multiplicity import adjust_p_values
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
from detectors.reduction import ComponentKSDetector, PCAReducer

if TYPE_CHECKING:
    from detectors.mmd import MMDDetector

#: Public names whose module is imported on first access (it imports torch).
_LAZY_ATTRIBUTES = {"MMDDetector": "detectors.mmd"}


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRIBUTES.get(name)
    if module is None:
        raise AttributeError(f"module 'detectors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))


__all__ = [
    "BinaryMetrics",
    "Chi2Detector",
    "ComponentKSDetector",
    "Detector",
    "DriftResult",
    "Estimate",
    "FeatureMismatchError",
    "InsufficientDataError",
    "KSDetector",
    "MMDDetector",
    "NotFittedError",
    "PCAReducer",
    "Proportion",
    "adjust_p_values",
    "auroc_delong",
    "binary_metrics",
    "calibration_slope_intercept",
    "expected_calibration_error",
    "get_detector",
    "known_detectors",
    "wilson_interval",
]
