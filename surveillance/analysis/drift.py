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

import dataclasses
import math
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from detectors import (
    Chi2Detector,
    ComponentKSDetector,
    InsufficientDataError,
    KSDetector,
    adjust_p_values,
)
from detectors.base import Detector
from surveillance.analysis.embeddings.names import (
    IMAGE_QUALITY_EXTRACTOR,
    bbsd_name,
    image_feature_names,
)
from surveillance.analysis.windows import Window, floor_day, forward_windows, groups
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
from surveillance.store.embeddings import EmbeddingSet

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


def _present(*tables: CaseTable) -> tuple[str, ...]:
    """Numeric acquisition fields with a value in any of ``tables``."""
    return tuple(
        f for f in NUMERIC_FIELDS if any(not np.all(np.isnan(t.numeric[f])) for t in tables)
    )


def _signals(
    cases: CaseTable,
    finding: str,
    first_finding: bool,
    present: tuple[str, ...],
) -> list[Signal]:
    """The per-case signals of ``cases``; the same names, in the same order, for any table.

    The categorical ones (:func:`_metadata_signals`) come after them, from counts.
    """
    signals = [Signal(f"score:{finding}", "ks", cases.score, family="score")]
    if not first_finding:
        return signals
    if present:
        stacked = np.column_stack([cases.numeric[f] for f in present])
        signals.append(Signal("acquisition", "ks", stacked, present, "acquisition"))
    return signals


#: No values: the placeholder of a signal tested from category counts.
_NO_VALUES = np.empty(0, dtype=object)


def _metadata_signals(stratum_kind: str) -> list[Signal]:
    """The chi-squared signals of a stratum kind, tested from category counts."""
    names = [f"metadata:{field}" for field in CATEGORICAL_FIELDS]
    if stratum_kind != "scanner":
        names.append("metadata:scanner")
    return [Signal(name, "chi2", _NO_VALUES, family="metadata") for name in names]


#: Category counts: stratum kind -> stratum value -> signal -> category -> cases.
StratumCounts = dict[str, dict[str, dict[str, dict[str, int]]]]


def _stratum_counts(
    rows: list[tuple[str, str, str, str, int]], strata_kinds: list[str]
) -> StratumCounts:
    """``store.checks.category_counts`` rows summed up to each stratum of ``strata_kinds``.

    The same counts as the value arrays of a case table grouped by stratum:
    ``metadata:<field>`` per field, and ``metadata:scanner`` (the scanner label
    of each case, from the rows of one field) for the kinds other than scanner.
    """
    out: StratumCounts = {kind: {} for kind in strata_kinds}
    scanner_field = CATEGORICAL_FIELDS[0]
    for site, scanner, field, value, n in rows:
        for kind in strata_kinds:
            # [drift] strata is overall, site or scanner (the config allows no other)
            key = "all" if kind == "overall" else site if kind == "site" else scanner
            signals = out[kind].setdefault(key, {})
            counts = signals.setdefault(f"metadata:{field}", {})
            counts[value] = counts.get(value, 0) + n
            if field == scanner_field and kind != "scanner":
                counts = signals.setdefault("metadata:scanner", {})
                counts[scanner] = counts.get(scanner, 0) + n
    return out


def _detector(
    signal: Signal,
    settings: DriftConfig,
    min_samples: int,
    permutations: int = EMBEDDING_PERMUTATIONS,
) -> Detector:
    if signal.detector == "mmd":
        from detectors import MMDDetector  # torch: imported only when an embedding is tested

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


def _size(values: np.ndarray | Mapping[str, int]) -> int:
    if isinstance(values, np.ndarray):
        return int(values.shape[0])
    return int(sum(values.values()))


