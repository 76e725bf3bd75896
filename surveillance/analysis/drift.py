"""The drift job: compare each window with the reference, per stratum and signal.

Signals tested (per finding for scores, once per model for metadata), and the
family each belongs to (``[drift.min_effect]`` is set per family):

* ``score:<finding>`` (family ``score``): KS on the model's output scores
  (black-box shift detection); effect: KS D;
* ``acquisition`` (``acquisition``): per-feature KS on numeric acquisition
  fields (kVp, pixel spacing, slice thickness) with a Holm correction; effect:
  the largest KS D;
* ``metadata:<field>`` (``metadata``): chi-squared on categorical header fields
  (software version, kernel, view position, sex, age band), and
  ``metadata:scanner`` for strata that contain several scanners; effect:
  Cramér's V (PSI in the details);
* ``embedding:<extractor>`` (``embedding``): MMD permutation test over several
  bandwidths (MMDAgg-style, ``bandwidth="multi"``) on the stored image
  embeddings (``conv-ae``, ``torchscript``, ...) and on the model's own BBSD
  score vector (``embedding:bbsd:<model>``); effect: normalised MMD. A
  permutation p-value below :data:`EMBEDDING_REFINE_BELOW` is recomputed with
  :data:`EMBEDDING_REFINE_PERMUTATIONS` permutations, so that it can pass the
  window's correction;
* ``embedding-pca:<extractor>`` (``embedding``): KS on up to
  :data:`PCA_COMPONENTS` principal components of the reference's embeddings
  (fitted on half the reference, tested against the other half), Holm-corrected
  ("Failing Loudly"); effect: the largest KS D. For a one-dimensional vector
  (the BBSD of a one-finding model) only this test runs: an MMD there would
  repeat the KS at 20x the cost;
* ``image:<feature>`` (``image``): KS on one image-quality feature per study
  (noise, sharpness, high-frequency energy, body intensity quantiles, matrix,
  field of view: :mod:`detectors.image_quality`), computed by the embed job
  from the decoded pixels in physical units and stored as the
  ``image-quality`` embedding; effect: KS D. These see a reconstruction change
  (a sharper kernel, more noise) that no header field names. They need
  ``image_min_samples`` studies per side (not ``min_samples``).

Per stratum: overall, site, scanner. A study's time is its first prediction by
the model. At most :data:`EMBEDDING_MAX_SAMPLES` vectors per side are tested
(:data:`MMD_MAX_SAMPLES` for the MMD; a seeded subsample above that).

Decision (per window, across every stratum and signal of the model)
    The p-values of the window's tests are adjusted together with ``[drift]
    correction`` (Benjamini-Hochberg ``fdr_bh`` by default, or ``holm``) and
    stored as ``p_adjusted``. A check is

    * ``drift`` when ``p_adjusted < alpha`` and its effect size reaches its
      family's ``min_effect``;
    * ``below_tolerance`` when ``p_adjusted < alpha`` but the effect is
      smaller: shown, never an incident (at 5,000 studies a window a 3-point
      change in one age band is significant and irrelevant);
    * ``ok`` otherwise, and ``insufficient_data`` when a side has too few cases.

Change events
    For ``software_versions`` and ``convolution_kernel``, a value first seen
    after the reference period at a stratum that had cases in the reference is
    recorded (``store.checks.record_change_events``) with the time of its first
    prediction and the stratum's most frequent value in the reference; the
    incident policy names it (:mod:`surveillance.analysis.onset`).

The reference is the first ``reference_days`` of deployment, frozen as a
reference-set row the first time the job runs.

Incremental runs
    A run judges only the complete windows that have no checks against the
    current reference set written after that set was created; a second run the
    same day judges nothing, the next one the new window alone, and a new
    reference set re-judges every window. Only the reference period and the
    windows being judged are loaded. ``run_drift(..., full=True)`` (``surveillance
    check --full``) re-judges everything, e.g. after a change of ``[drift]``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from detectors import (
    Chi2Detector,
    ComponentKSDetector,
    InsufficientDataError,
    KSDetector,
    MMDDetector,
    adjust_p_values,
)
from detectors.base import Detector
from surveillance.analysis.embeddings.backbones import bbsd_name
from surveillance.analysis.image_signals import IMAGE_QUALITY_EXTRACTOR, image_feature_names
from surveillance.analysis.windows import Window, floor_day, forward_windows
from surveillance.core.config import DriftConfig
from surveillance.core.statuses import DriftStatus
from surveillance.store import CaseTable, ChangeEvent, DriftCheck, ModelInfo, Store
from surveillance.store.domain import (
    CATEGORICAL_FIELDS,
    NO_METADATA,
    NUMERIC_FIELDS,
    ChangeEventDraft,
    DriftCheckDraft,
)

REFERENCE_SET_NAME = "initial-deployment"
#: Permutations of the embedding MMD test (smallest p-value 1/201; small ones are refined).
EMBEDDING_PERMUTATIONS = 200
#: A permutation p-value below this is refined with :data:`EMBEDDING_REFINE_PERMUTATIONS`:
#: after the window's correction over ~100 tests a p-value must reach ~1e-4,
#: below the floor of 200 permutations.
EMBEDDING_REFINE_BELOW = 0.02
EMBEDDING_REFINE_PERMUTATIONS = 10_000
#: Above this many pooled vectors the refinement uses a fifth of the permutations.
EMBEDDING_REFINE_MAX_POOLED = 1000
#: Largest reference or window sample per embedding or image test (seeded subsample).
EMBEDDING_MAX_SAMPLES = 2000
#: The same for the MMD, whose five bandwidths cost ~(2 x this)² x permutations.
MMD_MAX_SAMPLES = 500
#: Principal components of the embedding KS test (``embedding-pca:``).
PCA_COMPONENTS = 32
#: Header fields whose new values are recorded as change events.
CHANGE_FIELDS = ("software_versions", "convolution_kernel")


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    detector: str
    values: np.ndarray
    feature_names: tuple[str, ...] = ()
    family: str = "score"


def signal_family(signal: str) -> str:
    """The ``[drift.min_effect]`` family of a signal name (module docstring)."""
    if signal.startswith("embedding"):
        return "embedding"
    if signal.startswith("image:"):
        return "image"
    if signal.startswith("metadata:"):
        return "metadata"
    if signal == "acquisition":
        return "acquisition"
    return "score"


def _signals(
    cases: CaseTable, finding: str, first_finding: bool, stratum_kind: str
) -> list[Signal]:
    signals = [Signal(f"score:{finding}", "ks", cases.score, family="score")]
    if not first_finding:
        return signals
    present = [f for f in NUMERIC_FIELDS if not np.all(np.isnan(cases.numeric[f]))]
    if present:
        stacked = np.column_stack([cases.numeric[f] for f in present])
        signals.append(Signal("acquisition", "ks", stacked, tuple(present), "acquisition"))
    for field in CATEGORICAL_FIELDS:
        signals.append(
            Signal(f"metadata:{field}", "chi2", cases.categorical[field], family="metadata")
        )
    if stratum_kind != "scanner":
        signals.append(Signal("metadata:scanner", "chi2", cases.scanner, family="metadata"))
    return signals


def _detector(
    signal: Signal,
    settings: DriftConfig,
    min_samples: int,
    permutations: int = EMBEDDING_PERMUTATIONS,
) -> Detector:
    if signal.detector == "mmd":
        return MMDDetector(
            alpha=settings.alpha,
            n_permutations=permutations,
            seed=0,
            min_samples=min_samples,
            bandwidth="multi",
        )
    if signal.detector == "ks-pca":
        return ComponentKSDetector(
            alpha=settings.alpha,
            n_components=PCA_COMPONENTS,
            correction="holm",
            min_samples=max(2, min_samples // 2),
            holdout=0.5,
            seed=0,
        )
    if signal.detector == "ks":
        return KSDetector(
            alpha=settings.alpha,
            correction="holm",
            min_samples=min_samples,
            feature_names=list(signal.feature_names) or None,
        )
    return Chi2Detector(alpha=settings.alpha, min_samples=min_samples)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _test(
    signal: Signal,
    reference: np.ndarray,
    window: np.ndarray,
    settings: DriftConfig,
    min_samples: int | None = None,
) -> dict[str, Any]:
    """One test, not yet decided: :func:`decide` sets ``ok`` / ``drift`` / ``below_tolerance``."""
    ref_values, win_values = signal.values[reference], signal.values[window]
    row: dict[str, Any] = {
        "detector": signal.detector,
        "signal": signal.name,
        "threshold": settings.alpha,
        "n_reference": int(reference.sum()),
        "n_window": int(window.sum()),
        "min_effect": float(getattr(settings.min_effect, signal.family)),
    }
    needed = settings.min_samples if min_samples is None else min_samples
    try:
        result = _detector(signal, settings, needed).fit(ref_values).score(win_values)
        if signal.detector == "mmd" and result.p_value < EMBEDDING_REFINE_BELOW:
            pooled = result.n_reference + result.n_window
            refine = EMBEDDING_REFINE_PERMUTATIONS
            if pooled > EMBEDDING_REFINE_MAX_POOLED:
                refine //= 5
            detector = _detector(signal, settings, needed, refine)
            result = detector.fit(ref_values).score(win_values)
    except InsufficientDataError as exc:
        return {
            **row,
            "status": DriftStatus.INSUFFICIENT_DATA.value,
            "statistic": None,
            "p_value": None,
            "details": {"reason": str(exc)},
        }
    return {
        **row,
        "status": DriftStatus.OK.value,
        "statistic": float(result.statistic),
        "p_value": float(result.p_value),
        "n_reference": result.n_reference,
        "n_window": result.n_window,
        "effect_size": _finite_or_none(result.effect_size),
        "effect_name": result.effect_name or None,
        "details": result.details,
    }


def decide(drafts: list[DriftCheckDraft], settings: DriftConfig) -> list[DriftCheckDraft]:
    """Adjust p-values per window (across strata and signals) and set every status.

    ``drift``: adjusted p below ``alpha`` and effect at least ``min_effect``;
    ``below_tolerance``: adjusted p below ``alpha``, effect smaller; ``ok``
    otherwise; ``insufficient_data`` rows are kept as they are. A significant
    check without an effect size (a detector that has none) counts as drift.
    """
    by_window: dict[tuple[datetime, datetime], list[int]] = defaultdict(list)
    for index, draft in enumerate(drafts):
        if draft.p_value is not None and draft.status != DriftStatus.INSUFFICIENT_DATA:
            by_window[(draft.window_start, draft.window_end)].append(index)
    decided = list(drafts)
    for indices in by_window.values():
        raw = np.array([drafts[i].p_value for i in indices], dtype=np.float64)
        adjusted = adjust_p_values(raw, settings.correction)
        for i, p_adj in zip(indices, adjusted, strict=True):
            draft = drafts[i]
            status = DriftStatus.OK
            if p_adj < settings.alpha:
                small = (
                    draft.effect_size is not None
                    and draft.min_effect is not None
                    and draft.effect_size < draft.min_effect
                )
                status = DriftStatus.BELOW_TOLERANCE if small else DriftStatus.DRIFT
            decided[i] = replace(
                draft,
                p_adjusted=float(p_adj),
                status=status.value,
                details={
                    **draft.details,
                    "correction": settings.correction,
                    "tests_in_window": len(indices),
                },
            )
    return decided


def run_drift(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    *,
    as_of: datetime,
    job_run_id: int | None = None,
    full: bool = False,
) -> list[DriftCheck]:
    """Test the complete windows not yet judged; returns the checks stored by this run.

    Incremental (see "Incremental runs" in the module docstring): a window that
    already has checks against the current reference set, written after that set
    was created, is skipped; ``full=True`` re-judges every window (after a
    configuration change). Whole windows are judged, never part of one, since
    :func:`decide` corrects across every stratum and signal of a window.
    """
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
    if not full:
        judged = store.checks.judged_drift_windows(model.id, reference_set_id)
        windows = [w for w in windows if (w.start, w.end) not in judged]
    if not windows:
        return []
    reference = Window(ref_start, ref_end)
    rows: list[DriftCheckDraft] = []
    for index, finding in enumerate(sorted(model.findings)):
        # the reference and the windows being judged, not the whole history
        cases = _concat(
            store.checks.case_table(model.id, finding, ref_start, ref_end),
            store.checks.case_table(
                model.id, finding, max(ref_end, windows[0].start), windows[-1].end
            ),
        )
        in_reference = reference.mask(cases.predicted_at)
        if index == 0:
            record_changes(store, model, settings, cases, reference, windows[-1].end)
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
    rows += _embedding_rows(store, model, settings, reference_set_id, reference, windows)
    return store.checks.save_drift(decide(rows, settings), job_run_id=job_run_id, actor="drift-job")


def _concat(first: CaseTable, second: CaseTable) -> CaseTable:
    """Two case tables of disjoint periods, ``first`` before ``second``."""
    return CaseTable(
        score=np.concatenate([first.score, second.score]),
        predicted_at=np.concatenate([first.predicted_at, second.predicted_at]),
        site=np.concatenate([first.site, second.site]),
        scanner=np.concatenate([first.scanner, second.scanner]),
        label=np.concatenate([first.label, second.label]),
        confirmed_at=np.concatenate([first.confirmed_at, second.confirmed_at]),
        categorical={
            k: np.concatenate([v, second.categorical[k]]) for k, v in first.categorical.items()
        },
        numeric={k: np.concatenate([v, second.numeric[k]]) for k, v in first.numeric.items()},
    )


def change_drafts(
    model_id: int,
    cases: CaseTable,
    strata_kinds: list[str],
    reference: Window,
    until: datetime,
) -> list[ChangeEventDraft]:
    """Change events in ``cases``: see the module docstring ("Change events")."""
    in_reference = reference.mask(cases.predicted_at)
    after = Window(reference.end, until).mask(cases.predicted_at)
    drafts: list[ChangeEventDraft] = []
    for stratum_kind in strata_kinds:
        strata = cases.stratum(stratum_kind)
        for value in sorted(set(strata[after])):
            member = strata == value
            if not (in_reference & member).any():
                continue  # a stratum new since the reference: metadata:scanner says so
            for field in CHANGE_FIELDS:
                values = cases.categorical[field]
                known = Counter(v for v in values[in_reference & member] if v != NO_METADATA)
                old = known.most_common(1)[0][0] if known else None
                later = after & member
                for new in sorted(set(values[later]) - set(known) - {NO_METADATA}):
                    seen = cases.predicted_at[later & (values == new)].min()
                    first_seen = datetime.fromisoformat(
                        str(np.datetime_as_string(seen, unit="us")) + "+00:00"
                    )
                    drafts.append(
                        ChangeEventDraft(
                            model_id=model_id,
                            stratum_kind=stratum_kind,
                            stratum_value=str(value),
                            field=field,
                            old_value=None if old is None else str(old),
                            new_value=str(new),
                            first_seen_at=first_seen,
                        )
                    )
    return drafts


def record_changes(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    cases: CaseTable,
    reference: Window,
    until: datetime,
) -> list[ChangeEvent]:
    """Record the change events found in ``cases``; returns the ones new in this run."""
    drafts = change_drafts(model.id, cases, list(settings.strata), reference, until)
    return store.checks.record_change_events(drafts, actor="drift-job")


def _cap(mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``mask`` with at most ``limit`` True entries (a seeded random subset)."""
    chosen = np.flatnonzero(mask)
    if chosen.size <= limit:
        return mask
    keep = np.random.default_rng(seed).choice(chosen, size=limit, replace=False)
    capped = np.zeros_like(mask)
    capped[keep] = True
    return capped


