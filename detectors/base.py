"""Detector interface and registry.

A detector is one small class: ``fit(reference)`` then ``score(window)``
returning a frozen :class:`DriftResult`. Detectors register by name through
``__init_subclass__(key=...)``; :func:`get_detector` raises with the sorted list
of known keys for an unknown name, and a duplicate key fails at import time.

This package imports numpy/scipy/torch only: arrays in, frozen results out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


class InsufficientDataError(ValueError):
    """A sample is too small for the test to mean anything."""


@dataclass(frozen=True, slots=True)
class DriftResult:
    """Outcome of one two-sample test.

    ``drifted`` is ``p_value < threshold``. ``details`` holds detector-specific,
    JSON-serialisable extras (per-feature p-values, the feature that drifted most,
    effect sizes) as a flat mapping of plain Python values.
    """

    detector: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    n_reference: int
    n_window: int
    details: dict[str, Any] = field(default_factory=dict)


class Detector:
    """Base class. Subclasses declare ``class X(Detector, key="name")``."""

    registry: ClassVar[dict[str, type[Detector]]] = {}
    key: ClassVar[str] = ""

    def __init_subclass__(cls, key: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if key is None:
            return
        if key in Detector.registry:
            raise TypeError(
                f"detector key {key!r} is already registered by "
                f"{Detector.registry[key].__qualname__}"
            )
        cls.key = key
        Detector.registry[key] = cls

    def __init__(self, alpha: float = 0.05) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"'alpha' must be in (0, 1), got {alpha!r}")
        self.alpha = alpha
        self._reference: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            raise NotFittedError(
                f"{type(self).__name__} has not been fit: call fit(reference) first"
            )
        return self._reference

    def fit(self, reference: ArrayLike) -> Detector:
        self._reference = self._prepare(reference)
        return self

    def score(self, window: ArrayLike) -> DriftResult:
        raise NotImplementedError

    def _prepare(self, data: ArrayLike) -> np.ndarray:
        return np.asarray(data)


def as_2d_float(data: ArrayLike, detector: str) -> np.ndarray:
    """``data`` as a float64 array of shape (n, d); 1-D input becomes one feature."""
    try:
        arr = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{detector} needs numeric data: {exc}") from exc
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{detector} needs data of shape (n,) or (n, d), got {arr.shape}")
    return arr


def get_detector(key: str) -> type[Detector]:
    """The detector class registered under ``key``."""
    try:
        return Detector.registry[key]
    except KeyError:
        known = ", ".join(sorted(Detector.registry))
        raise KeyError(f"unknown detector {key!r}; known detectors: {known}") from None


__all__ = [
    "Detector",
    "DriftResult",
    "InsufficientDataError",
    "NotFittedError",
    "as_2d_float",
    "get_detector",
]