def _test(
    signal: Signal,
    ref_values: np.ndarray | Mapping[str, int],
    win_values: np.ndarray | Mapping[str, int],
    settings: DriftConfig,
    min_samples: int | None = None,
) -> dict[str, Any]:
    """One test, not yet decided: :func:`decide` sets ``ok`` / ``drift`` / ``below_tolerance``.

    A chi-squared signal may be given as category counts (both sides): the
    same row as for the values they count.
    """
    row: dict[str, Any] = {
        "detector": signal.detector,
        "signal": signal.name,
        "threshold": settings.alpha,
        "n_reference": _size(ref_values),
        "n_window": _size(win_values),
        "min_effect": float(getattr(settings.min_effect, signal.family)),
    }
    needed = settings.min_samples if min_samples is None else min_samples
    try:
        if isinstance(ref_values, Mapping) or isinstance(win_values, Mapping):
            if not (isinstance(ref_values, Mapping) and isinstance(win_values, Mapping)):
                raise TypeError("a test needs values on both sides or counts on both sides")
            chi2 = Chi2Detector(alpha=settings.alpha, min_samples=needed)
            result = chi2.fit_counts(ref_values).score_counts(win_values)
        else:
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


@dataclass(frozen=True, slots=True)
class DriftPlan:
    """What a drift run has to judge: the windows, against which reference."""

    model: ModelInfo
    reference_set_id: int
    reference: Window
    windows: tuple[Window, ...]


def plan_drift(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    *,
    as_of: datetime,
    full: bool = False,
) -> DriftPlan | None:
    """Freeze the reference, record change events, list the windows to judge.

    None when the model has no predictions. ``windows`` is empty when every
    complete window has been judged against the current reference (and not
    ``full``). Change events are found by a GROUP BY in the database over the
    reference and the windows up to the last one (:func:`record_changes`).
    """
    span = store.checks.prediction_span(model.id)
    if span is None:
        return None
    ref_start = floor_day(span[0])
    ref_end = ref_start + timedelta(days=settings.reference_days)
    reference_set_id = store.registry.ensure_reference_set(
        model.id, REFERENCE_SET_NAME, "rolling", ref_start, ref_end, actor="drift-job"
    )
    ref_start, ref_end = store.registry.reference_period(reference_set_id)
    reference = Window(ref_start, ref_end)
    windows = forward_windows(ref_end, as_of, settings.window_days)
    if not full:
        judged = store.checks.judged_drift_windows(model.id, reference_set_id)
        windows = [w for w in windows if (w.start, w.end) not in judged]
    if windows:
        record_changes(store, model, settings, reference, windows[-1].end)
    return DriftPlan(model, reference_set_id, reference, tuple(windows))


