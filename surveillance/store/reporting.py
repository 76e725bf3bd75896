"""Read-only queries for the PMS report and the Article 72 export.

Every query takes a half-open
period ``[start, end)`` of timezone-aware UTC datetimes, and returns domain
dataclasses. Aggregations that differ between PostgreSQL and SQLite (date
bucketing, medians) are done in Python over per-study rows: a quarter of a busy
deployment is ~10^5 studies, which is a few MB in memory.

Which rows belong to a period:

* studies, volumes, label coverage: the study's first prediction of the model
  falls in the period;
* drift and performance checks: the check's window overlaps the period;
* incidents: open at any moment of the period, or with evidence in it (an
  incident opened after the quarter about data of the quarter belongs to it);
* dead letters, job runs, audit events: selected by the period of the *data they
  concern*, not by when they were written (a report on last quarter, written
  today, must count last quarter's rejected records and check runs):

  - a dead letter whose payload carries a data timestamp (``predicted_at``,
    ``confirmed_at``) belongs to the period that timestamp falls in; one without
    (unparseable) belongs to the period if it was received in it, or during the
    ingest of the period's records (between the first and the last
    ``ingested_at`` of the period's predictions, plus :data:`INGEST_SLACK`);
  - a job run belongs if it produced a check whose window overlaps the period,
    or was scheduled in it;
  - an audit event belongs if it happened in the period, or acts on the model,
    one of the period's incidents, job runs or dead letters.

Also here, for the PSUR sections of the PMS report: field safety corrective
actions, complaints and report sign-offs (tables ``fsca``, ``complaint``,
``report_signoff``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

from sqlalchemy import and_, func, or_, select

from surveillance.core.errors import UsageError
from surveillance.core.statuses import FscaStatus
from surveillance.store import audit as audit_chain
from surveillance.store.base import Repository
from surveillance.store.convert import incident, vigilance_report
from surveillance.store.domain import (
    NO_METADATA,
    Incident,
    JobRun,
    VigilanceReport,
)
from surveillance.store.engine import SessionFactory
from surveillance.store.models import (
    AuditEventRow,
    ComplaintRow,
    DeadLetterRow,
    DeviceRow,
    DiagnosisRow,
    DriftCheckRow,
    FscaRow,
    IncidentEventRow,
    IncidentRow,
    JobRunRow,
    ModelRow,
    PerformanceCheckRow,
    PredictionRow,
    ReportSignoffRow,
    SiteRow,
    StudyRow,
    VigilanceReportRow,
)
from surveillance.store.types import utcnow

INGEST_SLACK = timedelta(hours=1)
COMPLAINT_COLUMNS = ("reference", "received_at", "category", "serious", "summary")


@dataclass(frozen=True, slots=True)
class StudyInPeriod:
    """One study the model scored in the period, with its first confirmation if any."""

    study_id: int
    predicted_at: datetime
    site: str
    scanner: str
    confirmed_at: datetime | None
    sex: str | None = None
    age_band: str | None = None


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """Studies, how many have a confirmed diagnosis, and how long labels took."""

    site: str
    scanner: str
    studies: int
    labelled: int
    median_days_to_label: float | None

    @property
    def fraction(self) -> float | None:
        return self.labelled / self.studies if self.studies else None


@dataclass(frozen=True, slots=True)
class WeeklyCount:
    week_start: datetime  # Monday 00:00 UTC
    site: str
    studies: int
    labelled: int


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """An incident with the fields a PMS report needs beyond :class:`Incident`."""

    incident: Incident
    reported_at: datetime | None
    remedial_action: bool
    reports: tuple[VigilanceReport, ...] = ()


@dataclass(frozen=True, slots=True)
class Fsca:
    """A field safety corrective action."""

    id: int
    reference: str
    title: str
    started_at: datetime
    closed_at: datetime | None
    status: str
    field_safety_notice: str | None
    recorded_by: str


@dataclass(frozen=True, slots=True)
class Complaint:
    """A complaint or user feedback imported from the QMS."""

    reference: str
    received_at: datetime
    category: str
    serious: bool
    summary: str
    outcome: str | None


@dataclass(frozen=True, slots=True)
class Signoff:
    """A signed-off PMS report: the conclusions the next report quotes."""

    period_label: str
    period_start: datetime
    period_end: datetime
    psur_reference: str | None
    conclusions: str
    signed_by: str
    signed_at: datetime
    report_sha256: str | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    hash: str


def _utc(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite returns aggregate timestamps as text
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def label_coverage(studies: Sequence[StudyInPeriod]) -> list[CoverageRow]:
    """Per site and scanner, plus an ``all`` row first."""
    groups: dict[tuple[str, str], list[StudyInPeriod]] = {}
    for study in studies:
        groups.setdefault((study.site, study.scanner), []).append(study)

    def row(site: str, scanner: str, items: Sequence[StudyInPeriod]) -> CoverageRow:
        delays = [
            (x.confirmed_at - x.predicted_at).total_seconds() / 86400
            for x in items
            if x.confirmed_at is not None
        ]
        return CoverageRow(
            site=site,
            scanner=scanner,
            studies=len(items),
            labelled=len(delays),
            median_days_to_label=median(delays) if delays else None,
        )

    return [row("all", "all", studies)] + [
        row(site, scanner, items) for (site, scanner), items in sorted(groups.items())
    ]


def weekly_counts(studies: Sequence[StudyInPeriod]) -> list[WeeklyCount]:
    """Studies and labelled studies per ISO week (Monday 00:00 UTC) and site."""
    counts: dict[tuple[datetime, str], list[int]] = {}
    for study in studies:
        day = study.predicted_at.replace(hour=0, minute=0, second=0, microsecond=0)
        week = day - timedelta(days=day.weekday())
        cell = counts.setdefault((week, study.site), [0, 0])
        cell[0] += 1
        cell[1] += study.confirmed_at is not None
    return [
        WeeklyCount(week_start=week, site=site, studies=n, labelled=labelled)
        for (week, site), (n, labelled) in sorted(counts.items())
    ]


class ReportingRepository(Repository):
    """Period queries for the PMS report and the Article 72 export."""

    def __init__(self, sessions: SessionFactory, registry: Any) -> None:
        super().__init__(sessions)
        self._registry = registry

    def _model_id(self, model_name: str) -> int:
        return self._registry.model(model_name).id  # raises NotFoundError with what to do

    def studies_in_period(
        self, model_id: int, start: datetime, end: datetime
    ) -> list[StudyInPeriod]:
        """Studies whose first prediction of the model falls in ``[start, end)``."""
        first_prediction = (
            select(
                PredictionRow.study_id.label("study_id"),
                func.min(PredictionRow.predicted_at).label("predicted_at"),
            )
            .where(PredictionRow.model_id == model_id)
            .group_by(PredictionRow.study_id)
            .subquery()
        )
        first_label = (
            select(
                DiagnosisRow.study_id.label("study_id"),
                func.min(DiagnosisRow.confirmed_at).label("confirmed_at"),
            )
            .group_by(DiagnosisRow.study_id)
            .subquery()
        )
        stmt = (
            select(
                first_prediction.c.study_id,
                first_prediction.c.predicted_at,
                func.coalesce(SiteRow.label, NO_METADATA),
                func.coalesce(DeviceRow.label, NO_METADATA),
                first_label.c.confirmed_at,
                StudyRow.sex,
                StudyRow.age_band,
            )
            .join(StudyRow, StudyRow.id == first_prediction.c.study_id)
            .outerjoin(SiteRow, SiteRow.id == StudyRow.site_id)
            .outerjoin(DeviceRow, DeviceRow.id == StudyRow.device_id)
            .outerjoin(first_label, first_label.c.study_id == first_prediction.c.study_id)
            .where(first_prediction.c.predicted_at >= start, first_prediction.c.predicted_at < end)
            .order_by(first_prediction.c.predicted_at)
        )
        with self._sessions.scope() as s:
            rows = s.execute(stmt).all()
        # min() over a UTCDateTime column loses the type decorator on SQLite: re-attach UTC.
        return [
            StudyInPeriod(
                study_id=study_id,
                predicted_at=_utc(predicted_at),
                site=site,
                scanner=scanner,
                confirmed_at=None if confirmed is None else _utc(confirmed),
                sex=sex,
                age_band=age_band,
            )
            for study_id, predicted_at, site, scanner, confirmed, sex, age_band in rows
        ]

    def incidents_in_period(
        self, model_id: int, start: datetime, end: datetime
    ) -> list[IncidentRecord]:
        """Incidents open at some moment of the period or with evidence in it, with timelines."""
        open_during = and_(
            IncidentRow.opened_at < end,
            or_(IncidentRow.closed_at.is_(None), IncidentRow.closed_at >= start),
        )
        evidence_in = and_(
            IncidentRow.last_evidence_at >= start, IncidentRow.last_evidence_at < end
        )
        stmt = (
            select(IncidentRow, ModelRow.name)
            .join(ModelRow, ModelRow.id == IncidentRow.model_id)
            .where(IncidentRow.model_id == model_id, or_(open_during, evidence_in))
            .order_by(IncidentRow.opened_at, IncidentRow.id)
        )
        with self._sessions.scope() as s:
            result = []
            for row, name in s.execute(stmt).all():
                events = s.scalars(
                    select(IncidentEventRow)
                    .where(IncidentEventRow.incident_id == row.id)
                    .order_by(IncidentEventRow.at, IncidentEventRow.id)
                ).all()
                reports = tuple(
                    vigilance_report(r)
                    for r in s.scalars(
                        select(VigilanceReportRow)
                        .where(VigilanceReportRow.incident_id == row.id)
                        .order_by(VigilanceReportRow.reported_at, VigilanceReportRow.id)
                    )
                )
                result.append(
                    IncidentRecord(
                        incident=incident(row, name, events),
                        reported_at=row.reported_at,
                        remedial_action=row.remedial_action,
                        reports=reports,
                    )
                )
            return result

    def _ingest_span(
        self, s: Any, model_id: int, start: datetime, end: datetime
    ) -> tuple[datetime, datetime] | None:
        first, last = s.execute(
            select(func.min(PredictionRow.ingested_at), func.max(PredictionRow.ingested_at)).where(
                PredictionRow.model_id == model_id,
                PredictionRow.predicted_at >= start,
                PredictionRow.predicted_at < end,
            )
        ).one()
        if first is None or last is None:
            return None
        return _utc(first) - INGEST_SLACK, _utc(last) + INGEST_SLACK

    def dead_letters_in_period(
        self, model_id: int, start: datetime, end: datetime
    ) -> list[tuple[int, str, str, datetime]]:
        """(id, kind, reason, data time) of the dead letters concerning the period's data."""
        with self._sessions.scope() as s:
            span = self._ingest_span(s, model_id, start, end)
            rows = s.execute(
                select(
                    DeadLetterRow.id,
                    DeadLetterRow.kind,
                    DeadLetterRow.reason,
                    DeadLetterRow.payload,
                    DeadLetterRow.received_at,
                ).order_by(DeadLetterRow.id)
            ).all()
        chosen = []
        for letter_id, kind, reason, payload, received in rows:
            received = _utc(received)
            data_time = _payload_time(payload)
            if data_time is not None:
                keep = start <= data_time < end
            else:
                keep = start <= received < end or (
                    span is not None and span[0] <= received <= span[1]
                )
            if keep:
                chosen.append((letter_id, kind or "unparseable", reason, data_time or received))
        return chosen

    def dead_letter_count(
        self, start: datetime, end: datetime, *, model_id: int | None = None
    ) -> dict[str, int]:
        """Dead letters concerning the period, by record kind (``unparseable`` if unknown).

        Without ``model_id`` only the received time counts (no ingest span to match).
        """
        if model_id is None:
            with self._sessions.scope() as s:
                rows = s.execute(
                    select(DeadLetterRow.kind, func.count())
                    .where(DeadLetterRow.received_at >= start, DeadLetterRow.received_at < end)
                    .group_by(DeadLetterRow.kind)
                ).all()
            return {kind or "unparseable": int(n) for kind, n in rows}
        counts: dict[str, int] = {}
        for _, kind, _, _ in self.dead_letters_in_period(model_id, start, end):
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def job_runs_in_period(self, model_name: str, start: datetime, end: datetime) -> list[JobRun]:
        """Runs of this model's jobs that judged the period's data or were scheduled in it."""
        model_id = self._model_id(model_name)
        producing = (
            select(DriftCheckRow.job_run_id)
            .where(
                DriftCheckRow.model_id == model_id,
                DriftCheckRow.window_start < end,
                DriftCheckRow.window_end > start,
                DriftCheckRow.job_run_id.is_not(None),
            )
            .union(
                select(PerformanceCheckRow.job_run_id).where(
                    PerformanceCheckRow.model_id == model_id,
                    PerformanceCheckRow.window_start < end,
                    PerformanceCheckRow.window_end > start,
                    PerformanceCheckRow.job_run_id.is_not(None),
                )
            )
        )
        scheduled_in = and_(
            JobRunRow.job_id.like(f"%:{model_name}"),
            JobRunRow.scheduled_for >= start,
            JobRunRow.scheduled_for < end,
        )
        stmt = (
            select(JobRunRow)
            .where(or_(scheduled_in, JobRunRow.id.in_(producing.scalar_subquery())))
            .order_by(JobRunRow.scheduled_for, JobRunRow.id)
        )
        with self._sessions.scope() as s:
            return [
                JobRun(
                    id=r.id,
                    job_id=r.job_id,
                    scheduled_for=r.scheduled_for,
                    started_at=r.started_at,
                    finished_at=r.finished_at,
                    status=r.status,
                    error=r.error,
                )
                for r in s.scalars(stmt)
            ]

    def audit_entries(
        self,
        start: datetime,
        end: datetime,
        *,
        model_name: str | None = None,
        incident_ids: Sequence[int] = (),
        job_run_ids: Sequence[int] = (),
        dead_letter_ids: Sequence[int] = (),
    ) -> list[AuditEntry]:
        """Audit events of the period, plus those acting on what the period's data concerns."""
        about = [and_(AuditEventRow.at >= start, AuditEventRow.at < end)]
        for entity, ids in (
            ("model", [model_name] if model_name else []),
            ("incident", [str(i) for i in incident_ids]),
            ("job_run", [str(i) for i in job_run_ids]),
            ("dead_letter", [str(i) for i in dead_letter_ids]),
        ):
            if ids:
                about.append(and_(AuditEventRow.entity == entity, AuditEventRow.entity_id.in_(ids)))
        if model_name:
            about.append(
                and_(
                    AuditEventRow.entity == "clearance_baseline",
                    AuditEventRow.entity_id.like(f"{model_name}/%"),
                )
            )
        stmt = select(AuditEventRow).where(or_(*about)).order_by(AuditEventRow.seq)
        with self._sessions.scope() as s:
            return [
                AuditEntry(
                    seq=r.seq,
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    entity=r.entity,
                    entity_id=r.entity_id,
                    hash=r.hash,
                )
                for r in s.scalars(stmt)
            ]

    # ---- field safety corrective actions, complaints, sign-offs ------------------------

    def add_fsca(
        self,
        model_name: str,
        *,
        reference: str,
        title: str,
        started_at: datetime,
        actor: str,
        closed_at: datetime | None = None,
        field_safety_notice: str | None = None,
    ) -> Fsca:
        """Record (or update, by reference) a field safety corrective action; audited."""
        model_id = self._model_id(model_name)
        if closed_at is not None and closed_at < started_at:
            raise UsageError(
                f"--closed {closed_at:%Y-%m-%d} is before --started {started_at:%Y-%m-%d}"
            )
        status = FscaStatus.CLOSED if closed_at is not None else FscaStatus.OPEN
        with self._sessions.scope() as s:
            row = s.scalar(
                select(FscaRow).where(FscaRow.model_id == model_id, FscaRow.reference == reference)
            )
            if row is None:
                row = FscaRow(model_id=model_id, reference=reference, recorded_at=utcnow())
                s.add(row)
            row.title = title
            row.started_at = started_at
            row.closed_at = closed_at
            row.status = status.value
            row.field_safety_notice = field_safety_notice
            row.recorded_by = actor
            s.flush()
            audit_chain.append(
                s,
                actor=actor,
                action="fsca.recorded",
                entity="model",
                entity_id=model_name,
                detail={"reference": reference, "title": title, "status": status.value},
            )
            return _fsca(row)

    def fscas(
        self, model_id: int, start: datetime | None = None, end: datetime | None = None
    ) -> list[Fsca]:
        """FSCAs of the model; with a period, those open at some moment of it."""
        stmt = select(FscaRow).where(FscaRow.model_id == model_id)
        if start is not None and end is not None:
            stmt = stmt.where(
                FscaRow.started_at < end,
                or_(FscaRow.closed_at.is_(None), FscaRow.closed_at >= start),
            )
        with self._sessions.scope() as s:
            return [_fsca(r) for r in s.scalars(stmt.order_by(FscaRow.started_at, FscaRow.id))]

    def import_complaints(self, model_name: str, path: Path, *, actor: str) -> tuple[int, int]:
        """Import a QMS complaints CSV; returns (new, updated). Idempotent by reference.

        Columns: ``reference, received_at, category, serious, summary`` and optional
        ``outcome``. ``received_at`` is an ISO date or time (UTC when no offset);
        ``serious`` is yes/no/true/false/1/0. A bad row refuses the whole file (exit 2)
        with its line number, so a half-imported file never happens.
        """
        model_id = self._model_id(model_name)
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in COMPLAINT_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise UsageError(
                        f"{path.name}: missing column(s) {', '.join(missing)}; expected "
                        f"{', '.join(COMPLAINT_COLUMNS)} (and optionally outcome)"
                    )
                parsed = [_complaint(row, path.name, line) for line, row in enumerate(reader, 2)]
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise UsageError(f"{path.name} is not UTF-8 text: {exc.reason}") from exc
        new = updated = 0
        with self._sessions.scope() as s:
            existing = {
                r.reference: r
                for r in s.scalars(select(ComplaintRow).where(ComplaintRow.model_id == model_id))
            }
            for c in parsed:
                row = existing.get(c.reference)
                if row is None:
                    row = ComplaintRow(model_id=model_id, reference=c.reference)
                    s.add(row)
                    existing[c.reference] = row
                    new += 1
                else:
                    updated += 1
                row.received_at = c.received_at
                row.category = c.category
                row.serious = c.serious
                row.summary = c.summary
                row.outcome = c.outcome
                row.source_file = path.name[:256]
                row.imported_at = utcnow()
            audit_chain.append(
                s,
                actor=actor,
                action="complaints.imported",
                entity="model",
                entity_id=model_name,
                detail={"file": path.name, "new": new, "updated": updated},
            )
        return new, updated

    def complaints(self, model_id: int, start: datetime, end: datetime) -> list[Complaint]:
        """Complaints received in ``[start, end)``."""
        stmt = (
            select(ComplaintRow)
            .where(
                ComplaintRow.model_id == model_id,
                ComplaintRow.received_at >= start,
                ComplaintRow.received_at < end,
            )
            .order_by(ComplaintRow.received_at, ComplaintRow.reference)
        )
        with self._sessions.scope() as s:
            return [
                Complaint(r.reference, r.received_at, r.category, r.serious, r.summary, r.outcome)
                for r in s.scalars(stmt)
            ]

    def sign_off(
        self,
        model_name: str,
        *,
        period_label: str,
        period_start: datetime,
        period_end: datetime,
        conclusions: str,
        signed_by: str,
        psur_reference: str | None = None,
        report_sha256: str | None = None,
    ) -> Signoff:
        """Record a person's sign-off of a PMS report; the next report quotes its conclusions."""
        model_id = self._model_id(model_name)
        if not conclusions.strip():
            raise UsageError("--conclusions is empty: a sign-off records what was concluded")
        now = utcnow()
        with self._sessions.scope() as s:
            row = s.scalar(
                select(ReportSignoffRow).where(
                    ReportSignoffRow.model_id == model_id,
                    ReportSignoffRow.period_label == period_label,
                )
            )
            if row is not None:
                raise UsageError(
                    f"the {period_label} report of {model_name} was already signed off by "
                    f"{row.signed_by} on {row.signed_at:%Y-%m-%d}; a signed record is not changed"
                )
            row = ReportSignoffRow(
                model_id=model_id,
                period_label=period_label,
                period_start=period_start,
                period_end=period_end,
                psur_reference=psur_reference,
                conclusions=conclusions.strip(),
                signed_by=signed_by,
                signed_at=now,
                report_sha256=report_sha256,
            )
            s.add(row)
            s.flush()
            audit_chain.append(
                s,
                actor=signed_by,
                action="report.signed_off",
                entity="model",
                entity_id=model_name,
                detail={
                    "period": period_label,
                    "psur_reference": psur_reference,
                    "report_sha256": report_sha256,
                },
            )
            return _signoff(row)

    def previous_signoff(self, model_id: int, before: datetime) -> Signoff | None:
        """The latest sign-off of a period that ended by ``before`` (the previous report)."""
        stmt = (
            select(ReportSignoffRow)
            .where(ReportSignoffRow.model_id == model_id, ReportSignoffRow.period_end <= before)
            .order_by(ReportSignoffRow.period_end.desc(), ReportSignoffRow.id.desc())
            .limit(1)
        )
        with self._sessions.scope() as s:
            row = s.scalar(stmt)
            return None if row is None else _signoff(row)


