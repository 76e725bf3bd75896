"""The job-run ledger: one row per (job id, scheduled time), what the scheduler trusts.

A run is *claimed* by inserting its row (``ON CONFLICT DO NOTHING``) or by taking
over an ``abandoned`` one; whoever gets the row runs the job, so two replicas
never run the same (job, time). Statuses: ``running``, ``succeeded``, ``failed``,
``abandoned`` (its holder died; the next leader re-runs it). See
:mod:`surveillance.scheduling.scheduler` for how the scheduler uses it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, exists, func, or_, select, update

from surveillance.core.errors import NotFoundError
from surveillance.core.statuses import JobRunStatus
from surveillance.store import audit
from surveillance.store.base import Repository
from surveillance.store.domain import (
    JobRun,
)
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import (
    DriftCheckRow,
    JobRunRow,
    PerformanceCheckRow,
)
from surveillance.store.types import utcnow


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


class LedgerRepository(Repository):
    """Job runs: claim, finish, abandon, list, purge."""

    def claim(self, job_id: str, scheduled_for: datetime) -> int | None:
        """Start (job, time): insert it, or re-claim it when it was abandoned; else None."""
        with self._sessions.scope() as s:
            new_id = s.execute(
                _insert(s, JobRunRow)
                .values(
                    job_id=job_id,
                    scheduled_for=scheduled_for,
                    started_at=utcnow(),
                    status=JobRunStatus.RUNNING,
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
                    JobRunRow.status == JobRunStatus.ABANDONED,
                )
            )
            if row is None:
                return None
            result = s.execute(
                update(JobRunRow)
                .where(JobRunRow.id == row.id, JobRunRow.status == JobRunStatus.ABANDONED)
                .values(status=JobRunStatus.RUNNING, started_at=utcnow(), finished_at=None)
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

    def finish(self, run_id: int, *, error: str | None = None) -> None:
        with self._sessions.scope() as s:
            row = s.get(JobRunRow, run_id)
            if row is None:
                raise NotFoundError(f"job run {run_id} does not exist")
            row.finished_at = utcnow()
            row.status = JobRunStatus.FAILED if error else JobRunStatus.SUCCEEDED
            row.error = error

    def abandon_running(self, job_ids: Sequence[str], *, note: str) -> list[JobRun]:
        """Mark runs of ``job_ids`` left ``running`` as ``abandoned`` (their holder died)."""
        if not job_ids:
            return []
        with self._sessions.scope() as s:
            rows = s.scalars(
                select(JobRunRow).where(
                    JobRunRow.job_id.in_(job_ids), JobRunRow.status == JobRunStatus.RUNNING
                )
            ).all()
            for row in rows:
                row.status = JobRunStatus.ABANDONED
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

    def abandoned(self, job_id: str) -> list[datetime]:
        with self._sessions.scope() as s:
            return list(
                s.scalars(
                    select(JobRunRow.scheduled_for)
                    .where(JobRunRow.job_id == job_id, JobRunRow.status == JobRunStatus.ABANDONED)
                    .order_by(JobRunRow.scheduled_for)
                )
            )

    def last_scheduled(self, job_id: str) -> datetime | None:
        with self._sessions.scope() as s:
            value: datetime | None = s.scalar(
                select(func.max(JobRunRow.scheduled_for)).where(JobRunRow.job_id == job_id)
            )
            return value

    def runs(self, *, job_id: str | None = None, limit: int = 50) -> list[JobRun]:
        stmt = select(JobRunRow).order_by(JobRunRow.scheduled_for.desc(), JobRunRow.id.desc())
        if job_id is not None:
            stmt = stmt.where(JobRunRow.job_id == job_id)
        with self._sessions.scope() as s:
            return [_run(r) for r in s.scalars(stmt.limit(limit))]

    def purge(self, *, before: datetime, actor: str) -> int:
        """Finished runs older than ``before`` that no stored check refers to."""
        with self._sessions.scope() as s:
            referenced = or_(
                exists().where(DriftCheckRow.job_run_id == JobRunRow.id),
                exists().where(PerformanceCheckRow.job_run_id == JobRunRow.id),
            )
            ids = list(
                s.scalars(
                    select(JobRunRow.id).where(
                        JobRunRow.scheduled_for < before,
                        JobRunRow.status.in_((JobRunStatus.SUCCEEDED, JobRunStatus.FAILED)),
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
