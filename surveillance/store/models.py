"""ORM models: the tables named in DESIGN.md ("Store").

Rows never leave ``surveillance.store``: callers get the domain objects in
:mod:`surveillance.store.domain`. The schema changes only through ``alembic/``;
``Base.metadata`` is what the migration test compares the live database with.

Identifiers (StudyInstanceUID, PatientID, AccessionNumber, StationName,
InstitutionName) exist here only as keyed HMAC-SHA256 pseudonyms (64 hex chars).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from surveillance.core.statuses import (
    CheckUnitStatus,
    DeliveryKind,
    DeliveryStatus,
    DiagnosisSource,
    DriftStatus,
    FscaStatus,
    IncidentStatus,
    JobRunStatus,
    PerformanceStatus,
    ReferenceKind,
    ReportAuthority,
    Severity,
    SignalKind,
    VigilanceClass,
    check_in,
)
from surveillance.store.types import JSONDoc, UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PSEUDONYM = String(64)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSONDoc,
    }


def _id() -> Mapped[int]:
    return mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True)


class ModelRow(Base):
    __tablename__ = "model"
    id: Mapped[int] = _id()
    name: Mapped[str] = mapped_column(String(128), unique=True, comment="Registered model name")
    version: Mapped[str] = mapped_column(String(64), comment="Version cleared and deployed")
    manufacturer: Mapped[str | None] = mapped_column(String(256), comment="Legal manufacturer")
    intended_use: Mapped[str] = mapped_column(Text, comment="Intended use statement")
    findings: Mapped[dict[str, Any]] = mapped_column(
        comment="Finding name -> operating threshold on the score"
    )
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    # device identification for the PSUR (MDCG 2022-21 Annex I) and the Article 72 export
    udi_di: Mapped[str | None] = mapped_column(String(128), comment="UDI-DI of the device version")
    basic_udi_di: Mapped[str | None] = mapped_column(
        String(128), comment="Basic UDI-DI (the device model's key in EUDAMED)"
    )
    device_class: Mapped[str | None] = mapped_column(
        String(32), comment="Risk class, e.g. IIa (MDR Annex VIII) or FDA class II"
    )
    notified_body: Mapped[str | None] = mapped_column(
        String(256), comment="Notified body name and number, e.g. 'TUV SUD (0123)'"
    )
    certificate: Mapped[str | None] = mapped_column(
        String(256), comment="Certificate number(s) under which the device is marketed"
    )


class BaselineRow(Base):
    """One clearance-study figure: what the model must keep delivering."""

    __tablename__ = "clearance_baseline"
    __table_args__ = (
        UniqueConstraint("model_id", "finding", "metric", "stratum", name="uq_baseline_key"),
        CheckConstraint("alert_limit >= 0 AND alert_limit <= 1", name="alert_limit_range"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    finding: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(32), comment="sensitivity, specificity, auroc, ...")
    stratum: Mapped[str] = mapped_column(String(128), comment="'overall' or e.g. 'sex=F'")
    value: Mapped[float] = mapped_column(Float, comment="Point estimate in the clearance study")
    ci_lower: Mapped[float | None] = mapped_column(Float)
    ci_upper: Mapped[float | None] = mapped_column(Float)
    alert_limit: Mapped[float] = mapped_column(Float, comment="Live value below this breaches")
    source_document: Mapped[str] = mapped_column(Text, comment="Where the figure is documented")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    rebaselined_at: Mapped[datetime | None] = mapped_column(
        comment="When the value or alert limit last changed (UTC); the CUSUM chart restarts "
        "there. NULL: unchanged since registration"
    )


class SiteRow(Base):
    __tablename__ = "site"
    id: Mapped[int] = _id()
    pseudonym: Mapped[str] = mapped_column(
        PSEUDONYM, unique=True, comment="HMAC of InstitutionName"
    )
    label: Mapped[str] = mapped_column(String(128), comment="Display name chosen by the operator")


class DeviceRow(Base):
    """A scanner: a station at a site. Its software version is recorded per study."""

    __tablename__ = "device"
    __table_args__ = (
        UniqueConstraint(
            "site_id", "station_pseudonym", "manufacturer", "model_name", name="uq_device_key"
        ),
    )
    id: Mapped[int] = _id()
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    station_pseudonym: Mapped[str] = mapped_column(PSEUDONYM, comment="HMAC of StationName")
    manufacturer: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(256), comment="Display name: vendor model @ site")


class StudyRow(Base):
    """One imaging study. Created by whichever event names it first."""

    __tablename__ = "study"
    __table_args__ = (Index("ix_study_site_studied", "site_id", "studied_at"),)
    id: Mapped[int] = _id()
    uid_pseudonym: Mapped[str] = mapped_column(
        PSEUDONYM, unique=True, comment="HMAC of StudyInstanceUID"
    )
    patient_pseudonym: Mapped[str | None] = mapped_column(PSEUDONYM)
    accession_pseudonym: Mapped[str | None] = mapped_column(PSEUDONYM)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("site.id"))
    device_id: Mapped[int | None] = mapped_column(ForeignKey("device.id"), index=True)
    studied_at: Mapped[datetime | None] = mapped_column(comment="Study date (or first prediction)")
    modality: Mapped[str | None] = mapped_column(String(16))
    software_versions: Mapped[str | None] = mapped_column(String(128))
    convolution_kernel: Mapped[str | None] = mapped_column(String(64))
    slice_thickness: Mapped[float | None] = mapped_column(Float)
    kvp: Mapped[float | None] = mapped_column(Float)
    pixel_spacing: Mapped[float | None] = mapped_column(Float)
    magnetic_field_strength: Mapped[float | None] = mapped_column(Float)
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    sex: Mapped[str | None] = mapped_column(String(1))
    age_band: Mapped[str | None] = mapped_column(String(8))
    has_metadata: Mapped[bool] = mapped_column(Boolean, default=False)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictionRow(Base):
    """One score for one finding of one study.

    On PostgreSQL (0010) the table is partitioned by month of ``predicted_at``
    (``prediction_yYYYYmMM`` + ``prediction_default``), its primary key is
    ``(id, predicted_at)`` and the idempotency key (message_id, finding) lives in
    :class:`PredictionKeyRow`. On SQLite it is a plain table whose primary key is
    ``id`` and which keeps ``uq_prediction_message_finding`` (from 0001).
    """

    __tablename__ = "prediction"
    __table_args__ = (
        CheckConstraint("score >= 0 AND score <= 1", name="score_range"),
        Index("ix_prediction_model_time", "model_id", "predicted_at"),
        # Dashboards (0008): ingest rate and lag read both columns from the index
        # alone; freshness per site scans a time range across models.
        Index("ix_prediction_ingested_at", "ingested_at", "predicted_at"),
        Index("ix_prediction_predicted_at", "predicted_at", "study_id"),
        {
            "comment": "One score for one finding of one study; "
            "partitioned by month of predicted_at (UTC)",
            "info": {"partitioned_by": "predicted_at"},
        },
    )
    id: Mapped[int] = _id()
    message_id: Mapped[str] = mapped_column(String(256))
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    model_version: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    finding: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    predicted_at: Mapped[datetime] = mapped_column()
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)


class PredictionKeyRow(Base):
    """The idempotency key of ``prediction`` on PostgreSQL (0010): unique across partitions.

    Written in the same transaction as the prediction rows it keys; ``predicted_at``
    finds the stored row's partition. PostgreSQL only (``info["backend"]``): on
    SQLite ``prediction`` itself carries the unique constraint.
    """

    __tablename__ = "prediction_key"
    __table_args__ = (
        {
            "comment": "Idempotency key of prediction (unique across its partitions)",
            "info": {"backend": "postgresql"},
        },
    )
    message_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    finding: Mapped[str] = mapped_column(String(128), primary_key=True)
    predicted_at: Mapped[datetime] = mapped_column(
        comment="predicted_at of the stored prediction row (finds its partition)"
    )


class DiagnosisRow(Base):
    """A clinician-confirmed ground truth, possibly weeks after the prediction."""

    __tablename__ = "diagnosis"
    __table_args__ = (
        UniqueConstraint("message_id", name="uq_diagnosis_message_id"),
        Index("ix_diagnosis_study_finding", "study_id", "finding"),
        CheckConstraint(check_in("source", DiagnosisSource), name="source_valid"),
    )
    id: Mapped[int] = _id()
    message_id: Mapped[str] = mapped_column(String(256))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    finding: Mapped[str] = mapped_column(String(128))
    present: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(32))
    confirmed_at: Mapped[datetime] = mapped_column()
    ingested_at: Mapped[datetime] = mapped_column(default=utcnow)
    withdrawn_at: Mapped[datetime | None] = mapped_column(
        comment="When a later entered-in-error report withdrew this label (UTC); NULL: valid"
    )
    withdrawn_by: Mapped[str | None] = mapped_column(
        String(64), comment="Keyed hash of the entered-in-error report that withdrew it"
    )


class EmbeddingRow(Base):
    """One image embedding of a study by one extractor version.

    On PostgreSQL (0010) partitioned by month of ``created_at``, primary key
    ``(id, created_at)``; the key (study, extractor, version) is unique through
    :class:`EmbeddingKeyRow` and looked up with ``ix_embedding_study_extractor``.
    On SQLite a plain table with ``uq_embedding_key`` (from 0001).
    """

    __tablename__ = "embedding"
    __table_args__ = (
        Index("ix_embedding_study_extractor", "study_id", "extractor", "extractor_version"),
        {
            "comment": "One image embedding per study and extractor version; "
            "partitioned by month of created_at (UTC)",
            "info": {"partitioned_by": "created_at"},
        },
    )
    id: Mapped[int] = _id()
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"))
    extractor: Mapped[str] = mapped_column(String(64))
    extractor_version: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary, comment="float32 little-endian")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EmbeddingKeyRow(Base):
    """The unique key of ``embedding`` on PostgreSQL (0010), written with the row it keys.

    PostgreSQL only (``info["backend"]``): on SQLite ``embedding`` carries
    ``uq_embedding_key`` itself.
    """

    __tablename__ = "embedding_key"
    __table_args__ = (
        {
            "comment": "Unique key of embedding (one per study and extractor version)",
            "info": {"backend": "postgresql"},
        },
    )
    study_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    extractor: Mapped[str] = mapped_column(String(64), primary_key=True)
    extractor_version: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        comment="created_at of the stored embedding row (finds its partition)"
    )


class ReferenceSetRow(Base):
    """The data a window is compared with: a frozen clearance set or a rolling period."""

    __tablename__ = "reference_set"
    __table_args__ = (
        UniqueConstraint("model_id", "name", name="uq_reference_set_name"),
        CheckConstraint(check_in("kind", ReferenceKind), name="kind_valid"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), comment="clearance | rolling")
    period_start: Mapped[datetime] = mapped_column()
    period_end: Mapped[datetime] = mapped_column()
    frozen: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobRunRow(Base):
    """One run of a scheduled job; (job_id, scheduled_for) is unique so none doubles."""

    __tablename__ = "job_run"
    __table_args__ = (
        UniqueConstraint("job_id", "scheduled_for", name="uq_job_run_key"),
        Index("ix_job_run_scheduled_for", "scheduled_for"),  # dashboards (0008)
        CheckConstraint(check_in("status", JobRunStatus), name="status_valid"),
    )
    id: Mapped[int] = _id()
    job_id: Mapped[str] = mapped_column(String(64))
    scheduled_for: Mapped[datetime] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    status: Mapped[str] = mapped_column(
        String(16), comment="running | succeeded | failed | abandoned"
    )
    error: Mapped[str | None] = mapped_column(Text)


class CheckUnitRow(Base):
    """One drift window to judge, queued by a run and claimed by any replica (SKIP LOCKED)."""

    __tablename__ = "check_unit"
    __table_args__ = (
        UniqueConstraint("model_id", "job", "window_start", "window_end", name="uq_check_unit_key"),
        Index("ix_check_unit_status", "status", "claimed_at"),
        CheckConstraint(check_in("status", CheckUnitStatus), name="status_valid"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(
        ForeignKey("model.id", ondelete="CASCADE"), comment="Model whose window this is"
    )
    job: Mapped[str] = mapped_column(String(16), comment="drift")
    window_start: Mapped[datetime] = mapped_column(comment="Window start (UTC, inclusive)")
    window_end: Mapped[datetime] = mapped_column(comment="Window end (UTC, exclusive)")
    reference_set_id: Mapped[int] = mapped_column(
        ForeignKey("reference_set.id"), comment="Reference the window is judged against"
    )
    plan_id: Mapped[str] = mapped_column(
        String(32), comment="The run that queued it last (random hex): it waits for its units"
    )
    job_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("job_run.id"), comment="Job run the checks are recorded under"
    )
    status: Mapped[str] = mapped_column(String(16), comment="pending | running | done | failed")
    queued_at: Mapped[datetime] = mapped_column(default=utcnow, comment="When queued (UTC)")
    claimed_at: Mapped[datetime | None] = mapped_column(comment="When last claimed (UTC)")
    claimed_by: Mapped[str | None] = mapped_column(
        String(128), comment="host:pid of the replica that claimed it"
    )
    finished_at: Mapped[datetime | None] = mapped_column(comment="When judged or failed (UTC)")
    attempts: Mapped[int] = mapped_column(default=0, comment="Claims so far")
    error: Mapped[str | None] = mapped_column(Text, comment="Why the last attempt failed")


def _stratum_kind() -> Mapped[str]:
    return mapped_column(String(32), comment="overall | site | scanner | sex | age_band")


def _stratum_value() -> Mapped[str]:
    return mapped_column(String(256), comment="Stratum value (site/scanner label, 'F', ...)")


class DriftCheckRow(Base):
    __tablename__ = "drift_check"
    __table_args__ = (
        UniqueConstraint(
            "model_id",
            "detector",
            "signal",
            "stratum_kind",
            "stratum_value",
            "window_start",
            "window_end",
            name="uq_drift_check_window",
        ),
        Index("ix_drift_check_model_window", "model_id", "window_end"),
        CheckConstraint(check_in("status", DriftStatus), name="status_valid"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    reference_set_id: Mapped[int | None] = mapped_column(ForeignKey("reference_set.id"))
    job_run_id: Mapped[int | None] = mapped_column(ForeignKey("job_run.id"))
    detector: Mapped[str] = mapped_column(String(32))
    signal: Mapped[str] = mapped_column(
        String(128), comment="What was tested, e.g. score:pneumothorax"
    )
    stratum_kind: Mapped[str] = _stratum_kind()
    stratum_value: Mapped[str] = _stratum_value()
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    status: Mapped[str] = mapped_column(
        String(24), comment="ok | drift | below_tolerance | insufficient_data"
    )
    statistic: Mapped[float | None] = mapped_column(Float)
    p_value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    n_reference: Mapped[int] = mapped_column(Integer)
    n_window: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    p_adjusted: Mapped[float | None] = mapped_column(
        Float,
        comment="p-value adjusted across the window's strata and signals ([drift] correction)",
    )
    effect_size: Mapped[float | None] = mapped_column(
        Float, comment="How far the distribution moved, on the scale named by effect_name"
    )
    effect_name: Mapped[str | None] = mapped_column(
        String(32), comment="Effect measure: ks_d | cramers_v | mmd_norm"
    )
    min_effect: Mapped[float | None] = mapped_column(
        Float, comment="Tolerance the effect had to reach to count as drift ([drift] min_effect)"
    )


class ChangeEventRow(Base):
    """A categorical header value seen for the first time at a stratum (a new software
    version, a new kernel): the dated anchor a drift incident can name."""

    __tablename__ = "change_event"
    __table_args__ = (
        UniqueConstraint(
            "model_id",
            "stratum_kind",
            "stratum_value",
            "field",
            "new_value",
            name="uq_change_event_value",
        ),
        Index("ix_change_event_model_seen", "model_id", "first_seen_at"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    stratum_kind: Mapped[str] = _stratum_kind()
    stratum_value: Mapped[str] = _stratum_value()
    field: Mapped[str] = mapped_column(
        String(64), comment="Header field, e.g. software_versions or convolution_kernel"
    )
    old_value: Mapped[str | None] = mapped_column(
        String(256), comment="Most frequent value at the stratum before the change; NULL if none"
    )
    new_value: Mapped[str] = mapped_column(String(256), comment="The value first seen")
    first_seen_at: Mapped[datetime] = mapped_column(
        comment="Time of the first prediction of a study with the new value (UTC)"
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PerformanceCheckRow(Base):
    __tablename__ = "performance_check"
    __table_args__ = (
        UniqueConstraint(
            "model_id",
            "finding",
            "metric",
            "stratum_kind",
            "stratum_value",
            "window_start",
            "window_end",
            "estimated",
            name="uq_performance_check_window",
        ),
        Index("ix_performance_check_model_window", "model_id", "window_end"),
        CheckConstraint(check_in("status", PerformanceStatus), name="status_valid"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    job_run_id: Mapped[int | None] = mapped_column(ForeignKey("job_run.id"))
    finding: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(32))
    stratum_kind: Mapped[str] = _stratum_kind()
    stratum_value: Mapped[str] = _stratum_value()
    window_start: Mapped[datetime] = mapped_column()
    window_end: Mapped[datetime] = mapped_column()
    estimated: Mapped[bool] = mapped_column(Boolean, default=False, comment="Label-free estimate")
    status: Mapped[str] = mapped_column(
        String(24), comment="ok | warning | breach | insufficient_data"
    )
    value: Mapped[float | None] = mapped_column(Float)
    ci_lower: Mapped[float | None] = mapped_column(Float)
    ci_upper: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer, comment="Cases in the metric's denominator")
    labelled_fraction: Mapped[float | None] = mapped_column(Float)
    baseline_value: Mapped[float | None] = mapped_column(Float)
    alert_limit: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IncidentRow(Base):
    """A PMS incident: one open per (model, signal, stratum), updated with new evidence."""

    __tablename__ = "incident"
    __table_args__ = (
        Index(
            "uq_incident_open_dedup_key",
            "dedup_key",
            unique=True,
            postgresql_where=text("status <> 'closed'"),
            sqlite_where=text("status <> 'closed'"),
        ),
        CheckConstraint(check_in("status", IncidentStatus), name="status_valid"),
        CheckConstraint(check_in("severity", Severity), name="severity_valid"),
        CheckConstraint(check_in("signal_kind", SignalKind), name="signal_kind_valid"),
        CheckConstraint(check_in("vigilance_class", VigilanceClass), name="vigilance_class_valid"),
    )
    id: Mapped[int] = _id()
    dedup_key: Mapped[str] = mapped_column(String(512))
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    signal_kind: Mapped[str] = mapped_column(String(16), comment="drift | performance")
    signal: Mapped[str] = mapped_column(String(128))
    stratum_kind: Mapped[str] = _stratum_kind()
    stratum_value: Mapped[str] = _stratum_value()
    severity: Mapped[str] = mapped_column(String(16), comment="low | medium | high | critical")
    status: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(512))
    summary: Mapped[str] = mapped_column(Text, comment="Generated from check results, no PHI")
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    aware_at: Mapped[datetime] = mapped_column(comment="When the manufacturer became aware")
    last_evidence_at: Mapped[datetime] = mapped_column()
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    closed_at: Mapped[datetime | None] = mapped_column()
    resolution: Mapped[str | None] = mapped_column(Text)
    capa_reference: Mapped[str | None] = mapped_column(String(128))
    vigilance_class: Mapped[str] = mapped_column(
        String(48),
        comment="assessment_pending | not_reportable | serious_incident | "
        "serious_public_health_threat | death_or_serious_deterioration",
    )
    remedial_action: Mapped[bool] = mapped_column(Boolean, default=False)
    mdr_deadline_at: Mapped[datetime | None] = mapped_column(comment="EU MDR Art. 87 deadline")
    fda_deadline_at: Mapped[datetime | None] = mapped_column(comment="21 CFR 803 deadline")
    reported_at: Mapped[datetime | None] = mapped_column()
    recurrence_of: Mapped[int | None] = mapped_column(
        ForeignKey("incident.id"),
        comment="The closed incident of the same root cause this one recurs after (new windows)",
    )


class VigilanceReportRow(Base):
    """A vigilance report made to an authority for an incident (one per authority)."""

    __tablename__ = "vigilance_report"
    __table_args__ = (
        UniqueConstraint("incident_id", "authority", name="uq_vigilance_report_authority"),
        CheckConstraint(check_in("authority", ReportAuthority), name="authority_valid"),
    )
    id: Mapped[int] = _id()
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    authority: Mapped[str] = mapped_column(String(16), comment="eu-mdr | fda")
    reference: Mapped[str] = mapped_column(
        String(128), comment="The authority's or the manufacturer's report reference"
    )
    reported_at: Mapped[datetime] = mapped_column(comment="When the report was made (UTC)")
    recorded_by: Mapped[str] = mapped_column(String(128), comment="Who recorded the report")
    recorded_at: Mapped[datetime] = mapped_column(
        default=utcnow, comment="When the report was recorded here (UTC)"
    )


class IncidentEventRow(Base):
    """The incident timeline: opened, evidence added, acknowledged, closed, ..."""

    __tablename__ = "incident_event"
    __table_args__ = (Index("ix_incident_event_at", "at"),)  # dashboards (0008)
    id: Mapped[int] = _id()
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)
    drift_check_id: Mapped[int | None] = mapped_column(ForeignKey("drift_check.id"))
    performance_check_id: Mapped[int | None] = mapped_column(ForeignKey("performance_check.id"))


class AlertDeliveryRow(Base):
    __tablename__ = "alert_delivery"
    __table_args__ = (
        UniqueConstraint("incident_id", "channel", "kind", name="uq_alert_delivery_key"),
        CheckConstraint(check_in("status", DeliveryStatus), name="status_valid"),
        CheckConstraint(check_in("kind", DeliveryKind), name="kind_valid"),
    )
    id: Mapped[int] = _id()
    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"))
    channel: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), comment="open | resolve | silence")
    status: Mapped[str] = mapped_column(
        String(16), comment="pending | delivered | failed | cancelled"
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    delivered_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column()


class DeadLetterRow(Base):
    """A rejected record: the reason, where it came from, and a privacy-safe payload."""

    __tablename__ = "dead_letter"
    __table_args__ = (
        UniqueConstraint(
            "source", "locator", "partition", "offset", name="uq_dead_letter_position"
        ),
        Index("ix_dead_letter_received_at", "received_at"),  # dashboards (0008)
    )
    id: Mapped[int] = _id()
    source: Mapped[str] = mapped_column(String(16))
    locator: Mapped[str] = mapped_column(String(1024), comment="Topic or local file path")
    partition: Mapped[int] = mapped_column(Integer, default=-1)
    offset: Mapped[int] = mapped_column(BigInteger, default=-1)
    kind: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(
        Text, comment="Record with identifiers pseudonymised and PHI removed; NULL if unparseable"
    )
    payload_sha256: Mapped[str] = mapped_column(String(64))
    payload_bytes: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column()


class ConsumerOffsetRow(Base):
    """Next offset to read per (group, topic, partition), committed with the rows."""

    __tablename__ = "consumer_offset"
    consumer_group: Mapped[str] = mapped_column(String(128), primary_key=True)
    topic: Mapped[str] = mapped_column(String(256), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    next_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEventRow(Base):
    """Hash-chained audit log: hash = SHA-256(prev_hash + canonical JSON of the row)."""

    __tablename__ = "audit_event"
    __table_args__ = (UniqueConstraint("seq", name="uq_audit_event_seq"),)
    id: Mapped[int] = _id()
    seq: Mapped[int] = mapped_column(BigInteger, comment="1, 2, 3, ... without gaps")
    at: Mapped[datetime] = mapped_column()
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(128))
    detail: Mapped[dict[str, Any]] = mapped_column()
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    db_user: Mapped[str | None] = mapped_column(
        String(128),
        comment="Authenticated database user (current_user) beside the --by name; NULL on SQLite",
    )
    key_id: Mapped[str | None] = mapped_column(
        String(16),
        comment="Id of the audit key whose HMAC made hash (NULL: plain SHA-256, unkeyed)",
    )


class ImageSpoolRow(Base):
    """A received DICOM instance waiting in the spool for the embedding job.

    ``file_name`` is generated by us (never from a DICOM value); the SOP
    Instance UID is kept only as a pseudonym and makes a re-sent instance
    idempotent. Embedding workers claim rows with ``FOR UPDATE SKIP LOCKED``.
    """

    __tablename__ = "image_spool"
    __table_args__ = (
        UniqueConstraint("sop_instance_pseudonym", name="uq_image_spool_sop_instance_pseudonym"),
        Index("ix_image_spool_pending", "embedded_at", "claimed_at"),
    )
    id: Mapped[int] = _id()
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    sop_instance_pseudonym: Mapped[str] = mapped_column(PSEUDONYM, comment="HMAC of SOPInstanceUID")
    file_name: Mapped[str] = mapped_column(String(64), comment="Generated name inside the spool")
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column()
    embedded_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text, comment="Why the file could not be embedded")


class SchedulerJobRow(Base):
    """APScheduler's SQLAlchemy job store table, created here so Alembic owns the schema.

    Its shape is the one APScheduler 3.x expects (``SQLAlchemyJobStore``).
    """

    __tablename__ = "apscheduler_jobs"
    id: Mapped[str] = mapped_column(String(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class FscaRow(Base):
    """A field safety corrective action on the model, as recorded in the QMS."""

    __tablename__ = "fsca"
    __table_args__ = (
        UniqueConstraint("model_id", "reference", name="uq_fsca_reference"),
        CheckConstraint(check_in("status", FscaStatus), name="status_valid"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    reference: Mapped[str] = mapped_column(String(128), comment="FSCA reference in the QMS")
    title: Mapped[str] = mapped_column(String(512), comment="What the action does, in words")
    started_at: Mapped[datetime] = mapped_column(comment="When the action started (UTC)")
    closed_at: Mapped[datetime | None] = mapped_column(comment="When it was closed (UTC)")
    status: Mapped[str] = mapped_column(String(16), comment="open | closed")
    field_safety_notice: Mapped[str | None] = mapped_column(
        Text, comment="Reference of the field safety notice sent to users, if any"
    )
    recorded_by: Mapped[str] = mapped_column(String(128), comment="Who recorded it (--by)")
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow, comment="When recorded (UTC)")


class ComplaintRow(Base):
    """A complaint or item of user feedback, imported from the QMS (no PHI)."""

    __tablename__ = "complaint"
    __table_args__ = (UniqueConstraint("model_id", "reference", name="uq_complaint_reference"),)
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    reference: Mapped[str] = mapped_column(String(128), comment="Complaint id in the QMS")
    received_at: Mapped[datetime] = mapped_column(comment="When the complaint was received (UTC)")
    category: Mapped[str] = mapped_column(
        String(128), comment="Category, e.g. false negative, usability, performance"
    )
    serious: Mapped[bool] = mapped_column(
        Boolean, comment="Whether it was assessed as related to a serious incident"
    )
    summary: Mapped[str] = mapped_column(Text, comment="What was reported, without PHI")
    outcome: Mapped[str | None] = mapped_column(Text, comment="Investigation outcome, if closed")
    source_file: Mapped[str] = mapped_column(
        String(256), comment="Name of the CSV file it was imported from"
    )
    imported_at: Mapped[datetime] = mapped_column(default=utcnow, comment="When imported (UTC)")


class ReportSignoffRow(Base):
    """A PMS report signed off by a person, with the conclusions the next report quotes."""

    __tablename__ = "report_signoff"
    __table_args__ = (
        UniqueConstraint("model_id", "period_label", name="uq_report_signoff_period"),
    )
    id: Mapped[int] = _id()
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id", ondelete="CASCADE"))
    period_label: Mapped[str] = mapped_column(String(64), comment="Report period, e.g. 2026Q3")
    period_start: Mapped[datetime] = mapped_column(comment="Period start, inclusive (UTC)")
    period_end: Mapped[datetime] = mapped_column(comment="Period end, exclusive (UTC)")
    psur_reference: Mapped[str | None] = mapped_column(
        String(128), comment="PSUR reference and version as printed on the report"
    )
    conclusions: Mapped[str] = mapped_column(Text, comment="The signed conclusions, verbatim")
    signed_by: Mapped[str] = mapped_column(String(128), comment="Name and role of the signatory")
    signed_at: Mapped[datetime] = mapped_column(comment="When it was signed (UTC)")
    report_sha256: Mapped[str | None] = mapped_column(
        String(64), comment="SHA-256 of the signed PDF, when given"
    )


# ---- column comments -------------------------------------------------------------
# Every column carries a comment (as MLflow's schema does): inline above where the
# meaning is specific, here for the rest, so `\d+ table` in psql documents itself.
_COMMENTS: dict[str, str] = {
    "*.id": "Surrogate primary key",
    "*.model_id": "The registered model (model.id)",
    "*.study_id": "The study (study.id); its identifiers exist only as pseudonyms",
    "*.site_id": "The site (site.id)",
    "*.incident_id": "The incident (incident.id)",
    "*.job_run_id": "The job run that produced this row (job_run.id); NULL when ad hoc",
    "*.created_at": "When the row was written (UTC)",
    "*.received_at": "When the row was received (UTC)",
    "*.ingested_at": "When the row was ingested (UTC)",
    "*.updated_at": "When the row last changed (UTC)",
    "*.finding": "Finding name as registered with the model, e.g. pneumothorax",
    "*.window_start": "Start of the judged window, inclusive (UTC)",
    "*.window_end": "End of the judged window, exclusive (UTC)",
    "*.details": "Detector- or metric-specific extras (JSON, no PHI)",
    "*.ci_lower": "Lower bound of the confidence interval",
    "*.ci_upper": "Upper bound of the confidence interval",
    "*.message_id": "Producer's message id: the idempotency key",
    "*.partition": "Kafka partition (-1 for files)",
    "apscheduler_jobs.id": "APScheduler job id",
    "apscheduler_jobs.next_run_time": "Next run as a POSIX timestamp (APScheduler's format)",
    "apscheduler_jobs.job_state": "Pickled job state (APScheduler's format)",
    "audit_event.at": "When the action happened (UTC)",
    "audit_event.actor": "Who acted: --by name, or a service (scheduler, ingest, ...)",
    "audit_event.action": "What happened, e.g. incident.closed",
    "audit_event.entity": "Kind of thing acted on, e.g. incident",
    "audit_event.entity_id": "Id of the thing acted on",
    "audit_event.detail": "What changed (JSON, no PHI)",
    "audit_event.prev_hash": "Hash of the previous event (chain link)",
    "audit_event.hash": "SHA-256 over prev_hash and this row's canonical JSON",
    "consumer_offset.consumer_group": "Kafka consumer group",
    "consumer_offset.topic": "Kafka topic",
    "consumer_offset.next_offset": "Next offset to read, committed with the rows it covers",
    "dead_letter.source": "kafka | file | dicom | synthetic",
    "dead_letter.offset": "Kafka offset or file line number (-1 when none)",
    "dead_letter.kind": "Event kind when known (prediction, dicom-metadata, diagnosis)",
    "dead_letter.reason": "Why the record was rejected, in words",
    "dead_letter.payload_sha256": "SHA-256 of the original payload (to match a resend)",
    "dead_letter.payload_bytes": "Size of the original payload in bytes",
    "dead_letter.replayed_at": "When the record was replayed successfully (UTC)",
    "job_run.job_id": "Scheduler job id, e.g. checks or embed",
    "job_run.scheduled_for": "The scheduled fire time this run stands for (UTC)",
    "job_run.started_at": "When the run started (UTC)",
    "job_run.finished_at": "When the run finished (UTC); NULL while running",
    "job_run.error": "Error of a failed or abandoned run",
    "model.registered_at": "When the model was first registered (UTC)",
    "clearance_baseline.finding": "Finding the figure is about",
    "device.manufacturer": "DICOM Manufacturer",
    "device.model_name": "DICOM ManufacturerModelName",
    "incident.dedup_key": "model|kind|signal|stratum: one open incident per key",
    "incident.signal": "Signal or metric that opened it, e.g. score:pneumothorax or sensitivity",
    "incident.status": "open | acknowledged | investigating | closed",
    "incident.title": "One-line title for lists and pages",
    "incident.opened_at": "When the incident was opened (UTC)",
    "incident.last_evidence_at": "End of the latest window that supports it (UTC)",
    "incident.acknowledged_at": "When on-call acknowledged it (UTC)",
    "incident.acknowledged_by": "Who acknowledged it",
    "incident.closed_at": "When it was closed (UTC)",
    "incident.resolution": "What was found and done (free text written by staff, no PHI)",
    "incident.capa_reference": "CAPA record in the QMS, if any",
    "incident.remedial_action": "Remedial action needed to prevent harm (FDA 5-day rule)",
    "incident.reported_at": "When it was reported to an authority (UTC)",
    "performance_check.metric": "Metric key (surveillance.core.metrics)",
    "performance_check.value": "Live (or estimated) value in the window",
    "performance_check.labelled_fraction": "Share of the window's cases with a confirmed label",
    "performance_check.baseline_value": "Clearance value it is compared with",
    "performance_check.alert_limit": "Limit that decides a breach",
    "reference_set.name": "Reference set name, unique per model",
    "reference_set.period_start": "Start of the reference period (UTC)",
    "reference_set.period_end": "End of the reference period (UTC)",
    "reference_set.frozen": "Never changes once created",
    "alert_delivery.channel": "Configured channel name (webhook, email, alertmanager, ...)",
    "alert_delivery.attempts": "Attempts so far",
    "alert_delivery.next_attempt_at": "When the next attempt is due (UTC); NULL when done",
    "alert_delivery.delivered_at": "When it was delivered (UTC)",
    "alert_delivery.last_error": "Error of the last failed attempt",
    "alert_delivery.payload": "Message as sent (JSON, no PHI)",
    "drift_check.reference_set_id": "Reference set the window was compared with",
    "drift_check.detector": "Detector key: ks, chi2, mmd, ...",
    "drift_check.statistic": "Test statistic",
    "drift_check.p_value": "p-value of the test",
    "drift_check.threshold": "Significance level the p-value is compared with",
    "drift_check.n_reference": "Cases in the reference sample",
    "drift_check.n_window": "Cases in the window",
    "study.patient_pseudonym": "HMAC of PatientID",
    "study.accession_pseudonym": "HMAC of AccessionNumber",
    "study.device_id": "The scanner (device.id)",
    "study.modality": "DICOM Modality",
    "study.software_versions": "DICOM SoftwareVersions",
    "study.convolution_kernel": "DICOM ConvolutionKernel",
    "study.slice_thickness": "DICOM SliceThickness (mm)",
    "study.kvp": "DICOM KVP (kV)",
    "study.pixel_spacing": "DICOM PixelSpacing, row spacing (mm)",
    "study.magnetic_field_strength": "DICOM MagneticFieldStrength (T)",
    "study.body_part": "DICOM BodyPartExamined",
    "study.view_position": "DICOM ViewPosition",
    "study.sex": "PatientSex (M, F, O)",
    "study.age_band": "Age band from PatientAge/BirthDate (never the date itself)",
    "study.has_metadata": "A DICOM header has been received for the study",
    "diagnosis.present": "Finding confirmed present (true) or absent (false)",
    "diagnosis.source": "pathology | consensus | report | follow-up",
    "diagnosis.confirmed_at": "When the diagnosis was confirmed (UTC)",
    "embedding.extractor": "Extractor key, e.g. conv-ae",
    "embedding.extractor_version": "Extractor version (weights or seed)",
    "embedding_key.extractor": "Extractor key, e.g. conv-ae",
    "embedding_key.extractor_version": "Extractor version (weights or seed)",
    "embedding.dim": "Vector length",
    "image_spool.size_bytes": "File size in bytes",
    "image_spool.transfer_syntax": "Transfer syntax UID of the stored file",
    "image_spool.claimed_by": "Worker that holds the claim",
    "image_spool.claimed_at": "When the claim was taken (UTC)",
    "image_spool.embedded_at": "When it was embedded (UTC)",
    "incident_event.at": "When it happened (UTC)",
    "incident_event.kind": "opened | evidence | acknowledged | investigating | assessed | closed",
    "incident_event.actor": "Who acted",
    "incident_event.note": "Note written by the actor (no PHI)",
    "incident_event.drift_check_id": "Drift check added as evidence",
    "incident_event.performance_check_id": "Performance check added as evidence",
    "prediction.model_version": "Model version that produced the score",
    "prediction.score": "Score of the finding in [0, 1]",
    "prediction.predicted_at": "When the model ran (UTC)",
}


def _apply_comments() -> None:
    for table in Base.metadata.tables.values():
        for column in table.columns:
            if column.comment:
                continue
            column.comment = _COMMENTS.get(f"{table.name}.{column.name}") or _COMMENTS.get(
                f"*.{column.name}"
            )
            if not column.comment:
                raise RuntimeError(f"column {table.name}.{column.name} has no comment")


_apply_comments()
