"""Check work units: drift windows queued by a run and claimed by any replica.

A drift run (``surveillance check`` or the scheduler's drift job) queues one
unit per window it has to judge, then claims units until none of its own is
left; every other replica's check worker claims pending units too, so the
windows of a large history are judged in parallel. A claim is ``SELECT ... FOR
UPDATE SKIP LOCKED`` on PostgreSQL (two claimers never wait for, nor take, the
same unit) followed by a guarded UPDATE (``WHERE status = <what was read>``),
which is also what keeps two SQLite processes apart. A unit ``running`` for
longer than :data:`LEASE` belongs to a replica that died (kill -9) and is
taken over by the next claim.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, case, or_, select, update

from surveillance.core.statuses import CheckUnitStatus
from surveillance.store.base import Repository
from surveillance.store.ingest_writer import _insert
from surveillance.store.models import CheckUnitRow
from surveillance.store.types import utcnow

#: A unit claimed longer ago than this and still running is taken over.
LEASE = timedelta(minutes=15)


def worker_name() -> str:
    """``host:pid`` of this process, recorded on the units it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"[:128]


@dataclass(frozen=True, slots=True)
class CheckUnit:
    id: int
    model_id: int
    job: str
    window_start: datetime
    window_end: datetime
    reference_set_id: int
    plan_id: str
    job_run_id: int | None
    status: str
    attempts: int
    claimed_by: str | None
    error: str | None


def _unit(row: CheckUnitRow) -> CheckUnit:
    return CheckUnit(
        id=row.id,
        model_id=row.model_id,
        job=row.job,
        window_start=row.window_start,
        window_end=row.window_end,
        reference_set_id=row.reference_set_id,
        plan_id=row.plan_id,
        job_run_id=row.job_run_id,
        status=row.status,
        attempts=row.attempts,
        claimed_by=row.claimed_by,
        error=row.error,
    )


class UnitsRepository(Repository):
    """Queue, claim and finish check work units (module docstring)."""

    def queue(
        self,
        model_id: int,
        job: str,
        windows: Sequence[tuple[datetime, datetime]],
        *,
        reference_set_id: int,
        plan_id: str,
        job_run_id: int | None,
    ) -> int:
        """Queue ``windows`` under ``plan_id``; returns how many were queued.

        A window queued before (done, failed or still pending) is queued again
        under this plan; one running elsewhere keeps running and now counts
        for this plan, which waits for it.
        """
        if not windows:
            return 0
        now = utcnow()
        rows = [
            {
                "model_id": model_id,
                "job": job,
                "window_start": start,
                "window_end": end,
                "reference_set_id": reference_set_id,
                "plan_id": plan_id,
                "job_run_id": job_run_id,
                "status": CheckUnitStatus.PENDING.value,
                "queued_at": now,
                "attempts": 0,
            }
            for start, end in windows
        ]
        with self._sessions.scope() as s:
            stmt = _insert(s, CheckUnitRow).values(rows)
            running = CheckUnitRow.status == CheckUnitStatus.RUNNING.value
            s.execute(
                stmt.on_conflict_do_update(
                    index_elements=("model_id", "job", "window_start", "window_end"),
                    set_={
                        "reference_set_id": stmt.excluded.reference_set_id,
                        "plan_id": stmt.excluded.plan_id,
                        "job_run_id": stmt.excluded.job_run_id,
                        "queued_at": stmt.excluded.queued_at,
                        "error": None,
                        "status": case(
                            (running, CheckUnitStatus.RUNNING.value),
                            else_=CheckUnitStatus.PENDING.value,
                        ),
                    },
                )
            )
        return len(rows)

    def claim(
        self,
        job: str,
        *,
        plan_id: str | None = None,
        worker: str | None = None,
        now: datetime | None = None,
    ) -> CheckUnit | None:
        """Claim the oldest pending (or abandoned) unit of ``job``, of ``plan_id`` if given."""
        now = now or utcnow()
        claimable = or_(
            CheckUnitRow.status == CheckUnitStatus.PENDING.value,
            and_(
                CheckUnitRow.status == CheckUnitStatus.RUNNING.value,
                CheckUnitRow.claimed_at < now - LEASE,
            ),
        )
        conditions = [CheckUnitRow.job == job, claimable]
        if plan_id is not None:
            conditions.append(CheckUnitRow.plan_id == plan_id)
        for _ in range(8):  # lost races on SQLite only (PostgreSQL skips locked rows)
            with self._sessions.scope() as s:
                row = s.execute(
                    select(CheckUnitRow.id, CheckUnitRow.status)
                    .where(*conditions)
                    .order_by(CheckUnitRow.queued_at, CheckUnitRow.window_start, CheckUnitRow.id)
                    .limit(1)
                    .with_for_update(skip_locked=True)
                ).first()
                if row is None:
                    return None
                unit_id, seen = row
                taken = s.execute(  # guarded: another claimer may have won the row
                    update(CheckUnitRow)
                    .where(CheckUnitRow.id == unit_id, CheckUnitRow.status == seen)
                    .values(
                        status=CheckUnitStatus.RUNNING.value,
                        claimed_at=now,
                        claimed_by=worker or worker_name(),
                        attempts=CheckUnitRow.attempts + 1,
                    )
                )
                if cast(CursorResult[Any], taken).rowcount == 1:
                    got = s.get(CheckUnitRow, unit_id)
                    assert got is not None
                    return _unit(got)
        return None

    def finish(self, unit_id: int, *, error: str | None = None) -> None:
        """Mark a claimed unit done, or failed with ``error``."""
        status = CheckUnitStatus.FAILED if error else CheckUnitStatus.DONE
        with self._sessions.scope() as s:
            s.execute(
                update(CheckUnitRow)
                .where(CheckUnitRow.id == unit_id)
                .values(status=status.value, finished_at=utcnow(), error=error)
            )

    def plan_status(self, plan_id: str) -> Counter[str]:
        """How many units of ``plan_id`` are in each status."""
        with self._sessions.scope() as s:
            statuses = s.scalars(select(CheckUnitRow.status).where(CheckUnitRow.plan_id == plan_id))
            return Counter(statuses)

    def units(self, *, model_id: int | None = None, plan_id: str | None = None) -> list[CheckUnit]:
        """Units, oldest window first (for ``surveillance check`` output and tests)."""
        stmt = select(CheckUnitRow).order_by(CheckUnitRow.window_start, CheckUnitRow.id)
        if model_id is not None:
            stmt = stmt.where(CheckUnitRow.model_id == model_id)
        if plan_id is not None:
            stmt = stmt.where(CheckUnitRow.plan_id == plan_id)
        with self._sessions.scope() as s:
            return [_unit(r) for r in s.scalars(stmt)]


__all__ = ["LEASE", "CheckUnit", "UnitsRepository", "worker_name"]
