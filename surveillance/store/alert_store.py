"""Store queries for operations: alert deliveries, the job-run ledger, retention.

Alert deliveries (table ``alert_delivery``) are unique per (incident, channel,
kind): the open page of an incident can exist once per channel, whatever the
number of check runs that add evidence to it, and so can its resolve message.
A sender *claims* a due delivery with a conditional UPDATE (it bumps
``attempts`` and pushes ``next_attempt_at`` one lease ahead) before it sends, so
two threads or replicas never send the same attempt; a sender that dies
mid-send leaves the claim to expire and the delivery is tried again (at least
once: a crash between sending and recording can repeat one message).

Statuses: ``pending`` (waiting for its next attempt), ``delivered``,
``failed`` (gave up after the last attempt; ``surveillance alerts retry``
re-arms it), ``cancelled`` (the incident closed before its open page went out).

The job-run ledger (table ``job_run``, unique per (job id, scheduled time)) is
what the scheduler trusts; see :mod:`surveillance.scheduler` for the states.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, update

from surveillance.errors import NotFoundError
from surveillance.store import audit
from surveillance.store.domain import DriftCheck, PerformanceCheck
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    AlertDeliveryRow,
    DeadLetterRow,
    DriftCheckRow,
    ImageSpoolRow,
    IncidentEventRow,
    IncidentRow,
    JobRunRow,
    ModelRow,
    PerformanceCheckRow,
)
from surveillance.store.repository import Store, _drift, _performance
from surveillance.store.types import utcnow

OPEN_STATUSES = ("open", "acknowledged", "investigating")


@dataclass(frozen=True, slots=True)
class AlertDelivery:
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
class JobRun:
    id: int
    job_id: str
    scheduled_for: datetime
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None


def _delivery(row: AlertDeliveryRow) -> AlertDelivery:
    return AlertDelivery(
        id=row.id,
        incident_id=row.incident_id,
        channel=row.channel,
        kind=row.kind,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
        payload=dict(row.payload),
    )


def _run(row: JobRunRow) -> JobRun:
    return JobRun(
        id=row.id,
        job_id=row.job_id,
        scheduled_for=row.scheduled_for,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=row.status,
        error=row.error,
    )


# ---- alert deliveries -----------------------------------------------------------


def enqueue_delivery(
    store: Store,
    *,
    incident_id: int,
    channel: str,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
) -> int | None:
    """Create the delivery; ``None`` when this (incident, channel, kind) already has one."""
    with store.sessions.scope() as s:
        stmt = (
            _insert(s, AlertDeliveryRow)
            .values(
                incident_id=incident_id,
                channel=channel,
                kind=kind,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                payload=payload,
            )
            .on_conflict_do_nothing()
            .returning(AlertDeliveryRow.id)
        )
        return s.execute(stmt).scalar_one_or_none()


def incidents_missing_delivery(
    store: Store, channels: Sequence[str], kind: str
) -> list[tuple[int, str]]:
    """(incident id, channel) pairs that need a delivery of ``kind`` and have none.

    ``open``: incidents not closed. ``resolve``: closed incidents whose open
    page was delivered on that channel.
    """
    if not channels:
        return []
    pairs: list[tuple[int, str]] = []
    with store.sessions.scope() as s:
        for channel in channels:
            same = (
                (AlertDeliveryRow.incident_id == IncidentRow.id)
                & (AlertDeliveryRow.channel == channel)
                & (AlertDeliveryRow.kind == kind)
            )
            stmt = select(IncidentRow.id).where(~exists().where(same))
            if kind == "open":
                stmt = stmt.where(IncidentRow.status.in_(OPEN_STATUSES))
            else:
                opened = (
                    (AlertDeliveryRow.incident_id == IncidentRow.id)
                    & (AlertDeliveryRow.channel == channel)
                    & (AlertDeliveryRow.kind == "open")
                    & (AlertDeliveryRow.status == "delivered")
                )
                stmt = stmt.where(IncidentRow.status == "closed", exists().where(opened))
            pairs.extend((i, channel) for i in s.scalars(stmt.order_by(IncidentRow.id)))
    return pairs


def cancel_undelivered_opens(store: Store, *, now: datetime) -> int:
    """Open pages of closed incidents that never went out: cancelled, not sent late."""
    with store.sessions.scope() as s:
        closed = select(IncidentRow.id).where(IncidentRow.status == "closed")
        result = s.execute(
            update(AlertDeliveryRow)
            .where(
                AlertDeliveryRow.kind == "open",
                AlertDeliveryRow.status.in_(("pending", "failed")),
                AlertDeliveryRow.incident_id.in_(closed),
            )
            .values(status="cancelled", next_attempt_at=None, last_error="incident closed first")
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0)


def claim_due_deliveries(
    store: Store, *, now: datetime, lease: timedelta, limit: int = 100
) -> list[AlertDelivery]:
    """Claim due pending deliveries (one attempt each); see the module docstring."""
    claimed: list[AlertDelivery] = []
    with store.sessions.scope() as s:
        due = s.execute(
            select(AlertDeliveryRow.id, AlertDeliveryRow.attempts)
            .where(AlertDeliveryRow.status == "pending", AlertDeliveryRow.next_attempt_at <= now)
            .order_by(AlertDeliveryRow.next_attempt_at, AlertDeliveryRow.id)
            .limit(limit)
        ).all()
    for delivery_id, attempts in due:
        with store.sessions.scope() as s:
            result = s.execute(
                update(AlertDeliveryRow)
                .where(
                    AlertDeliveryRow.id == delivery_id,
                    AlertDeliveryRow.status == "pending",
                    AlertDeliveryRow.attempts == attempts,
                )
                .values(attempts=attempts + 1, next_attempt_at=now + lease)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) == 1:
                row = s.get(AlertDeliveryRow, delivery_id)
                if row is not None:
                    s.refresh(row)
                    claimed.append(_delivery(row))
    return claimed


def record_attempt(
    store: Store,
    delivery_id: int,
    *,
    now: datetime,
    error: str | None,
    next_attempt_at: datetime | None,
    actor: str = "alerts",
) -> AlertDelivery:
    """Record an attempt: delivered (``error`` None), retry later, or given up
    (``next_attempt_at`` None). Deliveries and give-ups are audited."""
    with store.sessions.scope() as s:
        row = s.get(AlertDeliveryRow, delivery_id)
        if row is None:
            raise NotFoundError(f"alert delivery {delivery_id} does not exist")
        if error is None:
            row.status = "delivered"
            row.delivered_at = now
            row.next_attempt_at = None
            row.last_error = None
        else:
            row.last_error = error[:2000]
            row.next_attempt_at = next_attempt_at
            row.status = "pending" if next_attempt_at is not None else "failed"
        if row.status in ("delivered", "failed"):
            audit.append(
                s,
                actor=actor,
                action=f"alert.{row.status}",
                entity="incident",
                entity_id=row.incident_id,
                detail={
                    "channel": row.channel,
                    "kind": row.kind,
                    "attempts": row.attempts,
                    "error": row.last_error,
                },
            )
        s.flush()
        return _delivery(row)


def rearm_deliveries(
    store: Store, *, now: datetime, delivery_id: int | None = None, actor: str
) -> int:
    """Put failed deliveries (or one, any non-delivered status) back to pending now."""
    with store.sessions.scope() as s:
        stmt = update(AlertDeliveryRow).values(status="pending", next_attempt_at=now)
        if delivery_id is not None:
            row = s.get(AlertDeliveryRow, delivery_id)
            if row is None:
                raise NotFoundError(
                    f"alert delivery {delivery_id} does not exist; "
                    "list them with 'surveillance alerts list'"
                )
            stmt = stmt.where(
                AlertDeliveryRow.id == delivery_id, AlertDeliveryRow.status != "delivered"
            )
        else:
            stmt = stmt.where(AlertDeliveryRow.status == "failed")
        result = s.execute(stmt.execution_options(synchronize_session=False))
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            audit.append(
                s,
                actor=actor,
                action="alert.rearmed",
                entity="alert_delivery",
                entity_id=delivery_id if delivery_id is not None else "failed",
                detail={"count": count},
            )
        return count


def deliveries(
    store: Store,
    *,
    incident_id: int | None = None,
    status: str | None = None,
    limit: int = 200,
) -> list[AlertDelivery]:
    stmt = select(AlertDeliveryRow).order_by(AlertDeliveryRow.id.desc()).limit(limit)
    if incident_id is not None:
        stmt = stmt.where(AlertDeliveryRow.incident_id == incident_id)
    if status is not None:
        stmt = stmt.where(AlertDeliveryRow.status == status)
    with store.sessions.scope() as s:
        return [_delivery(r) for r in s.scalars(stmt)]


def incident_evidence(
    store: Store, incident_id: int
) -> tuple[list[PerformanceCheck], list[DriftCheck]]:
    """The checks linked to an incident's timeline (oldest window first)."""
    with store.sessions.scope() as s:
        model = s.scalar(
            select(ModelRow.name)
            .join(IncidentRow, IncidentRow.model_id == ModelRow.id)
            .where(IncidentRow.id == incident_id)
        )
        if model is None:
            raise NotFoundError(f"incident {incident_id} does not exist")
        mine = IncidentEventRow.incident_id == incident_id
        perf_ids = select(IncidentEventRow.performance_check_id).where(mine)
        drift_ids = select(IncidentEventRow.drift_check_id).where(mine)
        perf = s.scalars(
            select(PerformanceCheckRow)
            .where(PerformanceCheckRow.id.in_(perf_ids))
            .order_by(PerformanceCheckRow.window_end, PerformanceCheckRow.id)
        ).all()
        drift = s.scalars(
            select(DriftCheckRow)
            .where(DriftCheckRow.id.in_(drift_ids))
            .order_by(DriftCheckRow.window_end, DriftCheckRow.id)
        ).all()
        return [_performance(r, model) for r in perf], [_drift(r, model) for r in drift]


