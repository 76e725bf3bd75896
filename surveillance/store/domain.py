"""Domain objects: what the store hands out and takes in. Never ORM rows."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

import numpy as np

from surveillance.core.events import SourcePosition

NO_METADATA = "(no metadata yet)"
CATEGORICAL_FIELDS = ("software_versions", "convolution_kernel", "sex", "age_band", "view_position")
NUMERIC_FIELDS = ("kvp", "pixel_spacing", "slice_thickness")


@dataclass(frozen=True, slots=True)
class Baseline:
    finding: str
    metric: str
    stratum: str
    value: float
    ci_lower: float | None
    ci_upper: float | None
    alert_limit: float
    source_document: str
    #: when the value or alert limit last changed (the CUSUM restarts there); None: never
    rebaselined_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: int
    name: str
    version: str
    manufacturer: str | None
    intended_use: str
    findings: dict[str, float]  # finding -> operating threshold
    baselines: tuple[Baseline, ...]
    # device identification (MDCG 2022-21 Annex I); None when not configured
    udi_di: str | None = None
    basic_udi_di: str | None = None
    device_class: str | None = None
    notified_body: str | None = None
    certificate: str | None = None

    def baseline(self, finding: str, metric: str, stratum: str = "overall") -> Baseline | None:
        """The stratum's own baseline if one exists, else the overall one."""
        fallback = None
        for b in self.baselines:
            if b.finding == finding and b.metric == metric:
                if b.stratum == stratum:
                    return b
                if b.stratum == "overall":
                    fallback = b
        return fallback


# ---- ingest records: pseudonymised, validated, ready to write -----------------


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    message_id: str
    model_id: int
    model_version: str
    study_uid_pseudonym: str
    finding: str
    score: float
    predicted_at: datetime
    #: Where the record came from (a conflicting redelivery is dead-lettered there).
    position: SourcePosition | None = None


@dataclass(frozen=True, slots=True)
class StudyMetadataRecord:
    uid_pseudonym: str
    patient_pseudonym: str | None
    accession_pseudonym: str | None
    site_pseudonym: str
    station_pseudonym: str
    manufacturer: str
    model_name: str
    studied_at: datetime | None
    modality: str | None
    software_versions: str | None
    convolution_kernel: str | None
    slice_thickness: float | None
    kvp: float | None
    pixel_spacing: float | None
    magnetic_field_strength: float | None
    body_part: str | None
    view_position: str | None
    sex: str | None
    age_band: str | None


@dataclass(frozen=True, slots=True)
class DiagnosisRecord:
    message_id: str
    study_uid_pseudonym: str
    finding: str
    present: bool
    source: str
    confirmed_at: datetime
    #: Where the record came from (a conflicting redelivery is dead-lettered there).
    position: SourcePosition | None = None


@dataclass(frozen=True, slots=True)
class LabelWithdrawalRecord:
    """An entered-in-error report: void the report-sourced label of (study, finding)."""

    study_uid_pseudonym: str
    finding: str
    report_hash: str


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    source: str
    locator: str
    partition: int
    offset: int
    kind: str | None
    reason: str
    payload: str | None
    payload_sha256: str
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class SpoolRecord:
    """A DICOM instance written to the spool (file already fsynced) for the embed job."""

    study_uid_pseudonym: str
    sop_instance_pseudonym: str
    file_name: str
    size_bytes: int
    transfer_syntax: str | None


@dataclass(frozen=True, slots=True)
class OffsetRecord:
    consumer_group: str
    topic: str
    partition: int
    next_offset: int


@dataclass(slots=True)
class IngestBatch:
    predictions: list[PredictionRecord] = field(default_factory=list)
    metadata: list[StudyMetadataRecord] = field(default_factory=list)
    diagnoses: list[DiagnosisRecord] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    spool: list[SpoolRecord] = field(default_factory=list)
    offsets: list[OffsetRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.predictions)
            + len(self.metadata)
            + len(self.diagnoses)
            + len(self.dead_letters)
            + len(self.spool)
        )


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """What one batch did: new rows written and duplicates ignored, by kind."""

    predictions_new: int = 0
    predictions_duplicate: int = 0
    metadata: int = 0
    diagnoses_new: int = 0
    diagnoses_duplicate: int = 0
    dead_letters: int = 0
    spooled_new: int = 0
    spooled_duplicate: int = 0
    #: Records whose message id was already stored (or seen earlier in the batch) with
    #: different content: not written, dead-lettered with a "conflict: ..." reason.
    conflicts: int = 0

    def __add__(self, other: IngestCounts) -> IngestCounts:
        return IngestCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(IngestCounts))
        )


