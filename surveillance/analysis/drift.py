"""The drift job: compare each window with the reference, per stratum and signal.

Signals tested (per finding for scores, once per model for metadata):

* ``score:<finding>``: KS on the model's output scores (black-box shift detection);
* ``acquisition``: per-feature KS on numeric acquisition fields (kVp, pixel
  spacing, slice thickness) with a Bonferroni correction;
* ``metadata:<field>``: chi-squared on categorical header fields (software
  version, kernel, view position, sex, age band), and ``metadata:scanner`` for
  strata that contain several scanners;
* ``embedding:<extractor>``: MMD permutation test on the stored image
  embeddings (``conv-ae``, ``torchscript``, ...) and on the model's own BBSD
  score vector (``embedding:bbsd:<model>``) of the studies in the reference and
  the window, per stratum (overall, site, scanner). A study's time is its first
  prediction by the model. At most :data:`EMBEDDING_MAX_SAMPLES` vectors per
  side are tested (a seeded subsample above that); the test uses
  :data:`EMBEDDING_PERMUTATIONS` permutations.

The reference is the first ``reference_days`` of deployment, frozen as a
reference-set row the first time the job runs. A stratum with fewer than
``min_samples`` cases in the reference or the window is recorded as
``insufficient_data``, never as drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from detectors import Chi2Detector, InsufficientDataError, KSDetector, MMDDetector
from detectors.base import Detector
from surveillance.analysis.embeddings.backbones import bbsd_name
from surveillance.analysis.windows import Window, floor_day, forward_windows
from surveillance.core.config import DriftConfig
from surveillance.store import CaseTable, DriftCheck, ModelInfo, Store
from surveillance.store.domain import CATEGORICAL_FIELDS, NUMERIC_FIELDS, DriftCheckDraft

REFERENCE_SET_NAME = "initial-deployment"
#: Permutations of the embedding MMD test (smallest p-value 1/501).
EMBEDDING_PERMUTATIONS = 500
#: Largest reference or window sample of embeddings per test (seeded subsample).
EMBEDDING_MAX_SAMPLES = 2000


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    detector: str
    values: np.ndarray
    feature_names: tuple[str, ...] = ()


def _signals(
    cases: CaseTable, finding: str, first_finding: bool, stratum_kind: str
) -> list[Signal]:
    signals = [Signal(f"score:{finding}", "ks", cases.score)]
    if not first_finding:
        return signals
    present = [f for f in NUMERIC_FIELDS if not np.all(np.isnan(cases.numeric[f]))]
    if present:
        stacked = np.column_stack([cases.numeric[f] for f in present])
        signals.append(Signal("acquisition", "ks", stacked, tuple(present)))
    for field in CATEGORICAL_FIELDS:
        signals.append(Signal(f"metadata:{field}", "chi2", cases.categorical[field]))
    if stratum_kind != "scanner":
        signals.append(Signal("metadata:scanner", "chi2", cases.scanner))
    return signals


def _detector(signal: Signal, settings: DriftConfig) -> Detector:
    if signal.detector == "mmd":
        return MMDDetector(
            alpha=settings.alpha,
            n_permutations=EMBEDDING_PERMUTATIONS,
            seed=0,
            min_samples=settings.min_samples,
        )
    if signal.detector == "ks":
        return KSDetector(
            alpha=settings.alpha,
            min_samples=settings.min_samples,
            feature_names=list(signal.feature_names) or None,
        )
    return Chi2Detector(alpha=settings.alpha, min_samples=settings.min_samples)


def _test(
    signal: Signal, reference: np.ndarray, window: np.ndarray, settings: DriftConfig
) -> dict[str, Any]:
    ref_values, win_values = signal.values[reference], signal.values[window]
    row: dict[str, Any] = {
        "detector": signal.detector,
        "signal": signal.name,
        "threshold": settings.alpha,
        "n_reference": int(reference.sum()),
        "n_window": int(window.sum()),
    }
    try:
        result = _detector(signal, settings).fit(ref_values).score(win_values)
    except InsufficientDataError as exc:
        return {
            **row,
            "status": "insufficient_data",
            "statistic": None,
            "p_value": None,
            "details": {"reason": str(exc)},
        }
    return {
        **row,
        "status": "drift" if result.drifted else "ok",
        "statistic": float(result.statistic),
        "p_value": float(result.p_value),
        "n_reference": result.n_reference,
        "n_window": result.n_window,
        "details": result.details,
    }


def run_drift(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    *,
    as_of: datetime,
    job_run_id: int | None = None,
) -> list[DriftCheck]:
    """Test every complete window since the reference period; returns the stored checks."""
    span = store.checks.prediction_span(model.id)
    if span is None:
        return []
    ref_start = floor_day(span[0])
    ref_end = ref_start + timedelta(days=settings.reference_days)
    reference_set_id = store.registry.ensure_reference_set(
        model.id, REFERENCE_SET_NAME, "rolling", ref_start, ref_end, actor="drift-job"
    )
    ref_start, ref_end = store.registry.reference_period(reference_set_id)
    windows = forward_windows(ref_end, as_of, settings.window_days)
    if not windows:
        return []
    rows: list[DriftCheckDraft] = []
    for index, finding in enumerate(sorted(model.findings)):
        cases = store.checks.case_table(model.id, finding, ref_start, windows[-1].end)
        in_reference = Window(ref_start, ref_end).mask(cases.predicted_at)
        for window in windows:
            in_window = window.mask(cases.predicted_at)
            for stratum_kind in settings.strata:
                strata = cases.stratum(stratum_kind)
                for value in sorted(set(strata[in_window])):
                    member = strata == value
                    for signal in _signals(cases, finding, index == 0, stratum_kind):
                        test = _test(signal, in_reference & member, in_window & member, settings)
                        rows.append(
                            DriftCheckDraft(
                                **test,
                                model_id=model.id,
                                reference_set_id=reference_set_id,
                                stratum_kind=stratum_kind,
                                stratum_value=str(value),
                                window_start=window.start,
                                window_end=window.end,
                            )
                        )
    rows += _embedding_rows(
        store, model, settings, reference_set_id, Window(ref_start, ref_end), windows
    )
    return store.checks.save_drift(rows, job_run_id=job_run_id, actor="drift-job")


def _cap(mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``mask`` with at most ``limit`` True entries (a seeded random subset)."""
    chosen = np.flatnonzero(mask)
    if chosen.size <= limit:
        return mask
    keep = np.random.default_rng(seed).choice(chosen, size=limit, replace=False)
    capped = np.zeros_like(mask)
    capped[keep] = True
    return capped


