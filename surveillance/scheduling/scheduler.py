"""The scheduler: exactly one across replicas, and a ledger that never skips or doubles.

Leader election
    Every daemon replica runs a :class:`SchedulerService`. On PostgreSQL it holds
    a dedicated connection and calls ``pg_try_advisory_lock(LOCK_KEY)``; the one
    that gets the lock leads and starts APScheduler, the others are standbys and
    retry every ``standby_retry_s`` seconds. The lock belongs to the leader's
    database session, so when the leader dies (even ``kill -9``) its connection
    closes, PostgreSQL releases the lock and a standby takes over at its next
    try. The leader checks its lock connection every ``heartbeat_s`` seconds and
    steps down at once if it is gone. The lock connection sets
    ``application_name`` to ``surveillance-scheduler <host>:<pid>`` so
    ``surveillance scheduler status`` can say who leads. On SQLite (the demo)
    there is no lock: run one daemon per database file.

APScheduler
    A ``BackgroundScheduler`` (UTC) with a ``SQLAlchemyJobStore`` on the store's
    engine: the ``apscheduler_jobs`` table comes from Alembic migration 0002 and
    the job store only creates it when missing (``Table.create(checkfirst=True)``),
    so nothing is created here. Jobs are added with explicit ids and
    ``replace_existing=True`` (a config change takes effect at the next
    leadership), and jobs no longer configured are removed. Every job calls the
    importable :func:`fire` with its id; the job functions themselves are plain
    callables of :class:`JobSpec`, never pickled. Deliberate settings:

    * ``coalesce=True`` - after a stall APScheduler fires a job once, not once per
      missed time; the ledger below decides which scheduled times are still owed.
    * ``max_instances=1`` - a slow run never overlaps the next run of the same job.
    * ``misfire_grace_time=None`` - a late fire still runs (the default of one
      second would silently drop fires delayed by a busy thread pool); lateness
      is harmless because the ledger keys runs by their scheduled time.

The ledger (table ``job_run``, unique per job id and scheduled time)
    A scheduled time is run only after :func:`claim_job_run` inserted its row,
    so no (job, time) runs twice, across restarts and replicas. Interval
    schedules sit on a fixed UTC grid (:mod:`surveillance.scheduling.schedules`), so every
    leader computes the same times. On each fire the leader runs, oldest first:

    * runs **abandoned** by a dead leader: a row still ``running`` when a new
      leader takes the lock can only belong to a holder that died mid-run (only
      the lock holder runs jobs), so it is marked ``abandoned`` and re-run under
      the same row (audited as ``job_run.abandoned`` / ``job_run.rerun``);
    * scheduled times since the last ledger entry: with ``catch_up="latest"``
      only the newest (jobs whose work is cumulative: checks, alerts, retention,
      embeddings - one run covers everything that is due), with ``"each"`` every
      missed one up to ``max_catch_up`` (the quarterly report: each quarter is
      its own report). A job that never ran starts at the first scheduled time
      after its first leader started.

    A run that raises is recorded ``failed`` with its error and is not retried
    (the next scheduled time runs as usual). A leader that loses its lock stops
    starting runs; one already running finishes, and may be re-run by the new
    leader, which found it ``running``: checks and retention are idempotent,
    and an alert that was already delivered is never sent twice (its delivery
    row is unique).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from surveillance.scheduling.schedules import parse_schedule, recent_fire_times
from surveillance.store import Store
from surveillance.store.types import utcnow

LOG = logging.getLogger(__name__)

#: The advisory lock key: the first 8 bytes of SHA-256("surveillance.scheduler"), signed.
#: A stable identity shared by every version of the daemon, NOT this module's path: a
#: different key during a rolling upgrade would let an old and a new replica both lead.
LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"surveillance.scheduler").digest()[:8], "big", signed=True
)
APPLICATION_NAME = "surveillance-scheduler"
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

JobFunction = Callable[[Any, datetime, int], object]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A scheduled job: ``func(context, scheduled_for, run_id)`` on ``schedule``."""

    id: str
    schedule: str
    func: JobFunction
    catch_up: Literal["latest", "each"] = "latest"
    max_catch_up: int = 16

    def trigger(self) -> BaseTrigger:
        return parse_schedule(self.schedule)


_ACTIVE: SchedulerService | None = None
_ACTIVE_LOCK = threading.Lock()


def fire(job_id: str) -> None:
    """APScheduler's entry point (importable, pickled by reference) for every job."""
    service = _ACTIVE
    if service is None or not service.is_leader:
        LOG.warning("job %s fired but this process does not lead; ignored", job_id)
        return
    service.run_due(job_id)