class DriftJudge:
    """Judges one window at a time against a plan's reference.

    The reference period's cases and embeddings are loaded once (on first use)
    and each window's own cases when it is judged, so a run holds the reference
    and one window, never the history: memory is bounded by the window, and a
    window judged alone (incrementally, or by another replica claiming it) is
    judged exactly as in a full run.

    The case tables hold the scores and numeric fields only: the categorical
    ``metadata:*`` signals are tested from category counts per site and
    scanner (``store.checks.category_counts``, a GROUP BY in the database),
    summed up to each stratum here, with the results of the per-case values.
    """

    def __init__(self, store: Store, plan: DriftPlan, settings: DriftConfig) -> None:
        self._store = store
        self._plan = plan
        self._settings = settings
        self._references: dict[str, tuple[CaseTable, dict[str, dict[str, np.ndarray]]]] = {}
        self._reference_counts: dict[str, StratumCounts] = {}
        self._ref_embeddings: list[tuple[EmbeddingSet, dict[str, dict[str, np.ndarray]]]] | None
        self._ref_embeddings = None

    def _reference(self, finding: str) -> tuple[CaseTable, dict[str, dict[str, np.ndarray]]]:
        if finding not in self._references:
            ref = self._plan.reference
            cases = self._store.checks.case_table(
                self._plan.model.id,
                finding,
                ref.start,
                ref.end,
                fields=NUMERIC_FIELDS,
                labels=False,
            )
            by_kind: dict[str, dict[str, np.ndarray]] = {
                kind: groups(cases.stratum(kind)) for kind in self._settings.strata
            }
            self._references[finding] = (cases, by_kind)
        return self._references[finding]

    def _counts(self, finding: str, window: Window) -> StratumCounts:
        """Category counts of ``finding``'s predictions in ``window``, per stratum."""
        rows = self._store.checks.category_counts(
            self._plan.model.id, finding, window.start, window.end, CATEGORICAL_FIELDS
        )
        return _stratum_counts(rows, list(self._settings.strata))

    def _reference_counts_of(self, finding: str) -> StratumCounts:
        if finding not in self._reference_counts:
            self._reference_counts[finding] = self._counts(finding, self._plan.reference)
        return self._reference_counts[finding]

    def _embedding_references(self) -> list[tuple[EmbeddingSet, dict[str, dict[str, np.ndarray]]]]:
        if self._ref_embeddings is None:
            ref = self._plan.reference
            sets = self._store.embeddings.model_embeddings(self._plan.model.id, ref.start, ref.end)
            self._ref_embeddings = [
                (e, {kind: groups(e.stratum(kind)) for kind in self._settings.strata}) for e in sets
            ]
        return self._ref_embeddings

    def judge(self, window: Window, *, job_run_id: int | None = None) -> list[DriftCheck]:
        """Test ``window`` on every finding, signal and stratum; decide; store."""
        model, settings = self._plan.model, self._settings
        rows: list[DriftCheckDraft] = []
        for index, finding in enumerate(sorted(model.findings)):
            ref, ref_groups = self._reference(finding)
            win = self._store.checks.case_table(
                model.id, finding, window.start, window.end, fields=NUMERIC_FIELDS, labels=False
            )
            present = _present(ref, win)
            ref_signals = _signals(ref, finding, index == 0, present)
            win_signals = _signals(win, finding, index == 0, present)
            # the categorical signals of the first finding: counted in the database
            ref_counts: StratumCounts = self._reference_counts_of(finding) if index == 0 else {}
            win_counts: StratumCounts = self._counts(finding, window) if index == 0 else {}
            for stratum_kind in settings.strata:
                metadata = _metadata_signals(stratum_kind) if index == 0 else []
                win_groups = groups(win.stratum(stratum_kind))
                for value in sorted(win_groups):
                    ref_idx = ref_groups[stratum_kind].get(value, _NONE)
                    win_idx = win_groups[value]
                    for ref_signal, win_signal in zip(ref_signals, win_signals, strict=True):
                        test = _test(
                            ref_signal,
                            ref_signal.values[ref_idx],
                            win_signal.values[win_idx],
                            settings,
                        )
                        rows.append(self._draft(test, stratum_kind, value, window))
                    ref_at = ref_counts.get(stratum_kind, {}).get(value, {})
                    win_at = win_counts.get(stratum_kind, {}).get(value, {})
                    for signal in metadata:
                        test = _test(
                            signal,
                            ref_at.get(signal.name, {}),
                            win_at.get(signal.name, {}),
                            settings,
                        )
                        rows.append(self._draft(test, stratum_kind, value, window))
        rows += self._embedding_rows(window)
        return self._store.checks.save_drift(
            decide(rows, settings), job_run_id=job_run_id, actor="drift-job"
        )

    def _draft(
        self, test: dict[str, Any], stratum_kind: str, value: str, window: Window
    ) -> DriftCheckDraft:
        return DriftCheckDraft(
            **test,
            model_id=self._plan.model.id,
            reference_set_id=self._plan.reference_set_id,
            stratum_kind=stratum_kind,
            stratum_value=str(value),
            window_start=window.start,
            window_end=window.end,
        )

    def _embedding_rows(self, window: Window) -> list[DriftCheckDraft]:
        """Rows for every stored extractor (other models' BBSD vectors excluded)."""
        model, settings, reference = self._plan.model, self._settings, self._plan.reference
        own_bbsd = bbsd_name(model.name)
        references = {e.extractor: (e, g) for e, g in self._embedding_references()}
        versions = {name: e.version for name, (e, _) in references.items()}
        # the window's place on the grid (not in this run's list): the same seed
        # whether it is judged alone or with the whole history
        w_index = (window.start - reference.end) // (window.end - window.start)
        rows: list[DriftCheckDraft] = []
        for emb in self._store.embeddings.model_embeddings(
            model.id, window.start, window.end, versions=versions
        ):
            if emb.extractor.startswith("bbsd:") and emb.extractor != own_bbsd:
                continue
            ref_emb, ref_groups = references.get(emb.extractor, (None, {}))
            ref_vectors = (
                ref_emb.vectors
                if ref_emb is not None and ref_emb.version == emb.version
                else np.empty((0, *emb.vectors.shape[1:]), dtype=emb.vectors.dtype)
            )
            if ref_vectors.shape[0] == 0:
                ref_groups = {}
            pairs = _embedding_signals(emb.extractor, ref_vectors, emb.vectors)
            for stratum_kind in settings.strata:
                win_groups = groups(emb.stratum(stratum_kind))
                for s_index, value in enumerate(sorted(win_groups)):
                    seed = 7919 * w_index + s_index
                    ref_idx = ref_groups.get(stratum_kind, {}).get(value, _NONE)
                    win_idx = win_groups[value]
                    for ref_signal, win_signal, needed in pairs:
                        cap = (
                            MMD_MAX_SAMPLES
                            if ref_signal.detector == "mmd"
                            else EMBEDDING_MAX_SAMPLES
                        )
                        test = _test(
                            ref_signal,
                            ref_signal.values[_cap(ref_idx, cap, seed)],
                            win_signal.values[_cap(win_idx, cap, seed + 1)],
                            settings,
                            settings.image_min_samples if needed == -1 else needed,
                        )
                        test["details"] = {
                            **test["details"],
                            "extractor": emb.extractor,
                            "extractor_version": emb.version,
                        }
                        rows.append(self._draft(test, stratum_kind, value, window))
        return rows


