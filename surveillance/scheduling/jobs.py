"""The daemon's scheduled jobs, one function each, and their schedules.

Every job is ``job(context, scheduled_for, run_id)``: the scheduler
(:mod:`surveillance.scheduling.scheduler`) has already recorded the run in the ledger by
(job id, scheduled time) before calling it, and records how it ended.

============  ==================  =========================================================
job id        schedule (config)   what it does
============  ==================  =========================================================
drift         schedules.drift     drift checks of every model as of the scheduled time,
                                  incident policy, then alerts
performance   schedules.          performance checks (and label-free estimates) as of the
              performance         scheduled time, incident policy, then alerts
embeddings    schedules.          ``surveillance.analysis.embed.run_embedding_job(store,
              embeddings          settings, as_of=...)`` (only scheduled when it exists)
alert_retries schedules.          queue missing pages and resolve messages, retry failed
              alert_retries       deliveries, refresh Alertmanager
retention     schedules.retention delete old dead letters, finished job runs no check
                                  refers to, spool files that could not be embedded and
                                  orphaned spool files ([retention] days). Never
                                  checks, incidents or the audit log. PostgreSQL:
                                  create the monthly prediction/embedding
                                  partitions ahead, and drop whole partitions
                                  older than [retention] prediction_months /
                                  embedding_months (default: never).
quarterly_    schedules.          ``surveillance.outputs.reports.pms.write_quarterly`` for the
report        quarterly_report    quarter that just ended, every model, under
                                  ``[reports] out_dir`` (default ``reports/``); each
                                  missed quarter is caught up (``catch_up="each"``)
============  ==================  =========================================================

Drift and performance run the same functions as ``surveillance check``
(``run_drift``/``run_performance`` and ``apply_policy``) but each on its own
schedule, with this job's ledger row as the checks' ``job_run_id``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from surveillance.core.config import Settings
from surveillance.core.errors import ConfigError
from surveillance.incidents.alerts.delivery import process_alerts
from surveillance.scheduling.checks import release_memory
from surveillance.scheduling.scheduler import JobSpec
from surveillance.store import Store
from surveillance.store.partitions import MONTHS_AHEAD, add_months
from surveillance.store.types import utcnow

LOG = logging.getLogger(__name__)
ACTOR = "scheduler"


@dataclass(frozen=True, slots=True)
class JobContext:
    """What every scheduled job gets: the settings and the store."""

    settings: Settings
    store: Store


def _alerts(ctx: JobContext) -> None:
    report = process_alerts(ctx.store, ctx.settings)
    if report.queued or report.delivered or report.retrying or report.failed:
        LOG.info("alerts: %s", report)


def drift_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    from surveillance.analysis.drift import DriftTally, run_drift
    from surveillance.incidents.policy import apply_policy

    for model in ctx.store.registry.models():
        tally = DriftTally()  # every check counted; only those not ok held
        settings = ctx.settings.drift
        flagged = run_drift(
            ctx.store, model, settings, as_of=scheduled_for, job_run_id=run_id, tally=tally
        )
        outcome = apply_policy(ctx.store, model, flagged, [], settings, now=utcnow())
        LOG.info(
            "drift %s as of %s: %d checks, %d drifted, incidents opened %s",
            model.name,
            scheduled_for,
            tally.checks,
            tally.by_status["drift"],
            [i.id for i in outcome.opened] or "none",
        )
    release_memory()  # the checks' peak, back to the system before the next job
    _alerts(ctx)


def performance_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    from surveillance.analysis.performance import run_performance
    from surveillance.incidents.policy import apply_policy

    for model in ctx.store.registry.models():
        checks = run_performance(
            ctx.store, model, ctx.settings.performance, as_of=scheduled_for, job_run_id=run_id
        )
        labelled = [c for c in checks if not c.estimated]
        outcome = apply_policy(ctx.store, model, [], labelled, ctx.settings.drift, now=utcnow())
        LOG.info(
            "performance %s as of %s: %d checks, %d breaches, incidents opened %s",
            model.name,
            scheduled_for,
            len(labelled),
            sum(c.status == "breach" for c in labelled),
            [i.id for i in outcome.opened] or "none",
        )
    release_memory()
    _alerts(ctx)


def alert_retries_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    report = process_alerts(ctx.store, ctx.settings, refresh=True)
    LOG.debug("alert retries at %s: %s", scheduled_for, report)


def retention_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    days = ctx.settings.retention
    store = ctx.store
    letters = store.events.purge_dead_letters(
        before=scheduled_for - timedelta(days=days.dead_letter_days), actor=ACTOR
    )
    runs = store.ledger.purge(before=scheduled_for - timedelta(days=days.job_run_days), actor=ACTOR)
    spool_dir = Path(ctx.settings.dicom.spool_dir)
    removed = 0
    for name in store.events.failed_spool_files(
        before=scheduled_for - timedelta(days=days.failed_spool_days)
    ):
        path = spool_dir / name
        if path.name == name and path.exists():  # names are generated; never a path
            path.unlink()
            removed += 1
    orphans = 0
    sweep = _optional("surveillance.intake.dicom", "sweep_spool")
    if sweep is not None and spool_dir.is_dir():
        orphans = int(getattr(sweep(store, spool_dir), "orphans_removed", 0))
    partitions = partition_maintenance(
        store, scheduled_for, days.prediction_months, days.embedding_months
    )
    LOG.info(
        "retention: %d dead letter(s), %d job run(s), %d failed spool file(s), "
        "%d orphaned spool file(s), %d monthly partition(s) removed",
        letters,
        runs,
        removed,
        orphans,
        partitions,
    )


def partition_maintenance(
    store: Store, now: datetime, keep_months: int | None, embedding_months: int | None = None
) -> int:
    """Monthly partitions (PostgreSQL) of prediction and embedding: create them
    ``MONTHS_AHEAD`` months ahead (adopting months found in a DEFAULT partition),
    then drop the whole partitions that end on or before the start of the month
    ``keep_months`` (prediction) / ``embedding_months`` (embedding) months before
    ``now``; None keeps everything. Returns how many were dropped; no-op on SQLite.
    """
    dropped = []
    for table, keep in (("prediction", keep_months), ("embedding", embedding_months)):
        created = store.partitions.ensure(add_months(now, MONTHS_AHEAD), since=now, table=table)
        gone = []
        if keep is not None:
            gone = store.partitions.drop_before(add_months(now, -keep), actor=ACTOR, table=table)
        if created or gone:
            LOG.info(
                "%s partitions: %d created ahead, %d dropped (%s)",
                table,
                created,
                len(gone),
                ", ".join(p.name for p in gone) or "none",
            )
        dropped += gone
    return len(dropped)


def quarter_ending(moment: datetime) -> str:
    """The quarter that ended last before ``moment``, as ``2026Q3``."""
    quarter = (moment.month - 1) // 3  # 0-based quarter of `moment`
    year = moment.year
    if quarter == 0:
        return f"{year - 1}Q4"
    return f"{year}Q{quarter}"


def reports_dir(settings: Settings) -> Path:
    """Where scheduled PMS reports go: ``[reports] out_dir`` (default ``reports``)."""
    return Path(settings.reports.out_dir)


def quarterly_report_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    write = _optional("surveillance.outputs.reports.pms", "write_quarterly")
    period = quarter_ending(scheduled_for)
    if write is None:
        LOG.warning(
            "quarterly report for %s not written: PMS reports are not configured "
            "(surveillance.outputs.reports.pms.write_quarterly is not installed)",
            period,
        )
        return
    out_root = reports_dir(ctx.settings)
    written = write(ctx.store, ctx.settings, out_root, now=scheduled_for)
    LOG.info("quarterly PMS reports for %s written under %s: %s", period, out_root, written)


def embeddings_job(ctx: JobContext, scheduled_for: datetime, run_id: int) -> None:
    run = _optional("surveillance.analysis.embed", "run_embedding_job")
    if run is None:
        LOG.warning("embeddings job: surveillance.analysis.embed is not installed")
        return
    result = run(ctx.store, ctx.settings, as_of=scheduled_for)
    LOG.info("embeddings as of %s: %s", scheduled_for, result)


def _optional(module: str, name: str) -> Callable[..., Any] | None:
    """``module.name`` if that module exists, else None (other import errors propagate)."""
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise
    found = getattr(loaded, name, None)
    return found if callable(found) else None


def build_jobs(settings: Settings) -> list[JobSpec]:
    """The scheduled jobs with their configured schedules (validated here)."""
    schedules = settings.schedules
    jobs = [
        JobSpec("drift", schedules.drift, drift_job),
        JobSpec("performance", schedules.performance, performance_job),
        JobSpec("alert_retries", schedules.alert_retries, alert_retries_job),
        JobSpec("retention", schedules.retention, retention_job),
        JobSpec(
            "quarterly_report",
            schedules.quarterly_report,
            quarterly_report_job,
            catch_up="each",
            max_catch_up=4,
        ),
    ]
    if _optional("surveillance.analysis.embed", "run_embedding_job") is not None:
        jobs.append(JobSpec("embeddings", schedules.embeddings, embeddings_job))
    else:
        LOG.info("embeddings job not scheduled: surveillance.analysis.embed is not installed")
    for job in jobs:
        try:
            job.trigger()
        except ConfigError as exc:
            raise ConfigError(f"[schedules] {job.id}: {exc}") from exc
    return jobs


ONCE_JOBS = ("drift", "performance", "embeddings", "alert_retries")


__all__ = [
    "ONCE_JOBS",
    "JobContext",
    "alert_retries_job",
    "build_jobs",
    "drift_job",
    "embeddings_job",
    "partition_maintenance",
    "performance_job",
    "quarter_ending",
    "quarterly_report_job",
    "reports_dir",
    "retention_job",
]
