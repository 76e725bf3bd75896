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
* dead letters, job runs, audit events: their own timestamp is in the period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import median
from typing import Any

from sqlalchemy import and_, func, or_, select

from surveillance.store.base import Repository
from surveillance.store.convert import incident
from surveillance.store.domain import (
    NO_METADATA,
    Incident,
    JobRun,
)
from surveillance.store.engine import SessionFactory
from surveillance.store.models import (
    AuditEventRow,
    DeadLetterRow,
    DeviceRow,
    DiagnosisRow,
    IncidentEventRow,
    IncidentRow,
    JobRunRow,
    ModelRow,
    PredictionRow,
    SiteRow,
    StudyRow,
)


@dataclass(frozen=True, slots=True)
class StudyInPeriod:
    """One study the model scored in the period, with its first confirmation if any."""

    study_id: int
    predicted_at: datetime
    site: str
    scanner: str
    confirmed_at: datetime | None


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
            )
            for study_id, predicted_at, site, scanner, confirmed in rows
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
                result.append(
                    IncidentRecord(
                        incident=incident(row, name, events),
                        reported_at=row.reported_at,
                        remedial_action=row.remedial_action,
                    )
                )
            return result

    def dead_letter_count(self, start: datetime, end: datetime) -> dict[str, int]:
        """Dead letters received in the period, by record kind (``unparseable`` if unknown)."""
        with self._sessions.scope() as s:
            rows = s.execute(
                select(DeadLetterRow.kind, func.count())
                .where(DeadLetterRow.received_at >= start, DeadLetterRow.received_at < end)
                .group_by(DeadLetterRow.kind)
            ).all()
        return {kind or "unparseable": int(n) for kind, n in rows}

    def job_runs_in_period(self, model_name: str, start: datetime, end: datetime) -> list[JobRun]:
        """Runs of this model's jobs (``drift:NAME``, ``performance:NAME``, ...) in the period."""
        stmt = (
            select(JobRunRow)
            .where(
                JobRunRow.job_id.like(f"%:{model_name}"),
                JobRunRow.scheduled_for >= start,
                JobRunRow.scheduled_for < end,
            )
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

    def audit_entries(self, start: datetime, end: datetime) -> list[AuditEntry]:
        stmt = (
            select(AuditEventRow)
            .where(AuditEventRow.at >= start, AuditEventRow.at < end)
            .order_by(AuditEventRow.seq)
        )
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