_NONE = np.empty(0, dtype=np.int64)


@dataclass(slots=True)
class DriftTally:
    """Counts of the checks a drift run stored, whoever judged them.

    A first run at 1M predictions stores ~33k drift checks, nearly all ``ok``;
    holding them all as objects until the run ends costs ~100 MB. A run given a
    tally counts every window's checks into it as the window is judged and keeps
    only the checks that say something (not ``ok``).
    """

    checks: int = 0
    windows: set[tuple[datetime, datetime]] = dataclasses.field(default_factory=set)
    by_status: Counter[str] = dataclasses.field(default_factory=Counter)

    def add(self, checks: list[DriftCheck]) -> list[DriftCheck]:
        """Count ``checks``; return those that are not ``ok``."""
        self.checks += len(checks)
        self.windows.update((c.window_start, c.window_end) for c in checks)
        self.by_status.update(c.status for c in checks)
        return [c for c in checks if c.status != DriftStatus.OK]


def run_drift(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    *,
    as_of: datetime,
    job_run_id: int | None = None,
    full: bool = False,
    tally: DriftTally | None = None,
) -> list[DriftCheck]:
    """Judge the complete windows not yet judged; returns their checks.

    With ``tally``, every check is counted there and only those that are not
    ``ok`` are returned (memory: the flagged checks, not all of them).

    Incremental (see "Incremental runs" in the module docstring): a window that
    already has checks against the current reference set, written after that set
    was created, is skipped; ``full=True`` re-judges every window (after a
    configuration change). Whole windows are judged, never part of one, since
    :func:`decide` corrects across every stratum and signal of a window.

    Each window is queued as a work unit (``store.units``); this process
    claims and judges them one by one while the check workers of other
    replicas claim them too (:func:`work_drift_units`), and returns when every
    unit of its plan is judged, whoever judged it. A unit that fails raises
    here (and is recorded as failed with its error).
    """
    plan = plan_drift(store, model, settings, as_of=as_of, full=full)
    if plan is None or not plan.windows:
        return []
    plan_id = queue_drift(store, plan, job_run_id=job_run_id)
    return collect_drift(store, plan, plan_id, settings, tally=tally)


def queue_drift(store: Store, plan: DriftPlan, *, job_run_id: int | None = None) -> str:
    """Queue the plan's windows as work units; returns the plan id to collect them by."""
    plan_id = uuid.uuid4().hex
    store.units.queue(
        plan.model.id,
        DRIFT_JOB,
        [(w.start, w.end) for w in plan.windows],
        reference_set_id=plan.reference_set_id,
        plan_id=plan_id,
        job_run_id=job_run_id,
    )
    return plan_id


