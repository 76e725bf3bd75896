"""Scheduler: one leader across replicas, takeover after kill -9, a ledger without gaps.

Two real scheduler processes share one real PostgreSQL database. The first
leads; the second waits as a standby. The leader is killed with SIGKILL while a
run is in flight; the standby must take over, re-run the abandoned scheduled
time and catch up the ones missed while nobody led, so that every scheduled
time from the first to the last ran exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from surveillance.scheduling.scheduler import JobSpec, SchedulerService, leader_info
from surveillance.scheduling.schedules import fire_times, parse_schedule
from surveillance.store import Store
from surveillance.store.engine import make_engine
from surveillance.store.migrations import upgrade
from surveillance.store.models import AuditEventRow, JobRunRow

TESTS = Path(__file__).parent


def _wait(what: str, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _runs(store: Store) -> list[tuple[int, datetime, str]]:
    with store.sessions.scope() as s:
        return [
            (r.id, r.scheduled_for, r.status)
            for r in s.scalars(
                select(JobRunRow)
                .where(JobRunRow.job_id == "probe")
                .order_by(JobRunRow.scheduled_for)
            )
        ]


@pytest.fixture
def migrated(pg_url: str) -> Iterator[Store]:
    engine = make_engine(pg_url)
    upgrade(engine)
    store = Store(engine)
    yield store
    store.close()


def _replica(url: str, out: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    code = f"import fixtures_ops; fixtures_ops.scheduler_main({url!r}, 1, 0.4, {str(out)!r})"
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=handle, stderr=subprocess.STDOUT
        )


@pytest.mark.postgres
def test_standby_takes_over_after_kill_without_skipping_or_doubling(
    migrated: Store, pg_url: str, tmp_path: Path
) -> None:
    url = migrated.engine.url.render_as_string(hide_password=False)
    first = _replica(url, tmp_path, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait("the first replica to lead and run", lambda: len(_runs(migrated)) >= 2)
        second = _replica(url, tmp_path, tmp_path / "second.log")
        _wait(
            "the second replica to wait as a standby",
            lambda: leader_info(migrated)["standbys"] == 1,
        )
        info = leader_info(migrated)
        assert info["leader"] is not None and f":{first.pid}" in info["leader"]["name"]
        _wait("two more runs with a standby present", lambda: len(_runs(migrated)) >= 4)
        assert not (tmp_path / f"{second.pid}.txt").exists(), "the standby ran jobs"

        in_flight = _wait(
            "a run in flight",
            lambda: next((r for r in _runs(migrated) if r[2] == "running"), None),
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_id, killed_at, _ = in_flight

        def taken_over() -> bool:
            runs = _runs(migrated)
            after = [r for r in runs if r[1] > killed_at and r[2] == "succeeded"]
            return (
                dict((r[1], r[2]) for r in runs).get(killed_at) == "succeeded" and len(after) >= 3
            )

        _wait("the standby to re-run the killed window and go on", taken_over)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, (tmp_path / "second.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    runs = _runs(migrated)
    times = [r[1] for r in runs]
    assert all(status == "succeeded" for _, _, status in runs), runs
    assert len(set(times)) == len(times)
    grid = list(
        fire_times(parse_schedule("every 1s"), times[0] - timedelta(microseconds=1), times[-1])
    )
    assert times == grid, "a scheduled time was skipped"
    # Who ran what: the first replica until the kill, the second after it. Only the
    # run in flight at the kill may have done its work twice (at least once).
    by_first = (tmp_path / f"{first.pid}.txt").read_text().split()
    by_second = (tmp_path / f"{second.pid}.txt").read_text().split()
    assert set(by_first) & set(by_second) <= {killed_at.isoformat()}
    assert set(by_first) | set(by_second) == {t.isoformat() for t in times}
    assert max(by_first) <= killed_at.isoformat() <= min(by_second)
    with migrated.sessions.scope() as s:
        actions = set(
            s.scalars(select(AuditEventRow.action).where(AuditEventRow.entity_id == str(killed_id)))
        )
    assert {"job_run.abandoned", "job_run.rerun"} <= actions
    assert migrated.audit.verify().ok


def _count(store: Store, job_id: str) -> list[tuple[datetime, str]]:
    with store.sessions.scope() as s:
        return [
            (r.scheduled_for, r.status)
            for r in s.scalars(select(JobRunRow).where(JobRunRow.job_id == job_id))
        ]


@pytest.mark.postgres
def test_catch_up_policies_and_failures_in_the_ledger(migrated: Store) -> None:
    """In-process: 'latest' coalesces missed times, 'each' runs them all; errors recorded."""
    calls: list[tuple[str, datetime]] = []

    def ok(ctx: object, scheduled_for: datetime, run_id: int) -> None:
        calls.append(("ok", scheduled_for))

    def boom(ctx: object, scheduled_for: datetime, run_id: int) -> None:
        raise RuntimeError("disk full")

    service = SchedulerService(
        migrated,
        [
            JobSpec("latest", "every 1m", ok),
            JobSpec("each", "every 1m", ok, catch_up="each", max_catch_up=3),
            JobSpec("broken", "every 1m", boom),
        ],
        None,
    )
    start = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    service.leader_since = start  # as if it had just taken the lock
    later = start + timedelta(minutes=10, seconds=30)
    for job in ("latest", "each", "broken"):
        assert service.run_one(job, start)
    assert service.run_one("latest", start) is False  # the ledger refuses a second run
    assert service.run_due("latest", later) == [start + timedelta(minutes=10)]
    assert service.run_due("each", later) == [
        start + timedelta(minutes=m) for m in (8, 9, 10)
    ]  # capped at max_catch_up
    service.run_due("broken", later)
    assert service.run_due("latest", later) == []  # nothing owed any more
    broken = sorted(_count(migrated, "broken"))
    assert [s for _, s in broken] == ["failed", "failed"]
    with migrated.sessions.scope() as s:
        errors = set(s.scalars(select(JobRunRow.error).where(JobRunRow.job_id == "broken")))
        assert errors == {"RuntimeError: disk full"}
        assert s.execute(text("SELECT count(*) FROM apscheduler_jobs")).scalar_one() == 0


@pytest.mark.parametrize(
    ("spec", "after", "expected"),
    [
        pytest.param(
            "every 15m",
            datetime(2026, 11, 25, 10, 7, 13, tzinfo=UTC),
            datetime(2026, 11, 25, 10, 15, tzinfo=UTC),
            id="interval-on-a-fixed-grid",
        ),
        pytest.param(
            "cron 0 6 * * 1",  # crontab: 1 = Monday (APScheduler 3 would read Tuesday)
            datetime(2026, 11, 25, 12, 0, tzinfo=UTC),  # a Wednesday
            datetime(2026, 11, 30, 6, 0, tzinfo=UTC),
            id="cron-monday",
        ),
        pytest.param(
            "cron 30 2 * * 0",  # 0 = Sunday
            datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
            datetime(2026, 11, 29, 2, 30, tzinfo=UTC),
            id="cron-sunday",
        ),
        pytest.param(
            "cron 0 6 1 1,4,7,10 *",
            datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
            datetime(2027, 1, 1, 6, 0, tzinfo=UTC),
            id="cron-quarterly",
        ),
    ],
)
def test_schedule_strings(spec: str, after: datetime, expected: datetime) -> None:
    (first,) = list(fire_times(parse_schedule(spec), after, expected))
    assert first == expected


@pytest.mark.parametrize(
    "spec",
    ["hourly", "every 0m", "every 5 minutes", "cron 0 6 * *", "cron 61 * * * *", "cron 0 6 * * 8"],
)
def test_bad_schedule_strings_are_config_errors(spec: str) -> None:
    from surveillance.core.errors import ConfigError

    with pytest.raises(ConfigError, match="schedule"):
        parse_schedule(spec)


def test_quarterly_reports_go_to_the_configured_out_dir(tmp_path: Path) -> None:
    from surveillance.core.config import parse_settings
    from surveillance.scheduling.jobs import reports_dir

    assert reports_dir(parse_settings({})) == Path("reports")
    configured = parse_settings({"reports": {"out_dir": str(tmp_path / "pms")}})
    assert reports_dir(configured) == tmp_path / "pms"