def incident_remedial_action(store: Store, incident_id: int) -> bool:
    with store.sessions.scope() as s:
        value = s.scalar(select(IncidentRow.remedial_action).where(IncidentRow.id == incident_id))
        if value is None:
            raise NotFoundError(f"incident {incident_id} does not exist")
        return bool(value)


# ---- job-run ledger -------------------------------------------------------------


def claim_job_run(store: Store, job_id: str, scheduled_for: datetime) -> int | None:
    """Start (job, time): insert it, or re-claim it when it was abandoned; else None."""
    with store.sessions.scope() as s:
        new_id = s.execute(
            _insert(s, JobRunRow)
            .values(
                job_id=job_id, scheduled_for=scheduled_for, started_at=utcnow(), status="running"
            )
            .on_conflict_do_nothing()
            .returning(JobRunRow.id)
        ).scalar_one_or_none()
        if new_id is not None:
            return int(new_id)
        row = s.scalar(
            select(JobRunRow).where(
                JobRunRow.job_id == job_id,
                JobRunRow.scheduled_for == scheduled_for,
                JobRunRow.status == "abandoned",
            )
        )
        if row is None:
            return None
        result = s.execute(
            update(JobRunRow)
            .where(JobRunRow.id == row.id, JobRunRow.status == "abandoned")
            .values(status="running", started_at=utcnow(), finished_at=None)
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            return None
        audit.append(
            s,
            actor="scheduler",
            action="job_run.rerun",
            entity="job_run",
            entity_id=row.id,
            detail={"job_id": job_id, "scheduled_for": scheduled_for.isoformat()},
        )
        return int(row.id)


def abandon_running(store: Store, job_ids: Sequence[str], *, note: str) -> list[JobRun]:
    """Mark runs of ``job_ids`` left ``running`` as ``abandoned`` (their holder died)."""
    if not job_ids:
        return []
    with store.sessions.scope() as s:
        rows = s.scalars(
            select(JobRunRow).where(JobRunRow.job_id.in_(job_ids), JobRunRow.status == "running")
        ).all()
        for row in rows:
            row.status = "abandoned"
            row.error = note
            audit.append(
                s,
                actor="scheduler",
                action="job_run.abandoned",
                entity="job_run",
                entity_id=row.id,
                detail={"job_id": row.job_id, "scheduled_for": row.scheduled_for.isoformat()},
            )
        s.flush()
        return [_run(r) for r in rows]


def abandoned_runs(store: Store, job_id: str) -> list[datetime]:
    with store.sessions.scope() as s:
        return list(
            s.scalars(
                select(JobRunRow.scheduled_for)
                .where(JobRunRow.job_id == job_id, JobRunRow.status == "abandoned")
                .order_by(JobRunRow.scheduled_for)
            )
        )


def last_scheduled(store: Store, job_id: str) -> datetime | None:
    with store.sessions.scope() as s:
        value: datetime | None = s.scalar(
            select(func.max(JobRunRow.scheduled_for)).where(JobRunRow.job_id == job_id)
        )
        return value


def job_runs(store: Store, *, job_id: str | None = None, limit: int = 50) -> list[JobRun]:
    stmt = select(JobRunRow).order_by(JobRunRow.scheduled_for.desc(), JobRunRow.id.desc())
    if job_id is not None:
        stmt = stmt.where(JobRunRow.job_id == job_id)
    with store.sessions.scope() as s:
        return [_run(r) for r in s.scalars(stmt.limit(limit))]


# ---- retention --------------------------------------------------------------------


def purge_dead_letters(store: Store, *, before: datetime, actor: str) -> int:
    with store.sessions.scope() as s:
        result = s.execute(
            delete(DeadLetterRow)
            .where(DeadLetterRow.received_at < before)
            .execution_options(synchronize_session=False)
        )
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            audit.append(
                s,
                actor=actor,
                action="retention.dead_letters",
                entity="dead_letter",
                entity_id="*",
                detail={"deleted": count, "before": before.isoformat()},
            )
        return count


def purge_job_runs(store: Store, *, before: datetime, actor: str) -> int:
    """Finished runs older than ``before`` that no stored check refers to."""
    with store.sessions.scope() as s:
        referenced = or_(
            exists().where(DriftCheckRow.job_run_id == JobRunRow.id),
            exists().where(PerformanceCheckRow.job_run_id == JobRunRow.id),
        )
        ids = list(
            s.scalars(
                select(JobRunRow.id).where(
                    JobRunRow.scheduled_for < before,
                    JobRunRow.status.in_(("succeeded", "failed")),
                    ~referenced,
                )
            )
        )
        for start in range(0, len(ids), 500):
            s.execute(
                delete(JobRunRow)
                .where(JobRunRow.id.in_(ids[start : start + 500]))
                .execution_options(synchronize_session=False)
            )
        if ids:
            audit.append(
                s,
                actor=actor,
                action="retention.job_runs",
                entity="job_run",
                entity_id="*",
                detail={"deleted": len(ids), "before": before.isoformat()},
            )
        return len(ids)


def failed_spool_files(store: Store, *, before: datetime) -> list[str]:
    """Spool file names of instances that could not be embedded, received before ``before``."""
    with store.sessions.scope() as s:
        return list(
            s.scalars(
                select(ImageSpoolRow.file_name).where(
                    ImageSpoolRow.error.is_not(None), ImageSpoolRow.received_at < before
                )
            )
        )


__all__ = [
    "AlertDelivery",
    "JobRun",
    "abandon_running",
    "abandoned_runs",
    "cancel_undelivered_opens",
    "claim_due_deliveries",
    "claim_job_run",
    "deliveries",
    "enqueue_delivery",
    "failed_spool_files",
    "incident_evidence",
    "incident_remedial_action",
    "incidents_missing_delivery",
    "job_runs",
    "last_scheduled",
    "purge_dead_letters",
    "purge_job_runs",
    "rearm_deliveries",
    "record_attempt",
]