def _embedding_signals(extractor: str, vectors: np.ndarray) -> list[tuple[Signal, int | None]]:
    """Signals of one stored extractor, with the min_samples override (None: the default)."""
    if extractor == IMAGE_QUALITY_EXTRACTOR:
        values = vectors.astype(np.float64)
        return [
            (Signal(f"image:{name}", "ks", values[:, j], family="image"), -1)
            for j, name in enumerate(image_feature_names(values.shape[1]))
            if not np.all(np.isnan(values[:, j]))
        ]
    pca = (Signal(f"embedding-pca:{extractor}", "ks-pca", vectors, family="embedding"), None)
    if vectors.ndim == 2 and vectors.shape[1] == 1:
        return [pca]  # one dimension (BBSD of a one-finding model): the KS says it all
    return [(Signal(f"embedding:{extractor}", "mmd", vectors, family="embedding"), None), pca]


def _embedding_rows(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    reference_set_id: int,
    reference: Window,
    windows: list[Window],
) -> list[DriftCheckDraft]:
    """Rows for every stored extractor (other models' BBSD vectors excluded)."""
    own_bbsd = bbsd_name(model.name)
    rows: list[DriftCheckDraft] = []
    for emb in store.embeddings.model_embeddings(model.id, reference.start, windows[-1].end):
        if emb.extractor.startswith("bbsd:") and emb.extractor != own_bbsd:
            continue
        signals = _embedding_signals(emb.extractor, emb.vectors)
        in_reference = reference.mask(emb.at)
        for window in windows:
            # the window's place on the grid (not in this run's list): the same seed
            # whether it is judged alone or with the whole history
            w_index = (window.start - reference.end) // (window.end - window.start)
            in_window = window.mask(emb.at)
            for stratum_kind in settings.strata:
                strata = emb.stratum(stratum_kind)
                for s_index, value in enumerate(sorted(set(strata[in_window]))):
                    member = strata == value
                    seed = 7919 * w_index + s_index
                    for signal, needed in signals:
                        cap = MMD_MAX_SAMPLES if signal.detector == "mmd" else EMBEDDING_MAX_SAMPLES
                        test = _test(
                            signal,
                            _cap(in_reference & member, cap, seed),
                            _cap(in_window & member, cap, seed + 1),
                            settings,
                            settings.image_min_samples if needed == -1 else needed,
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


__all__ = [
    "CHANGE_FIELDS",
    "EMBEDDING_MAX_SAMPLES",
    "EMBEDDING_PERMUTATIONS",
    "MMD_MAX_SAMPLES",
    "PCA_COMPONENTS",
    "REFERENCE_SET_NAME",
    "change_drafts",
    "decide",
    "record_changes",
    "run_drift",
    "signal_family",
]