def collect_drift(
    store: Store,
    plan: DriftPlan,
    plan_id: str,
    settings: DriftConfig,
    *,
    worker: str | None = None,
    tally: DriftTally | None = None,
) -> list[DriftCheck]:
    """Judge the plan's units not taken by other replicas, wait for theirs, return all
    (with ``tally``: count all, return those not ``ok``, as :func:`run_drift`).

    Raises when a unit failed (wherever it ran), naming the window and the error.
    """
    stored = work_drift_units(store, settings, plan_id=plan_id, worker=worker, tally=tally)
    mine = tally.windows if tally is not None else {(c.window_start, c.window_end) for c in stored}
    elsewhere = [(w.start, w.end) for w in plan.windows if (w.start, w.end) not in mine]
    theirs = store.checks.drift_of_windows(plan.model.id, elsewhere)
    stored += theirs if tally is None else tally.add(theirs)
    failed = [u for u in store.units.units(plan_id=plan_id) if u.status == "failed"]
    if failed:
        raise RuntimeError(
            f"{len(failed)} drift window(s) of {plan.model.name} failed, e.g. "
            f"{failed[0].window_start:%Y-%m-%d} on {failed[0].claimed_by}: {failed[0].error}"
        )
    return stored


#: The job name of drift work units.
DRIFT_JOB = "drift"
#: How often a run waiting for units claimed by other replicas looks again.
UNIT_POLL_S = 0.5


