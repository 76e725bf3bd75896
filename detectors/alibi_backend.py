"""Optional alibi-detect backend behind our :class:`~detectors.base.Detector` interface.

Not imported by ``detectors/__init__.py`` or any default path: alibi-detect is
BSL-1.1 licensed (production use restricted) and caps numpy < 2, so it lives in
the ``alibi`` extra and in a separate environment. Importing this module
registers ``mmd-alibi`` and ``ks-alibi``; constructing one without
alibi-detect installed raises :class:`ImportError` saying how to install it.

Results are our frozen :class:`~detectors.base.DriftResult`; the statistic is
alibi's (unbiased MMD² for ``mmd-alibi``; the largest KS distance for
``ks-alibi``) and the p-value alibi's (for KS: the smallest per-feature p-value
after alibi's correction, multiplied back to a family-wise p-value for
Bonferroni so it is comparable with :class:`~detectors.ks.KSDetector`).

Effect sizes: ``ks-alibi`` reports the largest KS distance (``"ks_d"``, as
:class:`~detectors.ks.KSDetector`); ``mmd-alibi`` reports none (``nan``): alibi's
unbiased MMD² can be negative and is not normalised, so it is not comparable
with ``mmd_norm``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detectors.base import Data, Detector, DriftResult, as_2d_float, check_min_samples

_INSTALL = (
    "alibi-detect is not installed; it is optional (BSL-1.1 licence, numpy<2): "
    "pip install 'alibi-detect==0.13.0' in a separate environment"
)


def _alibi_cd() -> Any:
    try:
        import alibi_detect.cd as cd
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    return cd


class _AlibiDetector(Detector):
    def __init__(self, alpha: float = 0.05, min_samples: int = 30) -> None:
        super().__init__(alpha=alpha, min_samples=check_min_samples(min_samples))
        self._cd = _alibi_cd()
        self._impl: Any = None

    def _prepare(self, data: Data) -> np.ndarray:
        return as_2d_float(data, type(self).__name__).astype(np.float32)

    def _fit(self, reference: np.ndarray) -> None:
        self._impl = self._build(reference)

    def _build(self, reference: np.ndarray) -> Any:
        raise NotImplementedError


class AlibiMMDDetector(_AlibiDetector, key="mmd-alibi"):
    """alibi-detect ``MMDDrift`` (pytorch backend, Gaussian kernel, median heuristic)."""

    def __init__(
        self,
        alpha: float = 0.05,
        n_permutations: int = 100,
        min_samples: int = 30,
        device: str = "cpu",
    ) -> None:
        super().__init__(alpha=alpha, min_samples=min_samples)
        self.n_permutations = n_permutations
        self.device = device

    def _build(self, reference: np.ndarray) -> Any:
        return self._cd.MMDDrift(
            reference,
            backend="pytorch",
            p_val=self.alpha,
            n_permutations=self.n_permutations,
            device=self.device,
        )

    def _score(self, window: np.ndarray) -> DriftResult:
        data = self._impl.predict(window)["data"]
        return self._result(
            statistic=float(data["distance"]),
            p_value=float(data["p_val"]),
            n_window=int(window.shape[0]),
            details={"backend": "alibi-detect", "n_permutations": self.n_permutations},
        )


class AlibiKSDetector(_AlibiDetector, key="ks-alibi"):
    """alibi-detect ``KSDrift`` with a Bonferroni correction (asymptotic KS p-values)."""

    def _build(self, reference: np.ndarray) -> Any:
        return self._cd.KSDrift(reference, p_val=self.alpha, correction="bonferroni")

    def _score(self, window: np.ndarray) -> DriftResult:
        data = self._impl.predict(window, return_p_val=True, return_distance=True)["data"]
        p_values = np.atleast_1d(np.asarray(data["p_val"], dtype=np.float64))
        distances = np.atleast_1d(np.asarray(data["distance"], dtype=np.float64))
        family = float(min(1.0, p_values.min() * p_values.size))
        return self._result(
            statistic=float(distances.max()),
            p_value=family,
            n_window=int(window.shape[0]),
            details={"backend": "alibi-detect", "most_drifted": int(np.argmin(p_values))},
            effect_size=float(distances.max()),
            effect_name="ks_d",
        )


__all__ = ["AlibiKSDetector", "AlibiMMDDetector"]