# ---- what the jobs read -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaseTable:
    """Predictions of one model and finding, joined with study metadata and labels.

    Columns are numpy arrays of equal length; ``label`` is 1/0 where a confirmed
    diagnosis exists and -1 where none has arrived yet.
    """

    score: np.ndarray
    predicted_at: np.ndarray  # datetime64[us], UTC
    site: np.ndarray  # object: site label
    scanner: np.ndarray  # object: device label
    label: np.ndarray  # int8: 1, 0, or -1 (unlabelled)
    confirmed_at: np.ndarray  # datetime64[us]; NaT when unlabelled
    categorical: dict[str, np.ndarray]  # software_versions, convolution_kernel, sex, ...
    numeric: dict[str, np.ndarray]  # kvp, pixel_spacing, ... (float, nan when missing)

    def __len__(self) -> int:
        return int(self.score.shape[0])

    @classmethod
    def concat(cls, first: CaseTable, second: CaseTable) -> CaseTable:
        """Two tables of the same columns, ``second``'s rows after ``first``'s."""
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

    def select(self, mask: np.ndarray) -> CaseTable:
        return CaseTable(
            score=self.score[mask],
            predicted_at=self.predicted_at[mask],
            site=self.site[mask],
            scanner=self.scanner[mask],
            label=self.label[mask],
            confirmed_at=self.confirmed_at[mask],
            categorical={k: v[mask] for k, v in self.categorical.items()},
            numeric={k: v[mask] for k, v in self.numeric.items()},
        )

    def stratum(self, kind: str) -> np.ndarray:
        """The per-case value of a stratum kind ('overall', 'site', 'scanner', 'sex', ...)."""
        if kind == "overall":
            return np.full(len(self), "all", dtype=object)
        if kind == "site":
            return self.site
        if kind == "scanner":
            return self.scanner
        return self.categorical[kind]


@dataclass(frozen=True, slots=True)
class DriftCheck:
    id: int
    model: str
    detector: str
    signal: str
    stratum_kind: str
    stratum_value: str
    window_start: datetime
    window_end: datetime
    status: str
    statistic: float | None
    p_value: float | None
    threshold: float
    n_reference: int
    n_window: int
    details: dict[str, Any]
    #: p-value after the window's multiple-testing control ([drift] correction).
    p_adjusted: float | None = None
    #: How far the distribution moved (``effect_name``: ks_d, cramers_v, mmd_norm).
    effect_size: float | None = None
    effect_name: str | None = None
    #: Tolerance the effect had to reach for ``drift`` ([drift] min_effect).
    min_effect: float | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A categorical header value first seen at a stratum (new software version, kernel)."""

    id: int
    model_id: int
    stratum_kind: str
    stratum_value: str
    field: str
    old_value: str | None
    new_value: str
    first_seen_at: datetime


@dataclass(frozen=True, slots=True)
class ChangeEventDraft:
    """A change event to record; unique per model, stratum, field and new value."""

    model_id: int
    stratum_kind: str
    stratum_value: str
    field: str
    old_value: str | None
    new_value: str
    first_seen_at: datetime


@dataclass(frozen=True, slots=True)
class PerformanceCheck:
    id: int
    model: str
    finding: str
    metric: str
    stratum_kind: str
    stratum_value: str
    window_start: datetime
    window_end: datetime
    estimated: bool
    status: str
    value: float | None
    ci_lower: float | None
    ci_upper: float | None
    n: int
    labelled_fraction: float | None
    baseline_value: float | None
    alert_limit: float | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    at: datetime
    kind: str
    actor: str
    note: str | None
    drift_check_id: int | None
    performance_check_id: int | None


@dataclass(frozen=True, slots=True)
class Incident:
    id: int
    model: str
    signal_kind: str
    signal: str
    stratum_kind: str
    stratum_value: str
    severity: str
    status: str
    title: str
    summary: str
    opened_at: datetime
    aware_at: datetime
    last_evidence_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    closed_at: datetime | None
    resolution: str | None
    capa_reference: str | None
    vigilance_class: str
    mdr_deadline_at: datetime | None
    fda_deadline_at: datetime | None
    events: tuple[IncidentEvent, ...] = ()
    #: the closed incident of the same root cause this one recurs after
    recurrence_of: int | None = None
    #: vigilance reports made to authorities (``incidents report``)
    reports: tuple[VigilanceReport, ...] = ()


@dataclass(frozen=True, slots=True)
class VigilanceReport:
    """A report made to an authority (``eu-mdr`` or ``fda``) for an incident."""

    incident_id: int
    authority: str
    reference: str
    reported_at: datetime
    recorded_by: str
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class DeadlineState:
    """One reporting deadline of an incident: due when, reported when, and its status.

    ``status`` is a :class:`~surveillance.core.statuses.DeadlineStatus` value:
    ``met`` (reported by the deadline), ``missed`` (reported late, or not reported
    and past due), ``open`` (not reported, not yet due), ``not_applicable``.
    """

    authority: str
    due_at: datetime | None
    reported_at: datetime | None
    reference: str | None
    status: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record as stored: where it came from, why, and whether it was replayed."""

    id: int
    source: str
    locator: str
    partition: int | None
    offset: int | None
    kind: str | None
    reason: str
    payload: str | None
    received_at: datetime
    replayed_at: datetime | None

    @property
    def position(self) -> str:
        """Readable source position, e.g. ``kafka imaging.predictions partition 0 offset 7``."""
        return SourcePosition(self.source, self.locator, self.partition, self.offset).describe()