class LeaderLock:
    """``pg_try_advisory_lock`` on a dedicated connection; always granted on SQLite."""

    def __init__(self, store: Store, key: int = LOCK_KEY) -> None:
        self.store = store
        self.key = key
        self._conn: Connection | None = None
        self.held = False
        self.needs_lock = store.engine.dialect.name == "postgresql"

    def try_acquire(self) -> bool:
        if not self.needs_lock:
            self.held = True
            return True
        try:
            if self._conn is None:
                conn = self.store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                name = f"{APPLICATION_NAME} {socket.gethostname()}:{os.getpid()}"[:63]
                conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": name})
                self._conn = conn
            got = self._conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}
            ).scalar()
        except SQLAlchemyError as exc:
            LOG.warning("scheduler lock: database unavailable (%s); will retry", exc)
            self._drop()
            return False
        self.held = bool(got)
        return self.held

    def alive(self) -> bool:
        """The lock connection still answers (so the session, and its lock, live)."""
        if not self.needs_lock:
            return True
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            LOG.error("scheduler lock connection lost (%s): stepping down", exc)
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self._conn is not None and self.held:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            except SQLAlchemyError as exc:
                LOG.warning("scheduler lock: unlock failed (%s); closing the session", exc)
        self.held = False
        self._drop()

    def _drop(self) -> None:
        self.held = False
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except SQLAlchemyError:
                pass
            self._conn = None


class SchedulerService:
    """Leader election + APScheduler + the run ledger; ``start()``/``stop()``."""

    def __init__(
        self,
        store: Store,
        jobs: Sequence[JobSpec],
        context: Any,
        *,
        standby_retry_s: float = 5.0,
        heartbeat_s: float = 5.0,
        workers: int = 4,
        lock_key: int = LOCK_KEY,
        stop_timeout_s: float = 30.0,
    ) -> None:
        ids = [j.id for j in jobs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"job ids must be unique, got {ids}")
        self.store = store
        self.jobs = {j.id: j for j in jobs}
        self.triggers = {j.id: j.trigger() for j in jobs}  # validates every schedule now
        self.context = context
        self.standby_retry_s = standby_retry_s
        self.heartbeat_s = heartbeat_s
        self.workers = workers
        self.stop_timeout_s = stop_timeout_s
        self.lock = LeaderLock(store, lock_key)
        self.leader_since: datetime | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = 0
        self._running_cv = threading.Condition()

    name = "scheduler"

    @property
    def is_leader(self) -> bool:
        return self.leader_since is not None and not self._stop.is_set()

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="scheduler-leader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout_s + 5.0)
            self._thread = None

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                if self.leader_since is None:
                    if self.lock.try_acquire() and not self._stop.is_set():
                        try:
                            self._become_leader()
                        except Exception:  # stay up as a standby and retry
                            LOG.exception("scheduler: could not start leading; retrying")
                            self._step_down()
                            self.lock.release()
                            self._stop.wait(self.standby_retry_s)
                    else:
                        self._stop.wait(self.standby_retry_s)
                elif not self.lock.alive():
                    self._step_down()
                else:
                    self._stop.wait(self.heartbeat_s)
        finally:
            if self.leader_since is not None:
                self._step_down()
            self.lock.release()

    def _become_leader(self) -> None:
        global _ACTIVE
        now = utcnow()
        with _ACTIVE_LOCK:
            if _ACTIVE is not None and _ACTIVE is not self:
                raise RuntimeError("another SchedulerService leads in this process")
            _ACTIVE = self
        self.leader_since = now
        abandoned = self.store.ledger.abandon_running(
            list(self.jobs),
            note=f"the scheduler holder died mid-run; re-run by the leader from {now:%H:%M:%S}",
        )
        LOG.info("scheduler: leading since %s; %d abandoned run(s) to re-run", now, len(abandoned))
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.store.engine)},
            executors={"default": ThreadPoolExecutor(self.workers)},
            job_defaults=dict(JOB_DEFAULTS),
            timezone=UTC,
        )
        scheduler.start(paused=True)
        for job in scheduler.get_jobs():
            if job.id not in self.jobs:
                LOG.info("scheduler: removing job %s (no longer configured)", job.id)
                scheduler.remove_job(job.id)
        for spec in self.jobs.values():
            scheduler.add_job(
                "surveillance.scheduling.scheduler:fire",
                trigger=self.triggers[spec.id],
                args=[spec.id],
                id=spec.id,
                name=f"{spec.id} ({spec.schedule})",
                replace_existing=True,
                next_run_time=now,  # fire once now: re-run abandoned runs, catch up
                **JOB_DEFAULTS,
            )
        scheduler.resume()
        self._scheduler = scheduler

    def _step_down(self) -> None:
        global _ACTIVE
        scheduler, self._scheduler = self._scheduler, None
        self.leader_since = None
        if scheduler is not None:
            try:
                scheduler.shutdown(wait=False)
            except Exception:  # stepping down must not fail
                LOG.exception("scheduler: shutdown failed")
        with self._running_cv:
            self._running_cv.wait_for(lambda: self._running == 0, timeout=self.stop_timeout_s)
        with _ACTIVE_LOCK:
            if _ACTIVE is self:
                _ACTIVE = None
        LOG.info("scheduler: no longer leading")

    # ---- the ledger ------------------------------------------------------------------

    def due_times(self, job_id: str, now: datetime) -> list[datetime]:
        """Scheduled times owed by ``job_id`` at ``now``, oldest first (see module doc)."""
        spec = self.jobs[job_id]
        owed = self.store.ledger.abandoned(job_id)
        last = self.store.ledger.last_scheduled(job_id)
        after = last if last is not None else (self.leader_since or now)
        keep = 1 if spec.catch_up == "latest" else spec.max_catch_up
        recent, total = recent_fire_times(self.triggers[job_id], after, now, keep)
        if total > len(recent):
            how = "coalesced into the newest" if spec.catch_up == "latest" else "skipped"
            LOG.log(
                logging.INFO if spec.catch_up == "latest" else logging.WARNING,
                "job %s: %d missed scheduled time(s) %s",
                job_id,
                total - len(recent),
                how,
            )
        return sorted(set(owed) | set(recent))

    def run_due(self, job_id: str, now: datetime | None = None) -> list[datetime]:
        """Run every owed scheduled time of ``job_id``; returns the times run."""
        done = []
        for scheduled_for in self.due_times(job_id, now or utcnow()):
            if not self.is_leader:
                break
            if self.run_one(job_id, scheduled_for):
                done.append(scheduled_for)
        return done

    def run_one(self, job_id: str, scheduled_for: datetime) -> bool:
        """Claim (job, time) in the ledger and run it; False if it already ran."""
        run_id = self.store.ledger.claim(job_id, scheduled_for)
        if run_id is None:
            return False
        with self._running_cv:
            self._running += 1
        try:
            return execute(self.store, self.jobs[job_id], self.context, scheduled_for, run_id)
        finally:
            with self._running_cv:
                self._running -= 1
                self._running_cv.notify_all()


