"""Detector interface, the shared fit/score template and the registry.

A detector is one small class: ``fit(reference)`` then ``score(window)``
returning a frozen :class:`DriftResult`.

Template method
    :meth:`Detector.fit` and :meth:`Detector.score` are the public entry points
    and are the same for every detector; they do the shared checks once and
    then hand a prepared array to the subclass's private hooks::

        fit(reference)  -> _prepare -> _check_size("reference") -> _fit(array)
        score(window)   -> fitted?  -> _prepare -> feature count -> _check_size("window")
                        -> _score(array) -> DriftResult

    * ``_prepare(data)`` converts and validates the input (dtype, shape,
      finiteness); the default is ``np.asarray``.
    * ``_check_size(data, what)`` raises :class:`InsufficientDataError` when a
      sample is below ``min_samples`` (rows by default; the KS detector counts
      non-missing values per feature).
    * ``score`` before ``fit`` raises :class:`NotFittedError`
      ("X has not been fit: call fit(reference) first"); a 2-D window whose
      column count differs from the reference's raises
      :class:`FeatureMismatchError` (a :class:`ValueError`).
    * ``_fit(reference)`` builds whatever the detector derives from the
      reference (projections, ...); ``self.reference`` is assigned only after it
      returns, so a failed refit keeps the previous fit.
    * ``_score(window)`` does the test and returns the :class:`DriftResult`.

Registry
    Detectors register by name through ``__init_subclass__(key=...)``; a
    duplicate key fails at import time. Some detectors live in modules that are
    imported on demand only (``mmd`` needs torch, the alibi backend an optional
    package): their keys are listed in :data:`LAZY_DETECTORS`, and
    :func:`get_detector` imports the module the first time the key is asked
    for. An unknown key raises :class:`KeyError` with the sorted list of every
    known key, lazy ones included.

This module imports numpy only: arrays in, frozen results out.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, final

import numpy as np
from numpy.typing import ArrayLike

#: What ``fit`` and ``score`` accept: anything array-like, including a plain list
#: mixing str, numbers and None (categorical detectors).
Data = ArrayLike | Sequence[object]

#: Keys registered by modules that are imported on first use (see the module
#: docstring): key -> module that registers it.
LAZY_DETECTORS: dict[str, str] = {
    "mmd": "detectors.mmd",
    "mmd-alibi": "detectors.alibi_backend",
    "ks-alibi": "detectors.alibi_backend",
}


class NotFittedError(RuntimeError):
    """``score`` was called before ``fit``."""


class InsufficientDataError(ValueError):
    """A sample is too small for the test to mean anything."""


class FeatureMismatchError(ValueError):
    """The window does not have the reference's number of features."""


@dataclass(frozen=True, slots=True)
class DriftResult:
    """Outcome of one two-sample test.

    ``drifted`` is ``p_value < threshold``. ``details`` holds detector-specific,
    JSON-serialisable extras (per-feature p-values, the feature that drifted most,
    ...) as a flat mapping of plain Python values.

    ``effect_size`` says *how much* the distribution moved, independently of the
    sample sizes (the p-value says how sure we are that it moved at all);
    ``effect_name`` names the measure (``"ks_d"``, ``"cramers_v"``,
    ``"mmd_norm"``; see each detector's module docstring for its scale). It is
    ``nan`` with an empty name when a detector has no effect size.
    """

    detector: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    n_reference: int
    n_window: int
    details: dict[str, Any] = field(default_factory=dict)
    effect_size: float = math.nan
    effect_name: str = ""