def work_drift_units(
    store: Store,
    settings: DriftConfig,
    *,
    plan_id: str | None = None,
    max_units: int | None = None,
    worker: str | None = None,
    tally: DriftTally | None = None,
) -> list[DriftCheck]:
    """Claim and judge drift work units until none is left; returns the checks stored
    (with ``tally``: counts them all there, returns those not ``ok``).

    With ``plan_id`` (a run waiting for its own windows) only that plan's
    units are claimed, and the call returns once none of them is pending or
    running elsewhere. Without it (a replica's check worker) any pending unit
    is claimed, up to ``max_units``. Judges are kept per (model, reference)
    for the call, so a replica loads a reference once for all its windows.
    """
    judges: dict[tuple[int, int], DriftJudge] = {}
    models: dict[int, ModelInfo] = {}
    stored: list[DriftCheck] = []
    done = 0
    while max_units is None or done < max_units:
        unit = store.units.claim(DRIFT_JOB, plan_id=plan_id, worker=worker)
        if unit is None:
            if plan_id is None:
                break
            left = store.units.plan_status(plan_id)
            if not (left["running"] or left["pending"]):
                break
            # another replica is judging one of ours (or won the race for the
            # pending one we saw): wait, and claim whatever comes free
            time.sleep(UNIT_POLL_S)
            continue
        try:
            key = (unit.model_id, unit.reference_set_id)
            judge = judges.get(key)
            if judge is None:
                if not models:
                    models = {m.id: m for m in store.registry.models()}
                start, end = store.registry.reference_period(unit.reference_set_id)
                plan = DriftPlan(
                    models[unit.model_id], unit.reference_set_id, Window(start, end), ()
                )
                judge = judges[key] = DriftJudge(store, plan, settings)
            judged = judge.judge(
                Window(unit.window_start, unit.window_end), job_run_id=unit.job_run_id
            )
            stored += judged if tally is None else tally.add(judged)
        except Exception as exc:
            store.units.finish(unit.id, error=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        store.units.finish(unit.id)
        done += 1
    return stored


def change_drafts(
    model_id: int,
    sightings: dict[str, list[tuple[str, str, str | None, datetime, int]]],
    strata_kinds: list[str],
) -> list[ChangeEventDraft]:
    """Change events from per (site, scanner, value) sightings (``store.checks.change_sightings``).

    See the module docstring ("Change events"): per stratum, a value of a
    change field first seen after the reference, where the stratum had
    reference cases; the old value is the stratum's most frequent one in the
    reference.
    """
    drafts: list[ChangeEventDraft] = []
    for field in CHANGE_FIELDS:
        per_stratum: dict[tuple[str, str], dict[str, tuple[datetime, int]]] = defaultdict(dict)
        for site, scanner, value, first, in_ref in sightings.get(field, []):
            shown = NO_METADATA if value is None else value
            for kind in strata_kinds:
                key = (kind, "all" if kind == "overall" else site if kind == "site" else scanner)
                seen, count = per_stratum[key].get(shown, (first, 0))
                per_stratum[key][shown] = (min(seen, first), count + in_ref)
        for (kind, stratum), values in sorted(per_stratum.items()):
            known = Counter({v: c for v, (_, c) in values.items() if c > 0 and v != NO_METADATA})
            if not any(c > 0 for _, c in values.values()):
                continue  # a stratum new since the reference: metadata:scanner says so
            old = known.most_common(1)[0][0] if known else None
            for new, (first_seen, count) in sorted(values.items()):
                if count > 0 or new == NO_METADATA:
                    continue
                drafts.append(
                    ChangeEventDraft(
                        model_id=model_id,
                        stratum_kind=kind,
                        stratum_value=stratum,
                        field=field,
                        old_value=old,
                        new_value=new,
                        first_seen_at=first_seen,
                    )
                )
    return drafts


def record_changes(
    store: Store,
    model: ModelInfo,
    settings: DriftConfig,
    reference: Window,
    until: datetime,
) -> list[ChangeEvent]:
    """Record the change events up to ``until``; returns the ones new in this run."""
    finding = sorted(model.findings)[0]
    sightings = {
        field: store.checks.change_sightings(
            model.id, finding, field, reference.start, reference.end, until
        )
        for field in CHANGE_FIELDS
    }
    drafts = change_drafts(model.id, sightings, list(settings.strata))
    return store.checks.record_change_events(drafts, actor="drift-job")


def _cap(positions: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """``positions`` cut to at most ``limit`` (a seeded random subset, kept in order)."""
    if positions.size <= limit:
        return positions
    return np.sort(np.random.default_rng(seed).choice(positions, size=limit, replace=False))


def _embedding_signals(
    extractor: str, reference: np.ndarray, window: np.ndarray
) -> list[tuple[Signal, Signal, int | None]]:
    """(reference, window, min_samples override) signal pairs of one extractor.

    The override is None for the default ``min_samples``, -1 for
    ``image_min_samples``.
    """
    if extractor == IMAGE_QUALITY_EXTRACTOR:
        ref, win = reference.astype(np.float64), window.astype(np.float64)
        names = image_feature_names(win.shape[1])
        return [
            (
                Signal(f"image:{name}", "ks", ref[:, j], family="image"),
                Signal(f"image:{name}", "ks", win[:, j], family="image"),
                -1,
            )
            for j, name in enumerate(names)
            if not (np.all(np.isnan(ref[:, j])) and np.all(np.isnan(win[:, j])))
        ]
    kinds = [("embedding-pca", "ks-pca")]
    if not (window.ndim == 2 and window.shape[1] == 1):
        # one dimension (BBSD of a one-finding model): the KS says it all
        kinds.insert(0, ("embedding", "mmd"))
    return [
        (
            Signal(f"{prefix}:{extractor}", detector, reference, family="embedding"),
            Signal(f"{prefix}:{extractor}", detector, window, family="embedding"),
            None,
        )
        for prefix, detector in kinds
    ]


__all__ = [
    "CHANGE_FIELDS",
    "DRIFT_JOB",
    "EMBEDDING_MAX_SAMPLES",
    "EMBEDDING_PERMUTATIONS",
    "MMD_MAX_SAMPLES",
    "PCA_COMPONENTS",
    "REFERENCE_SET_NAME",
    "DriftJudge",
    "DriftPlan",
    "change_drafts",
    "collect_drift",
    "decide",
    "plan_drift",
    "queue_drift",
    "record_changes",
    "run_drift",
    "signal_family",
    "work_drift_units",
]