def execute(
    store: Store, spec: JobSpec, context: Any, scheduled_for: datetime, run_id: int
) -> bool:
    """Run a claimed ledger row and record how it ended (never raises)."""
    LOG.info("job %s for %s: started (run %d)", spec.id, scheduled_for, run_id)
    try:
        spec.func(context, scheduled_for, run_id)
    except Exception as exc:  # recorded in the ledger, the scheduler goes on
        LOG.exception("job %s for %s failed", spec.id, scheduled_for)
        store.ledger.finish(run_id, error=f"{type(exc).__name__}: {exc}"[:4000])
        return True
    store.ledger.finish(run_id)
    LOG.info("job %s for %s: finished", spec.id, scheduled_for)
    return True


def run_once(store: Store, jobs: Sequence[JobSpec], context: Any, *, now: datetime) -> list[str]:
    """Run ``jobs`` once for ``now`` (``surveillance run --once``); returns the job ids run."""
    ran = []
    moment = now.astimezone(UTC).replace(microsecond=0)
    for spec in jobs:
        run_id = store.ledger.claim(spec.id, moment)
        if run_id is None:
            continue
        execute(store, spec, context, moment, run_id)
        ran.append(spec.id)
    return ran


def leader_info(store: Store, key: int = LOCK_KEY) -> dict[str, Any]:
    """Who holds the scheduler lock and how many standbys wait (PostgreSQL only)."""
    if store.engine.dialect.name != "postgresql":
        return {"backend": store.engine.dialect.name, "leader": None, "standbys": None}
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with store.engine.connect() as conn:
        holder = conn.execute(
            text(
                "SELECT a.application_name, a.client_addr::text, a.backend_start "
                "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi "
                "AND l.objid = :lo AND l.objsubid = 1"
            ),
            {"hi": high, "lo": low},
        ).first()
        sessions = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE :n "
                "AND datname = current_database()"
            ),
            {"n": f"{APPLICATION_NAME}%"},
        ).scalar_one()
    leader = None
    if holder is not None:
        leader = {
            "name": holder[0],
            "client": holder[1],
            "session_started": holder[2].isoformat() if holder[2] else None,
        }
    return {
        "backend": "postgresql",
        "leader": leader,
        "standbys": max(int(sessions) - (1 if leader else 0), 0),
    }


def scheduled_next_runs(store: Store) -> dict[str, datetime | None]:
    """Next run time per job id, as stored in APScheduler's job table."""
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, next_run_time FROM apscheduler_jobs")).all()
    return {
        str(job_id): (datetime.fromtimestamp(ts, UTC) if ts is not None else None)
        for job_id, ts in rows
    }


__all__ = [
    "JOB_DEFAULTS",
    "LOCK_KEY",
    "JobSpec",
    "LeaderLock",
    "SchedulerService",
    "execute",
    "fire",
    "leader_info",
    "run_once",
    "scheduled_next_runs",
]