class Detector:
    """Base class. Subclasses declare ``class X(Detector, key="name")``.

    Subclasses implement ``_score`` (and usually ``_prepare`` and ``_fit``);
    they do not override ``fit`` or ``score`` (see the module docstring).
    """

    registry: ClassVar[dict[str, type[Detector]]] = {}
    key: ClassVar[str] = ""
    #: What ``_check_size`` counts, for its message ("rows", "values").
    size_unit: ClassVar[str] = "rows"

    def __init_subclass__(cls, key: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if key is None:
            return
        if key in Detector.registry:
            raise TypeError(
                f"detector key {key!r} is already registered by "
                f"{Detector.registry[key].__qualname__}"
            )
        lazy_module = LAZY_DETECTORS.get(key)
        if lazy_module is not None and cls.__module__ != lazy_module:
            raise TypeError(f"detector key {key!r} is reserved for {lazy_module}")
        cls.key = key
        Detector.registry[key] = cls

    def __init__(self, alpha: float = 0.05, min_samples: int = 1) -> None:
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"'alpha' must be in (0, 1), got {alpha!r}")
        self.alpha = alpha
        self.min_samples = min_samples
        self._reference: np.ndarray | None = None

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            raise NotFittedError(
                f"{type(self).__name__} has not been fit: call fit(reference) first"
            )
        return self._reference

    @property
    def fitted(self) -> bool:
        return self._reference is not None

    # ------------------------------------------------------------ the template

    @final
    def fit(self, reference: Data) -> Self:
        """Prepare and check ``reference``, then fit the detector on it."""
        prepared = self._prepare(reference)
        self._check_size(prepared, "reference")
        self._fit(prepared)
        self._reference = prepared
        return self

    @final
    def score(self, window: Data) -> DriftResult:
        """Test ``window`` against the fitted reference."""
        ref = self.reference  # NotFittedError before fit
        win = self._prepare(window)
        if ref.ndim == 2 and win.ndim == 2 and win.shape[1] != ref.shape[1]:
            raise FeatureMismatchError(
                f"window has {win.shape[1]} features but the reference has {ref.shape[1]}"
            )
        self._check_size(win, "window")
        return self._score(win)

    # ------------------------------------------------------------------- hooks

    def _prepare(self, data: Data) -> np.ndarray:
        return np.asarray(data)

    def _check_size(self, data: np.ndarray, what: str) -> None:
        n = int(data.shape[0])
        if n < self.min_samples:
            raise InsufficientDataError(
                f"{what} has {n} {self.size_unit}; {type(self).__name__} needs at least "
                f"min_samples={self.min_samples}"
            )

    def _fit(self, reference: np.ndarray) -> None:
        """Derive what the detector needs from the prepared reference (default: nothing)."""

    def _score(self, window: np.ndarray) -> DriftResult:
        raise NotImplementedError

    def _result(
        self,
        *,
        statistic: float,
        p_value: float,
        n_window: int,
        details: dict[str, Any],
        effect_size: float = math.nan,
        effect_name: str = "",
        n_reference: int | None = None,
    ) -> DriftResult:
        """A :class:`DriftResult` for this detector and its fitted reference
        (``n_reference``: its size, when the detector keeps it in another form)."""
        return DriftResult(
            detector=self.key,
            statistic=float(statistic),
            p_value=float(p_value),
            threshold=self.alpha,
            drifted=bool(p_value < self.alpha),
            n_reference=int(self.reference.shape[0] if n_reference is None else n_reference),
            n_window=int(n_window),
            details=details,
            effect_size=float(effect_size),
            effect_name=effect_name,
        )


def check_min_samples(value: object, lowest: int = 1) -> int:
    """``value`` if it is an int ``>= lowest`` (not a bool), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        if lowest == 1:
            raise ValueError(f"'min_samples' must be a positive int, got {value!r}")
        raise ValueError(f"'min_samples' must be an int >= {lowest}, got {value!r}")
    return value


def as_2d_float(data: Data, detector: str) -> np.ndarray:
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


def known_detectors() -> list[str]:
    """Every key :func:`get_detector` accepts, sorted (lazy keys included)."""
    return sorted(set(Detector.registry) | set(LAZY_DETECTORS))


def get_detector(key: str) -> type[Detector]:
    """The detector class registered under ``key``, importing its module if lazy."""
    if key not in Detector.registry and key in LAZY_DETECTORS:
        importlib.import_module(LAZY_DETECTORS[key])
    try:
        return Detector.registry[key]
    except KeyError:
        known = ", ".join(known_detectors())
        raise KeyError(f"unknown detector {key!r}; known detectors: {known}") from None


__all__ = [
    "LAZY_DETECTORS",
    "Data",
    "Detector",
    "DriftResult",
    "FeatureMismatchError",
    "InsufficientDataError",
    "NotFittedError",
    "as_2d_float",
    "check_min_samples",
    "get_detector",
    "known_detectors",
]