def _embedding_rows(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    reference_set_id: int,
    reference: Window,
    windows: list[Window],
) -> list[DriftCheckDraft]:
    """MMD rows for every stored extractor (other models' BBSD vectors excluded)."""
    own_bbsd = bbsd_name(model.name)
    rows: list[DriftCheckDraft] = []
    for emb in store.embeddings.model_embeddings(model.id, reference.start, windows[-1].end):
        if emb.extractor.startswith("bbsd:") and emb.extractor != own_bbsd:
            continue
        signal = Signal(f"embedding:{emb.extractor}", "mmd", emb.vectors)
        in_reference = reference.mask(emb.at)
        for w_index, window in enumerate(windows):
            in_window = window.mask(emb.at)
            for stratum_kind in settings.strata:
                strata = emb.stratum(stratum_kind)
                for s_index, value in enumerate(sorted(set(strata[in_window]))):
                    member = strata == value
                    seed = 7919 * w_index + s_index
                    test = _test(
                        signal,
                        _cap(in_reference & member, EMBEDDING_MAX_SAMPLES, seed),
                        _cap(in_window & member, EMBEDDING_MAX_SAMPLES, seed + 1),
                        settings,
                    )
                    test["details"] = {
                        **test["details"],
                        "extractor": emb.extractor,
                        "extractor_version": emb.version,
                    }
                    rows.append(
                        DriftCheckDraft(
                            **test,
                            model_id=model.id,
                            reference_set_id=reference_set_id,
                            stratum_kind=stratum_kind,
                            stratum_value=str(value),
                            window_start=window.start,
                            window_end=window.end,
                        )
                    )
    return rows


__all__ = ["REFERENCE_SET_NAME", "run_drift"]