def _payload_time(payload: str | None) -> datetime | None:
    """The data timestamp a rejected record carries, if it can be read."""
    if not payload:
        return None
    try:
        record = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    for key in ("predicted_at", "confirmed_at"):
        value = record.get(key)
        if isinstance(value, str):
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                continue
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return None


def _fsca(row: FscaRow) -> Fsca:
    return Fsca(
        id=row.id,
        reference=row.reference,
        title=row.title,
        started_at=row.started_at,
        closed_at=row.closed_at,
        status=row.status,
        field_safety_notice=row.field_safety_notice,
        recorded_by=row.recorded_by,
    )


def _signoff(row: ReportSignoffRow) -> Signoff:
    return Signoff(
        period_label=row.period_label,
        period_start=row.period_start,
        period_end=row.period_end,
        psur_reference=row.psur_reference,
        conclusions=row.conclusions,
        signed_by=row.signed_by,
        signed_at=row.signed_at,
        report_sha256=row.report_sha256,
    )


_YES = {
    "yes": True,
    "y": True,
    "true": True,
    "1": True,
    "no": False,
    "n": False,
    "false": False,
    "0": False,
}


def _complaint(row: dict[str, str | None], file: str, line: int) -> Complaint:
    def field(name: str) -> str:
        return (row.get(name) or "").strip()

    where = f"{file} line {line}"
    reference = field("reference")
    if not reference or len(reference) > 128:
        raise UsageError(f"{where}: 'reference' must be 1-128 characters")
    try:
        moment = datetime.fromisoformat(field("received_at"))
    except ValueError as exc:
        raise UsageError(
            f"{where}: 'received_at' {field('received_at')!r} is not an ISO date such as 2026-08-14"
        ) from exc
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    serious = _YES.get(field("serious").lower())
    if serious is None:
        raise UsageError(f"{where}: 'serious' must be yes or no, got {field('serious')!r}")
    if not field("category") or not field("summary"):
        raise UsageError(f"{where}: 'category' and 'summary' must not be empty")
    return Complaint(
        reference=reference,
        received_at=moment,
        category=field("category")[:128],
        serious=serious,
        summary=field("summary"),
        outcome=field("outcome") or None,
    )


__all__ = [
    "AuditEntry",
    "Complaint",
    "CoverageRow",
    "Fsca",
    "IncidentRecord",
    "ReportingRepository",
    "Signoff",
    "StudyInPeriod",
    "VigilanceReport",
    "WeeklyCount",
    "label_coverage",
    "weekly_counts",
]