@dataclass(frozen=True, slots=True)
class JobRun:
    """One (job id, scheduled time) in the job-run ledger."""

    id: int
    job_id: str
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None


@dataclass(frozen=True, slots=True)
class AlertDelivery:
    """One queued message of an incident on one channel (open page or resolve)."""

    id: int
    incident_id: int
    channel: str
    kind: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AuditReport:
    """Outcome of ``surveillance audit verify``."""

    events: int
    head_hash: str | None
    problems: tuple[str, ...]
    #: events written without the audit key before the first keyed one (legacy)
    unkeyed_events: int = 0
    #: keyed events whose hash could not be checked (verified without the key)
    unverified_events: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class VolumeRow:
    site: str
    scanner: str
    studies: int
    predictions: int
    labelled: int
    first_at: datetime | None
    last_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReferenceSet:
    name: str
    kind: str
    period_start: datetime
    period_end: datetime
    frozen: bool


@dataclass(frozen=True, slots=True)
class DriftCheckDraft:
    """A drift check to store; unique per :attr:`KEY` (a re-run refreshes the row)."""

    KEY: ClassVar[tuple[str, ...]] = (
        "model_id",
        "detector",
        "signal",
        "stratum_kind",
        "stratum_value",
        "window_start",
        "window_end",
    )

    model_id: int
    reference_set_id: int | None
    detector: str
    signal: str
    stratum_kind: str
    stratum_value: str
    window_start: datetime
    window_end: datetime
    status: str
    statistic: float | None
    p_value: float | None
    threshold: float
    n_reference: int
    n_window: int
    details: dict[str, Any]
    p_adjusted: float | None = None
    effect_size: float | None = None
    effect_name: str | None = None
    min_effect: float | None = None


@dataclass(frozen=True, slots=True)
class PerformanceCheckDraft:
    """A performance check (labelled or estimated) to store; unique per :attr:`KEY`."""

    KEY: ClassVar[tuple[str, ...]] = (
        "model_id",
        "finding",
        "metric",
        "stratum_kind",
        "stratum_value",
        "window_start",
        "window_end",
        "estimated",
    )

    model_id: int
    finding: str
    metric: str
    stratum_kind: str
    stratum_value: str
    window_start: datetime
    window_end: datetime
    estimated: bool
    status: str
    value: float | None
    ci_lower: float | None
    ci_upper: float | None
    n: int
    labelled_fraction: float | None
    baseline_value: float | None
    alert_limit: float | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Partition:
    """One monthly partition of a partitioned table (PostgreSQL, 0010).

    ``start``/``end`` bound the month (UTC, end exclusive); ``rows`` is the
    planner's estimate (``pg_class.reltuples``, -1 before the first ANALYZE).
    """

    table: str
    name: str
    start: datetime
    end: datetime
    rows: int


__all__ = [
    "AuditReport",
    "Baseline",
    "CaseTable",
    "ChangeEvent",
    "ChangeEventDraft",
    "DeadLetter",
    "DeadLetterRecord",
    "DeadlineState",
    "DiagnosisRecord",
    "DriftCheck",
    "Incident",
    "IncidentEvent",
    "IngestBatch",
    "IngestCounts",
    "LabelWithdrawalRecord",
    "ModelInfo",
    "OffsetRecord",
    "Partition",
    "PerformanceCheck",
    "PredictionRecord",
    "SpoolRecord",
    "StudyMetadataRecord",
    "VigilanceReport",
    "VolumeRow",
]
